"""Rule unit_means: mean activation per unit and sublayer (Figure 1B)."""

from residual_dynamics.logs import setup_logging
from residual_dynamics.stats import unit_means, write_dataset_atomic

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
means = unit_means(
    snakemake.input.store,  # noqa: F821
    sublayers=snakemake.params.sublayers,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
write_dataset_atomic(means, snakemake.output.means)  # noqa: F821

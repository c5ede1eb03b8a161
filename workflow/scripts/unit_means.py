"""Rule unit_means: mean activation per unit and sublayer (Figure 1B)."""

from residual_dynamics.logs import setup_logging
from residual_dynamics.stats import unit_means, write_dataset_atomic

setup_logging(snakemake.log[0])
means = unit_means(
    snakemake.input.store,
    sublayers=snakemake.params.sublayers,
    threads=snakemake.threads,
)
write_dataset_atomic(means, snakemake.output.means)

"""Rule unit_means: mean activation per unit and sublayer (Figure 1B)."""

from residual_dynamics.analysis.unit_means import unit_means
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging

setup_logging(snakemake.log[0])
means = unit_means(
    snakemake.input.store,
    sublayers=snakemake.params.sublayers,
    threads=snakemake.threads,
)
write_dataset_atomic(means, snakemake.output.means)

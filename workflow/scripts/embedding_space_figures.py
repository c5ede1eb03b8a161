"""Rule embedding_space_figures: true-token rank, proximity and walk figures of one recording."""

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.embedding_space.arrays import read_arrays
from residual_dynamics.studies.embedding_space.figures import write_figures

setup_logging(snakemake.log[0])
write_figures(
    read_arrays(snakemake.input.lens),
    read_arrays(snakemake.input.walk),
    {key: snakemake.output[key] for key in ("rank", "proximity", "walk")},
    label=snakemake.params.label,
    formats=snakemake.params.formats,
    dpi=snakemake.params.dpi,
)

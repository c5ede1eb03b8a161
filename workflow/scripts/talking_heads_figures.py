"""Rule talking_heads_figures: the module's figures for one model (PNG plus the other formats)."""

from pathlib import Path

from residual_dynamics.io.atomic import read_result
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.talking_heads.figures import write_figures

setup_logging(snakemake.log[0])
write_figures(
    read_result(snakemake.input.weights),
    read_result(snakemake.input.laundry),
    Path(snakemake.output.composition).parent,
    formats=snakemake.params.formats,
    dpi=snakemake.params.dpi,
    model=snakemake.wildcards.model,
)

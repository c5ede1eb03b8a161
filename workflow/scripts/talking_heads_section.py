"""Rule talking_heads_section: the module's report section (a JSON manifest) for every model."""

from pathlib import Path

from residual_dynamics.io.atomic import read_result
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.talking_heads.figures import FIGURES
from residual_dynamics.studies.talking_heads.section import write_section

setup_logging(snakemake.log[0])
models = list(snakemake.params.models)
# One named input per figure kind, each listing that figure for every model in the models' order.
figures = {name: list(getattr(snakemake.input, name)) for name in FIGURES}
write_section(
    snakemake.output.manifest,
    models=models,
    weights=[read_result(p) for p in snakemake.input.weights],
    results=[read_result(p) for p in snakemake.input.laundry_list],
    figures=[{name: Path(paths[i]) for name, paths in figures.items()} for i in range(len(models))],
    n_outliers=snakemake.params.n_outliers,
)

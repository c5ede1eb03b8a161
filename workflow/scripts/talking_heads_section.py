"""Rule talking_heads_section: the module's report section (a JSON manifest) for every model."""

from pathlib import Path

import xarray as xr

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.talking_heads.analysis import FIGURES, write_section

setup_logging(snakemake.log[0])
models = list(snakemake.params.models)
figures = list(snakemake.input.figures)  # ordered by figure, then by model (the rule's expand)
write_section(
    snakemake.output.manifest,
    models=models,
    weights=[xr.open_zarr(p).load() for p in snakemake.input.weights],
    results=[xr.open_zarr(p).load() for p in snakemake.input.laundry],
    figures=[
        {name: Path(figures[f * len(models) + i]) for f, name in enumerate(FIGURES)}
        for i in range(len(models))
    ],
    n_outliers=snakemake.params.n_outliers,
)

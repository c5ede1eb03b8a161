"""Rule reduction_summary: the numbers of Figures 3 and 4 in one JSON for the report."""

import xarray as xr

from residual_dynamics.io.atomic import write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.summary import reduction_summary

sm = snakemake
setup_logging(sm.log[0])
write_json(
    sm.output.summary,
    reduction_summary(
        xr.open_zarr(sm.input.pca, chunks=None).load(),
        xr.open_zarr(sm.input.cae[0], chunks=None).load() if sm.input.cae else None,
        xr.open_zarr(sm.input.perturbation[0], chunks=None).load()
        if sm.input.perturbation
        else None,
    ),
)

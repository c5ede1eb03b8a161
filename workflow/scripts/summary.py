"""Rule summary: the numbers of Figures 1 and 2 in one JSON."""

import xarray as xr

from residual_dynamics.io.atomic import write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.summary import build_summary

setup_logging(snakemake.log[0])
summary = build_summary(
    xr.open_zarr(snakemake.input.means, chunks=None).load(),
    xr.open_zarr(snakemake.input.stats, chunks=None).load(),
    xr.open_zarr(snakemake.input.mi, chunks=None).load(),
    xr.open_zarr(snakemake.input.rotations, chunks=None).load(),
)
write_json(snakemake.output.summary, summary)

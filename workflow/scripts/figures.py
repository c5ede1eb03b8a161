"""Rule figures: every panel of Figures 1-4 of one recording (PNG plus the other configured
formats), in one job."""

import functools

import xarray as xr

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.figures import recording_figures

setup_logging(snakemake.log[0])


@functools.cache
def load(name: str) -> xr.Dataset:
    # Whole results into memory without Dask (its import costs more than these small reads).
    # The CAE's and the perturbations' inputs are lists (empty when their analysis is off).
    path = snakemake.input[name]
    return xr.open_zarr(path if isinstance(path, str) else path[0], chunks=None).load()


# The rule's params are the drawing settings (dpi, formats, reading, label).
recording_figures(load, outputs=dict(snakemake.output.items()), **dict(snakemake.params.items()))

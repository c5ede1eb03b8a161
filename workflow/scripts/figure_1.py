"""Rule figure_1: the panels of Figure 1 (B-H), PNG plus the other configured formats."""

import xarray as xr

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.figures import figure_1

setup_logging(snakemake.log[0])
# The rule's params are the drawing settings (dpi, formats, and reading or label where it has them).
figure_1(
    xr.open_zarr(snakemake.input.means, chunks=None).load(),
    xr.open_zarr(snakemake.input.stats, chunks=None).load(),
    xr.open_zarr(snakemake.input.mi, chunks=None).load(),
    outputs=dict(snakemake.output.items()),
    **dict(snakemake.params.items()),
)

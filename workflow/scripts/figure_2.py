"""Rule figure_2: the panels of Figure 2 (A-C), PNG plus the other configured formats."""

import xarray as xr

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.figures import figure_2

setup_logging(snakemake.log[0])
# The rule's params are the drawing settings (dpi, formats, and reading or label where it has them).
figure_2(
    xr.open_zarr(snakemake.input.means, chunks=None).load(),
    xr.open_zarr(snakemake.input.rotations, chunks=None).load(),
    outputs=dict(snakemake.output.items()),
    **dict(snakemake.params.items()),
)

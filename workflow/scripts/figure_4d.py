"""Rule figure_4d: teleports in PC space (Figure 4D) and recovery per layer (4E)."""

import xarray as xr

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.figures import figure_4d

setup_logging(snakemake.log[0])
# The rule's params are the drawing settings (dpi, formats, and reading or label where it has them).
figure_4d(
    xr.open_zarr(snakemake.input.pca, chunks=None).load(),
    xr.open_zarr(snakemake.input.perturbation, chunks=None).load(),
    outputs=dict(snakemake.output.items()),
    **dict(snakemake.params.items()),
)

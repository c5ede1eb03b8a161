"""Rule figure_4: the PCA panels of Figure 4 (A-C)."""

import xarray as xr

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.figures import figure_4abc

setup_logging(snakemake.log[0])
# The rule's params are the drawing settings (dpi, formats, and reading or label where it has them).
figure_4abc(
    xr.open_zarr(snakemake.input.pca, chunks=None).load(),
    outputs=dict(snakemake.output.items()),
    **dict(snakemake.params.items()),
)

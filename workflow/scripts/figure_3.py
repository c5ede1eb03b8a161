"""Rule figure_3: the panels of Figure 3 (B-D) from the CAE's test-set evaluation."""

import xarray as xr

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.figures import figure_3

setup_logging(snakemake.log[0])
# The rule's params are the drawing settings (dpi, formats, and reading or label where it has them).
figure_3(
    xr.open_zarr(snakemake.input.cae, chunks=None).load(),
    outputs=dict(snakemake.output.items()),
    **dict(snakemake.params.items()),
)

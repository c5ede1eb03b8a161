"""Rule figure_4d: teleports in PC space (Figure 4D) and recovery per layer (4E)."""

import xarray as xr

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.figures import figure_4d

setup_logging(snakemake.log[0])
figure_4d(
    xr.open_zarr(snakemake.input.pca).load(),
    xr.open_zarr(snakemake.input.perturbation).load(),
    outputs=dict(snakemake.output.items()),
    formats=snakemake.params.formats,
    dpi=snakemake.params.dpi,
    label=f"{snakemake.wildcards.model} on {snakemake.wildcards.dataset}",
)

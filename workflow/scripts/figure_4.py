"""Rule figure_4: the PCA panels of Figure 4 (A-C)."""

import xarray as xr

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.figures import figure_4abc

setup_logging(snakemake.log[0])
figure_4abc(
    xr.open_zarr(snakemake.input.pca).load(),
    outputs=dict(snakemake.output.items()),
    formats=snakemake.params.formats,
    dpi=snakemake.params.dpi,
    label=f"{snakemake.wildcards.model} on {snakemake.wildcards.dataset}",
)

"""Rule figure_4: the PCA panels of Figure 4 (A-C)."""

import xarray as xr

from residual_dynamics.figures import figure_4abc
from residual_dynamics.logs import setup_logging

setup_logging(snakemake.log[0])
figure_4abc(
    xr.open_zarr(snakemake.input.pca).load(),
    outputs=dict(snakemake.output.items()),
    formats=snakemake.params.formats,
    dpi=snakemake.params.dpi,
    label=f"{snakemake.wildcards.model} on {snakemake.wildcards.dataset}",
)

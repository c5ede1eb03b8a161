"""Rule figure_mean_activation: Figure 1B as PNG and SVG."""

import xarray as xr

from residual_dynamics.logs import setup_logging
from residual_dynamics.plotting import mean_activation_heatmap, save

setup_logging(snakemake.log[0])
means = xr.open_zarr(snakemake.input.means).load()
save(
    mean_activation_heatmap(means),
    [snakemake.output.png, snakemake.output.svg],
    dpi=snakemake.params.dpi,
)

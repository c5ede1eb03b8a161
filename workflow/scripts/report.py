"""Rule report: the self-contained HTML page."""

from pathlib import Path

import xarray as xr

from residual_dynamics.logs import setup_logging
from residual_dynamics.report import Figure, Section, mean_activation_caption, render, write_report

setup_logging(snakemake.log[0])
sm = snakemake
sections = []
for (model, dataset), store, means, fig1b in zip(
    sm.params.recordings, sm.input.stores, sm.input.means, sm.input.fig1b, strict=True
):
    caption = mean_activation_caption(xr.open_zarr(means).load())
    sections.append(
        Section(
            model,
            dataset,
            Path(store),
            figures=[Figure(Path(fig1b), "Figure 1B: mean activation per unit", caption, "fig1b")],
        )
    )
page = render(
    sections,
    title=sm.params.title,
    config=sm.params.config,
    benchmarks=sorted(Path(sm.params.benchmarks).rglob("*.tsv")),
)
write_report(sm.output.html, page)

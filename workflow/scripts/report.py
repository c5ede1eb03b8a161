"""Rule report: the self-contained HTML page."""

import json
from pathlib import Path

import xarray as xr

from residual_dynamics.logs import setup_logging
from residual_dynamics.report import (
    Figure,
    Section,
    mean_activation_caption,
    panel_captions,
    read_section_manifest,
    reduction_captions,
    render,
    write_report,
)

setup_logging(snakemake.log[0])
sm = snakemake
n_recordings = len(sm.params.recordings)
sections = []
# Figures arrive panel by panel, each panel for every recording in order.
for index, ((model, dataset), store, means, summary_path, reduction_path) in enumerate(
    zip(
        sm.params.recordings,
        sm.input.stores,
        sm.input.means,
        sm.input.summaries,
        sm.input.reductions,
        strict=True,
    )
):
    captions = panel_captions(json.loads(Path(summary_path).read_text()))
    captions |= reduction_captions(json.loads(Path(reduction_path).read_text()))
    captions["fig1b"] = (captions["fig1b"][0], mean_activation_caption(xr.open_zarr(means).load()))
    figures = [
        Figure(Path(sm.input.figures[p * n_recordings + index]), *captions[panel], panel)
        for p, panel in enumerate(sm.params.panels)
    ]
    sections.append(Section(model, dataset, Path(store), figures=figures))
page = render(
    sections,
    title=sm.params.title,
    config=sm.params.config,
    benchmarks=sorted(Path(sm.params.benchmarks).rglob("*.tsv")),
    modules=[read_section_manifest(path) for path in sm.input.sections],
)
write_report(sm.output.html, page)

"""Rule report: the self-contained HTML page."""

import json
from pathlib import Path

from residual_dynamics.io.atomic import read_result
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.captions import (
    add_claim_verdicts,
    mean_activation_caption,
    panel_captions,
    reduction_captions,
)
from residual_dynamics.paper.claims import controls_of, evaluate
from residual_dynamics.report.page import (
    Figure,
    Section,
    read_section_manifest,
    render,
    write_report,
)

setup_logging(snakemake.log[0])
sm = snakemake
recordings = [tuple(r) for r in sm.params.recordings]
summaries = {
    r: json.loads(Path(p).read_text()) for r, p in zip(recordings, sm.input.summaries, strict=True)
}
reductions = {
    r: json.loads(Path(p).read_text()) for r, p in zip(recordings, sm.input.reductions, strict=True)
}
control_recordings = [tuple(r) for r in sm.params.control_recordings]
for pairs, paths, into in (
    (control_recordings, sm.input.control_summaries, summaries),
    (control_recordings, sm.input.control_reductions, reductions),
):
    into.update({r: json.loads(Path(p).read_text()) for r, p in zip(pairs, paths, strict=True)})
analysed = recordings + control_recordings
claims = {r: evaluate(summaries[r], reductions[r]) for r in analysed}
verdicts = {}
for record in json.loads(Path(sm.input.claims).read_text())["records"]:
    verdicts.setdefault((record["model"], record["dataset"]), {})[record["claim"]] = record
sections = []
# Each panel is a named input listing that panel for every recording, in the order of recordings.
for index, ((model, dataset), store, means) in enumerate(
    zip(recordings, sm.input.stores, sm.input.means, strict=True)
):
    captions = panel_captions(summaries[model, dataset])
    captions |= reduction_captions(reductions[model, dataset])
    captions["fig1b"] = (
        captions["fig1b"][0],
        mean_activation_caption(read_result(means)),
    )
    captions = add_claim_verdicts(captions, claims[model, dataset], verdicts.get((model, dataset)))
    figures = [
        Figure(Path(sm.input[panel][index]), *captions[panel], panel) for panel in sm.params.panels
    ]
    controls = {
        label: (pair, claims[pair])
        for label, pair in controls_of(
            sm.params.models, sm.params.datasets, analysed, model, dataset
        ).items()
    }
    sections.append(
        Section(
            model,
            dataset,
            Path(store),
            figures=figures,
            claims=claims[model, dataset],
            controls=controls,
            verdicts=verdicts.get((model, dataset), {}),
        )
    )
page = render(
    sections,
    title=sm.params.title,
    config=sm.params.run_config,
    benchmarks=sorted(Path(sm.params.benchmarks).rglob("*.tsv")),
    modules=[read_section_manifest(path) for path in sm.input.sections],
    comparison=[
        Figure(
            Path(sm.input.comparison),
            "Across models: per-transition curves, depth normalised",
            "Figure 1C, 1E, 1F and 1H of every recording on one axis each, transitions scaled to "
            "depth 0-1 so models of any depth overlay. Colour per model and its untrained twin; "
            "solid trained, dotted untrained twin, dashed token-shuffled texts. Black crosses: the "
            "values the paper states for Llama 3.1 8B (velocity divided by its peak, since its "
            "scale depends on the model's norm).",
            "curves",
        )
    ],
)
write_report(sm.output.html, page)

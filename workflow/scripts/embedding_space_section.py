"""Rule embedding_space_section: the module's report section (a JSON manifest) and the numbers it
states (summary.json), one entry per (model, dataset) pair."""

import json
from pathlib import Path

from residual_dynamics.io.atomic import write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.embedding_space.arrays import read_arrays
from residual_dynamics.studies.embedding_space.section import section_manifest
from residual_dynamics.studies.embedding_space.summary import summarise

setup_logging(snakemake.log[0])
sm = snakemake
pairs = [tuple(pair) for pair in sm.params.pairs]


def named_input(what: str, model: str, dataset: str) -> str:
    """One recording's input, by the name the rule gives it: <what>--<model>--<dataset>."""
    return sm.input[f"{what}--{model}--{dataset}"]


summaries = [
    summarise(read_arrays(named_input("lens", m, d)), read_arrays(named_input("walk", m, d)))
    for m, d in pairs
]
figures = [
    {figure: named_input(f"{figure}_png", m, d) for figure in ("rank", "proximity", "walk")}
    for m, d in pairs
]
section_manifest(
    sm.output.manifest,
    pairs=pairs,
    summaries=summaries,
    figures=figures,
    concept=[json.loads(Path(p).read_text()) for p in sm.input.concepts],
)
write_json(sm.output.summary, summaries)

"""Rule embedding_space_section: the module's report section (a JSON manifest)."""

import json
from pathlib import Path

from residual_dynamics.io.atomic import write_text_atomic
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.embedding_space.walk import read_arrays, section_manifest, summarise

setup_logging(snakemake.log[0])
sm = snakemake
summaries = [
    summarise(read_arrays(lens), read_arrays(walk))
    for lens, walk in zip(sm.input.lens, sm.input.walk, strict=True)
]
figures = [
    {"rank": rank, "proximity": proximity, "walk": walk}
    for rank, proximity, walk in zip(
        sm.input.rank_png, sm.input.proximity_png, sm.input.walk_png, strict=True
    )
]
section_manifest(
    sm.output.manifest,
    pairs=[tuple(pair) for pair in sm.params.pairs],
    summaries=summaries,
    figures=figures,
    concept=[json.loads(Path(p).read_text()) for p in sm.input.concepts],
)
write_text_atomic(sm.output.summary, json.dumps(summaries, indent=1))

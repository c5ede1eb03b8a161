"""Rule claims: every claim's verdict on every recording, as contrasts (results/report/claims.json)."""

import json
from pathlib import Path

from residual_dynamics.io.atomic import write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.claims import controls_of
from residual_dynamics.paper.verdicts import claims_records

sm = snakemake
setup_logging(sm.log[0])
analysed = [tuple(pair) for pair in sm.params.analysed]
summaries = {
    pair: json.loads(Path(path).read_text())
    for pair, path in zip(analysed, sm.input.summaries, strict=True)
}
reductions = {
    pair: json.loads(Path(path).read_text())
    for pair, path in zip(analysed, sm.input.reductions, strict=True)
}
recordings = [tuple(pair) for pair in sm.params.recordings]
controls = {
    pair: controls_of(sm.params.models, sm.params.datasets, analysed, *pair) for pair in recordings
}
write_json(
    sm.output.claims,
    {
        "verdicts": ["reproduced", "not specific", "not reproduced", "not comparable"],
        "records": claims_records(recordings, summaries, reductions, controls),
    },
)

"""Rule comparison_figure: every recording's per-transition curves on one depth-normalised axis."""

import json
from pathlib import Path

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.panels_dynamics import comparison_figure, recording_styles
from residual_dynamics.report.style import save

setup_logging(snakemake.log[0])
recordings = [tuple(r) for r in snakemake.params.recordings]
summaries = {
    recording: json.loads(Path(path).read_text())
    for recording, path in zip(recordings, snakemake.input.summaries, strict=True)
}
figure = comparison_figure(summaries, recording_styles(snakemake.params.config, recordings))
png = Path(snakemake.output.png)
save(
    figure,
    [png, *(png.with_suffix(f".{f}") for f in snakemake.params.formats if f != "png")],
    dpi=snakemake.params.dpi,
)

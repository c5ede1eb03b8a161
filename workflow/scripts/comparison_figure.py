"""Rule comparison_figure: every recording's per-transition curves on one depth-normalised axis."""

import json
from pathlib import Path

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.comparison import comparison_figure, recording_styles
from residual_dynamics.report.style import figure_paths, save

setup_logging(snakemake.log[0])
recordings = [tuple(r) for r in snakemake.params.recordings]
summaries = {
    recording: json.loads(Path(path).read_text())
    for recording, path in zip(recordings, snakemake.input.summaries, strict=True)
}
styles = recording_styles(snakemake.params.models, snakemake.params.datasets, recordings)
figure = comparison_figure(summaries, styles)
png = Path(snakemake.output.png)
save(figure, figure_paths(png, snakemake.params.formats), dpi=snakemake.params.dpi)

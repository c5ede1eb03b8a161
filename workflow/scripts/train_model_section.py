"""Rule train_model_section: every trained model's training.json -> curves and report section."""

import json
from pathlib import Path

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.report import trained_models as training_report
from residual_dynamics.report.page import write_section_manifest
from residual_dynamics.report.style import figure_paths

setup_logging(snakemake.log[0])

summaries = {
    Path(marker).parent.name: json.loads((Path(marker).parent / "training.json").read_text())
    for marker in snakemake.input.models
}
png = Path(snakemake.output.curves)
paths = figure_paths(png, snakemake.params.formats)
training_report.curves_figure(summaries, paths, dpi=snakemake.params.dpi)
write_section_manifest(snakemake.output.manifest, **training_report.section(summaries, str(png)))

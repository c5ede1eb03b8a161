"""Rule affine_section: the analyses of every model -> figures, the report section and the
verdicts on the paper's two claims."""

import json
from pathlib import Path

from residual_dynamics.io.atomic import write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.report.page import write_section_manifest
from residual_dynamics.report.style import figure_paths
from residual_dynamics.studies.affine.figures import FIGURES, write_figures
from residual_dynamics.studies.affine.section import section_content

setup_logging(snakemake.log[0])

# Each analysis names its model; the first model in params.models is the main one.
analyses = [json.loads(Path(path).read_text()) for path in snakemake.input.analyses]
by_model = {result["model"]: result for result in analyses}
results = {name: by_model[name] for name in snakemake.params.models}
write_figures(
    results,
    {key: figure_paths(snakemake.output[key], snakemake.params.formats) for key in FIGURES},
    dpi=snakemake.params.dpi,
)
content = section_content(results, {key: snakemake.output[key] for key in FIGURES})
verdicts = content.pop("verdicts")
write_section_manifest(snakemake.output.manifest, **content)
write_json(snakemake.output.verdicts, verdicts, indent=None)

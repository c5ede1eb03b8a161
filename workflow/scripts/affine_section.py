"""Rule affine_section: the analyses of every model -> figures and the report section."""

import json
from pathlib import Path

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.report.page import write_section_manifest
from residual_dynamics.studies.affine import section as affine_report

setup_logging(snakemake.log[0])

results = {
    name: json.loads(Path(path).read_text())
    for name, path in zip(snakemake.params.models, snakemake.input.analyses, strict=True)
}
paths = {}
for key in snakemake.params.figures:
    png = Path(snakemake.output[key])
    paths[key] = [png.with_suffix(f".{fmt}") for fmt in snakemake.params.formats]
    if png not in paths[key]:
        paths[key].append(png)
affine_report.figures(results, paths, dpi=snakemake.params.dpi)
content = affine_report.section(results, {k: snakemake.output[k] for k in paths})
verdicts = content.pop("verdicts")
write_section_manifest(snakemake.output.manifest, **content)
Path(snakemake.output.manifest).with_name("verdicts.json").write_text(json.dumps(verdicts))

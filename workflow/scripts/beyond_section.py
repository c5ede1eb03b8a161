"""Rule beyond_section: the report section "Beyond the paper" (manifest) and its verdicts."""

from residual_dynamics.beyond.section import section_content
from residual_dynamics.beyond.summary import load_recording, skipped
from residual_dynamics.io.atomic import write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.report.page import write_section_manifest

sm = snakemake
setup_logging(sm.log[0])
params = sm.params
dynamics = dict(zip(map(tuple, params.linearised), sm.input.dynamics, strict=True))
ablations = dict(zip(map(tuple, params.ablated), sm.input.ablation, strict=True))
results = {}
for (model, dataset), geometry in zip(
    map(tuple, params.recordings), sm.input.geometry, strict=True
):
    result = load_recording(
        model, dataset, geometry, dynamics.get((model, dataset)), ablations.get((model, dataset))
    )
    # An analysis the plan left out says why (beyond/config.py).
    if result.dynamics is None:
        result.dynamics = skipped(params.not_linearised.get(result.label, "not run"))
    if result.ablation is None:
        result.ablation = skipped(params.not_ablated.get(result.label, "not run"))
    results[model, dataset] = result
# Figures come recording by recording (params.drawn's order), each with every panel.
panels = list(params.panels)
pngs = {}
for i, (model, dataset, _) in enumerate(params.drawn):
    files = sm.input.figures[i * len(panels) : (i + 1) * len(panels)]
    pngs[model, dataset] = dict(zip(panels, files, strict=True))
content = section_content(
    results,
    [tuple(entry) for entry in params.drawn],
    pngs,
    n_boot=params.n_boot,
    seed=params.seed,
)
verdicts = content.pop("verdicts")
write_section_manifest(sm.output.manifest, **content)
write_json(sm.output.verdicts, verdicts, indent=1)

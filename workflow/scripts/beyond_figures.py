"""Rule beyond_figures: the figures of one recording beside its untrained twin."""

from residual_dynamics.beyond.figures import FIGURES, write_figures
from residual_dynamics.beyond.summary import load_recording, skipped
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.report.style import figure_paths

sm = snakemake
setup_logging(sm.log[0])


def recording(model, geometry, dynamics, ablation):
    """The results of one recording; an analysis the plan left out says why."""
    label = f"{model} on {sm.wildcards.dataset}"
    result = load_recording(
        model,
        sm.wildcards.dataset,
        geometry[0],
        next(iter(dynamics), None),
        next(iter(ablation), None),
    )
    if result.dynamics is None:
        result.dynamics = skipped(sm.params.not_linearised.get(label, "not run"))
    if result.ablation is None:
        result.ablation = skipped(sm.params.not_ablated.get(label, "not run"))
    return result


main = recording(sm.wildcards.model, sm.input.geometry, sm.input.dynamics, sm.input.ablation)
twin = None
if sm.params.twin is not None:
    twin = recording(
        sm.params.twin, sm.input.twin_geometry, sm.input.twin_dynamics, sm.input.twin_ablation
    )
write_figures(
    main,
    twin,
    {key: figure_paths(sm.output[key], sm.params.formats) for key in FIGURES},
    dpi=sm.params.dpi,
    n_boot=sm.params.n_boot,
    seed=sm.params.seed,
)

"""The report section "Beyond the paper": what each panel measures, in plain words, and what it
found, every number computed from the results; a table over all recordings; the verdicts."""

from __future__ import annotations

import html

from residual_dynamics.beyond.config import ABLATION_OFF as OFF
from residual_dynamics.beyond.summary import (
    CLAIMS,
    NULL_SHARE,
    Recording,
    ablation_numbers,
    claim_verdicts,
    dynamics_numbers,
    geometry_numbers,
    why_not,
)
from residual_dynamics.report.page import Figure, Table
from residual_dynamics.report.style import fmt

INTRO = (
    "The paper reads the residual stream unit by unit, in a basis the model does not privilege. "
    "The analyses here do not depend on a basis. <b>Layer similarity</b>: linear CKA between the "
    "states of every pair of sublayers over the same texts (1: the same geometry up to rotation "
    "and scale). <b>Dimension</b>: how many directions the states really use, as the intrinsic "
    "dimension of the point cloud (TwoNN) and the participation ratio of its covariance. "
    "<b>Local dynamics</b>: each sublayer map (attention or MLP sublayer with its residual add) is "
    "linearised at a text's recorded token, re-entering the model; its Jacobian J says how a small "
    "change of the state is stretched (singular values above 1), squeezed (below 1) or turned "
    "(complex eigenvalues; the antisymmetric share of J &minus; I), and how far J is from a normal "
    "map (non-normality: transient growth that eigenvalues do not show). Finite-time Lyapunov "
    "exponents follow a small change through the whole stack. <b>Layer deletion and swap</b> "
    "(causal models): the change in next-token loss and the KL from the intact model when a "
    "block is skipped or run after its successor. Each recording is drawn beside its untrained "
    "twin (same architecture, random weights), which shows what the architecture alone gives."
)


def _esc(text) -> str:
    return html.escape(str(text))


def _versus(value: str, twin: str | None) -> str:
    return value + (f" (twin {twin})" if twin is not None else "")


def _cka_caption(g: dict, t: dict | None) -> str:
    return (
        "Linear CKA between the states of every pair of sublayers (same texts): bright blocks are "
        "stretches of depth that keep one geometry. Measured "
        f"({_esc(g['cka_estimator'])}, N = {g['n_samples']}): neighbouring sublayers "
        + _versus(fmt(g["cka_neighbours_mean"]), t and fmt(t["cka_neighbours_mean"]))
        + f" on average, lowest at {_esc(g['cka_break'])} ({fmt(g['cka_neighbours_min'])}); "
        "first to last sublayer "
        + _versus(fmt(g["cka_first_last"]), t and fmt(t["cka_first_last"]))
        + "."
    )


def _dimension_caption(g: dict, t: dict | None) -> str:
    return (
        "Left: intrinsic dimension (TwoNN: the ratio of each point's second to first "
        "nearest-neighbour distance), the number of directions the cloud of states locally "
        "spreads in. Right: participation ratio (sum of covariance eigenvalues squared over the "
        "sum of their squares), the number of directions that carry the variance. Measured: "
        f"intrinsic dimension {fmt(g['dimension_min'], 1)} to {fmt(g['dimension_max'], 1)}, "
        f"highest at {_esc(g['dimension_peak'])}"
        + (f" (twin {fmt(t['dimension_min'], 1)} to {fmt(t['dimension_max'], 1)})" if t else "")
        + f"; participation ratio {fmt(g['participation_first'], 1)} at the first sublayer, "
        f"{fmt(g['participation_last'], 1)} at the last"
        + (
            f" (twin {fmt(t['participation_first'], 1)}, {fmt(t['participation_last'], 1)})"
            if t
            else ""
        )
        + "."
    )


def _spectra_caption(d: dict, t: dict | None) -> str:
    method = (
        "formed Jacobians (exact spectra)"
        if d["method"] == "full"
        else "matrix-free block Lanczos and Hutchinson estimates (no eigenvalues)"
    )
    twin_line = ""
    if t:
        twin_line = (
            f" The twin: {t['n_expanding']} expanding and {t['n_contracting']} contracting maps, "
            f"non-normality {fmt(t['non_normality_early'])} early, "
            f"{fmt(t['non_normality_late'])} late; antisymmetric share "
            f"{fmt(t['antisymmetric_early'])} early, {fmt(t['antisymmetric_late'])} late."
        )
    return (
        "Per sublayer map over depth, median over texts with a bootstrap 95 % band: the largest "
        "singular value (how much the map stretches a small change: above 1 it expands), the "
        "smallest non-zero one (below 1 it contracts), the spectral radius, the non-normality of the update "
        "J &minus; I (||AA<sup>T</sup> &minus; A<sup>T</sup>A|| / ||A||<sup>2</sup>: 0 for a "
        "normal map), the antisymmetric share of J &minus; I (0 for a symmetric update, 1 for a "
        "pure rotation generator) and the share of eigenvalues in complex pairs (rotation). "
        f"Dots: attention sublayers green, MLP sublayers blue. {d['n_texts']} texts, d = "
        f"{d['d_model']}, {method}. Measured: {d['n_expanding']} of {d['n_transitions']} maps "
        f"stretch some direction (largest at {_esc(d['most_expanding'])}, "
        f"&sigma;<sub>max</sub> {fmt(d['sigma_top_max'])}) and {d['n_contracting']} squeeze "
        + (
            f"some direction (most at {_esc(d['most_contracting'])}, "
            f"&sigma;<sub>min</sub> {fmt(d['sigma_bottom_min'], 3)})"
            if d["most_contracting"]
            else "some direction (smallest values below the Lanczos resolution)"
        )
        + f"; non-normality {fmt(d['non_normality_early'])} over the first third of the maps "
        f"and {fmt(d['non_normality_late'])} over the last; antisymmetric share "
        f"{fmt(d['antisymmetric_early'])} early and {fmt(d['antisymmetric_late'])} late; "
        f"{fmt(d['complex_share_mean'])} of eigenvalues in complex pairs on average."
        + twin_line
        + (
            f" Each map has {d['null_directions']} null direction(s) (singular values below "
            f"{NULL_SHARE:g} of the largest), left out of the contraction"
            + (
                ": a post-norm model's states are LayerNorm outputs, whose Jacobian removes the "
                "mean and the scale direction."
                if d["norm"] == "post"
                else "."
            )
            if d["null_directions"]
            else ""
        )
    )


def _lyapunov_caption(d: dict, t: dict | None) -> str:
    return (
        "The top finite-time Lyapunov exponents of each text's trajectory: (1/T) log of the "
        "singular values of the product of its T sublayer Jacobians (QR method from the "
        "product's top singular vectors), in nats per map; above 0, small changes grow through "
        "the stack along that many directions. Mean over texts with a bootstrap 95 % interval. "
        f"Measured: &lambda;<sub>1</sub> = {fmt(d['lyapunov_top'], 3)} "
        f"[{fmt(d['lyapunov_top_low'], 3)}, {fmt(d['lyapunov_top_high'], 3)}], "
        f"{d['n_positive_exponents']} of the top {d['n_exponents']} positive"
        + (
            f"; twin &lambda;<sub>1</sub> = {fmt(t['lyapunov_top'], 3)} "
            f"[{fmt(t['lyapunov_top_low'], 3)}, {fmt(t['lyapunov_top_high'], 3)}], "
            f"{t['n_positive_exponents']} positive"
            if t
            else ""
        )
        + "."
    )


def _ablation_caption(a: dict, t: dict | None) -> str:
    text = (
        "Change in mean next-token loss (and KL of the next-token distribution from the intact "
        "model) when block l is deleted (the stream passes it unchanged) or swapped with block "
        "l+1; bootstrap 95 % intervals over texts. "
    )
    if "skipped" in a:
        return text + f"Not run here: {_esc(a['skipped'])}."
    parts = [f"intact loss {fmt(a['loss_intact'], 3)} nats"]
    for variant, verb in (("delete", "deleting"), ("swap", "swapping")):
        if variant in a:
            v = a[variant]
            parts.append(
                f"{verb} layer {v['layer']}"
                + (" with the next" if variant == "swap" else "")
                + f" costs most, {fmt(v['delta_loss'], 3)} [{fmt(v['low'], 3)}, "
                f"{fmt(v['high'], 3)}] nats (KL {fmt(v['kl'], 3)})"
                + (
                    f"; least: layer {v['least_layer']} ({fmt(v['least_delta_loss'], 3)})"
                    if v["least_layer"] != v["layer"]
                    else ""
                )
            )
    if t and "delete" in t:
        parts.append(
            f"untrained twin: deleting layer {t['delete']['layer']} costs most, "
            f"{fmt(t['delete']['delta_loss'], 3)} nats"
        )
    return text + "Measured: " + "; ".join(parts) + "."


def _verdict_note(label: str, verdicts: dict) -> str:
    parts = []
    for key, v in verdicts.items():
        line = (
            f"<b>{_esc(v['verdict'])}</b>: {_esc(CLAIMS[key][1])}: early minus late "
            f"{fmt(v['value'], 3)} [{fmt(v['low'], 3)}, {fmt(v['high'], 3)}]"
        )
        if "twin_value" in v:
            line += (
                f", twin {fmt(v['twin_value'], 3)} [{fmt(v['twin_low'], 3)}, "
                f"{fmt(v['twin_high'], 3)}], difference {fmt(v['difference'], 3)} "
                f"[{fmt(v['difference_low'], 3)}, {fmt(v['difference_high'], 3)}]"
            )
        if "reason" in v:
            line += f" ({_esc(v['reason'])})"
        parts.append(line)
    return f"{_esc(label)}: " + "; ".join(parts) + "."


def _row(rec: Recording, n_boot: int, seed: int) -> list:
    g = geometry_numbers(rec.geometry)
    a = ablation_numbers(rec.ablation) if rec.ablated else {}
    if rec.linearised:
        d = dynamics_numbers(rec.dynamics, n_boot, seed)
        local = [
            d["d_model"],
            d["method"],
            d["n_texts"],
            d["sigma_top_max"],
            d["lyapunov_top"],
            d["non_normality_early"] - d["non_normality_late"],
            d["antisymmetric_early"] - d["antisymmetric_late"],
        ]
    else:
        local = ["", f"not run: {why_not(rec.dynamics)}", "", *[float("nan")] * 4]
    deletion = (
        f"layer {a['delete']['layer']}: {fmt(a['delete']['delta_loss'], 3)}"
        if "delete" in a
        else f"not run: {why_not(rec.ablation)}"
    )
    return [
        rec.model,
        rec.dataset,
        *local[:3],
        g["cka_neighbours_mean"],
        g["cka_first_last"],
        g["dimension_max"],
        g["participation_max"],
        *local[3:],
        deletion,
    ]


COLUMNS = [
    "model",
    "dataset",
    "d",
    "Jacobians",
    "texts",
    "CKA, neighbours",
    "CKA, first-last",
    "max intrinsic dim.",
    "max participation ratio",
    "max σ_max",
    "λ_1",
    "non-normality, early − late",
    "antisymmetric share, early − late",
    "costliest deletion: Δloss",
]


def _not_run_note(what: str, skipped: dict[str, str], off: str | None = None) -> str | None:
    if not skipped:
        return None
    if off is not None and set(skipped.values()) == {off}:
        return f"{what}: switched off ({off.split(' is ')[0]})."
    return f"{what} not run on: " + "; ".join(f"{_esc(k)} ({_esc(v)})" for k, v in skipped.items())


def section_content(
    results: dict[tuple[str, str], Recording],
    figures: list[tuple[str, str, str | None]],
    pngs: dict[tuple[str, str], dict[str, str]],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Title, intro, figures, table, notes and verdicts of the section.

    ``results``: every analysed recording (an analysis that did not run on one is None there, or
    a dataset whose ``skipped`` attribute says why); ``figures``: (model, dataset, twin model or
    None) of the recordings drawn; ``pngs``: their figure files by key of
    ``beyond.figures.FIGURES``. Figures of an analysis that did not run are left out; the notes
    say where and why."""
    figs, notes, verdicts = [], [], []
    for model, dataset, twin_model in figures:
        main = results[model, dataset]
        twin = results.get((twin_model, dataset)) if twin_model else None
        g = geometry_numbers(main.geometry)
        tg = geometry_numbers(twin.geometry) if twin else None
        captions = {
            "cka": ("Layer similarity (linear CKA)", _cka_caption(g, tg)),
            "dimension": ("Intrinsic dimension and participation ratio", _dimension_caption(g, tg)),
        }
        if main.linearised:
            d = dynamics_numbers(main.dynamics, n_boot, seed)
            other = twin if twin is not None and twin.linearised else None
            td = dynamics_numbers(other.dynamics, n_boot, seed) if other else None
            captions["spectra"] = ("Jacobian spectra of the sublayer maps", _spectra_caption(d, td))
            captions["lyapunov"] = ("Finite-time Lyapunov exponents", _lyapunov_caption(d, td))
            claims = claim_verdicts(main.dynamics, other.dynamics if other else None, n_boot, seed)
            notes.append(_verdict_note(main.label, claims))
            verdicts += [
                {"model": model, "dataset": dataset, "twin": twin_model, "claim": key, **v}
                for key, v in claims.items()
            ]
        if main.ablated:
            ta = ablation_numbers(twin.ablation) if twin is not None and twin.ablated else None
            captions["ablation"] = (
                "Layer deletion and swap",
                _ablation_caption(ablation_numbers(main.ablation), ta),
            )
        for key, (title, caption) in captions.items():
            figs.append(
                Figure(
                    pngs[model, dataset][key],
                    f"{title}: {model} on {dataset}",
                    caption,
                    f"{model}--{dataset}--{key}",
                )
            )
    not_linearised = {r.label: why_not(r.dynamics) for r in results.values() if not r.linearised}
    not_ablated = {r.label: why_not(r.ablation) for r in results.values() if not r.ablated}
    for line in (
        _not_run_note("Jacobians and Lyapunov exponents", not_linearised),
        _not_run_note("Layer deletion and swap", not_ablated, OFF),
    ):
        if line:
            notes.append(line)
    notes.append(
        "Verdicts: a claim holds on a recording when its bootstrap interval over texts excludes "
        "zero; it is reproduced only when it also exceeds the untrained twin's value by more "
        "than the interval of the difference (texts resampled independently), not specific when "
        "the twin shows it as strongly. The claims paraphrase the linearised picture of the "
        "paper's authors' follow-up (arXiv 2605.14258), not its numbers; early and late are the "
        "first and last thirds of the maps."
    )
    rows = [_row(results[key], n_boot, seed) for key in results]
    return {
        "title": "Beyond the paper",
        "anchor": "beyond",
        "intro": INTRO,
        "figures": figs,
        "tables": [Table("Every analysed recording", COLUMNS, rows)],
        "notes": notes,
        "verdicts": verdicts,
    }

"""Captions of Figures 1-4: the paper's finding beside the number measured here, and each claim's
verdict under its panel. They read summary.json and reduction_summary.json (paper.summary)."""

from __future__ import annotations

import html

import numpy as np

from residual_dynamics.paper.claims import CLAIMS, verdict_word
from residual_dynamics.paper.reference import FINDINGS
from residual_dynamics.report.page import MARKS, VERDICT_MARKS
from residual_dynamics.report.style import fmt


def _mi_flag_note(block: dict) -> str:
    """The MI flags of the summary as a caption clause ('' for summaries without them)."""
    pairs = block.get("flagged_pairs") or {}
    if not pairs:
        return ""
    return (
        f"; flagged pairs: {pairs.get('saturated', 0)} saturating the grid, "
        f"{pairs.get('outlier', 0)} outlier-dominated (raw and copula KDE disagree), "
        f"{pairs.get('constant', 0)} constant"
    )


def _mi_estimator_note(per: dict) -> str:
    """Every estimator at t0 and the MI beyond the Gaussian, as a caption clause."""
    by = per.get("mi_by_estimator") or {}
    if not by:
        return ""
    names = {"kde": "KDE", "copula_kde": "copula KDE", "gcmi": "GCMI"}
    at_t0 = ", ".join(f"{names[k]} {fmt(v[0])}" for k, v in by.items() if k in names and v)
    excess = [v for v in per.get("mi_excess") or [] if v is not None]
    beyond = (
        f"; beyond the Gaussian (median copula KDE - GCMI) {fmt(min(excess))} to {fmt(max(excess))}"
        if excess
        else ""
    )
    return f"; at t0: {at_t0}{beyond}"


def mean_activation_caption(means) -> str:
    """Caption of Figure 1B with the number we measured beside the paper's observation."""
    values = means["mean"].values
    spread = np.nanstd(values, axis=1)
    return (
        "Mean activation of every unit at every sublayer over the N samples; units sorted by their "
        f"mean at the last sublayer, colours clipped to ±1. {FINDINGS['fig1b']} "
        f"<i>Here:</i> across-unit spread of the mean grows from {spread[0]:.3f} "
        f"({html.escape(str(means['sublayer'].values[0]))}) to {spread[-1]:.3f} "
        f"({html.escape(str(means['sublayer'].values[-1]))}); "
        f"{int((np.abs(values[-1]) > 1).sum())} units exceed |1| at the last sublayer."
    )


def panel_captions(summary: dict) -> dict[str, tuple[str, str]]:
    """(title, caption) per panel id: the paper's finding beside the number measured here."""
    per = summary["per_transition"]
    kind = summary["by_kind"]
    rot = summary["rotations"]
    nulls = rot.get("nulls", {})
    s = summary["n_sublayers"]

    def null_line(name: str) -> str:
        n = nulls.get(name, {})
        return (
            f"{name.replace('_', ' ')}: null mean |R| {fmt(n.get('null_mean_abs_r'))}, "
            f"{fmt(100 * n['frac_beyond95'], 0) if n.get('frac_beyond95') is not None else 'n/a'} % "
            f"of units beyond its 95th percentile (5 % expected by chance)"
        )

    beyond_surrogate = max(
        (nulls.get(k, {}).get("frac_beyond95") or 0.0) for k in ("random_walk", "ar1", "phase")
    )
    verdict_rot = (
        "<b>Verdict:</b> units rotate more than autocorrelated noise."
        if beyond_surrogate > 0.2
        else "<b>Verdict:</b> units do not rotate more than autocorrelated noise of the same "
        "smoothness: the rotation count here is what a random walk through the same recipe gives."
    )
    corr = per["correlation"]
    return {
        "fig1b": ("Figure 1B: mean activation per unit", ""),
        "fig1c": (
            "Figure 1C: correlation between successive sublayers",
            f"{FINDINGS['fig1c']} <i>Here:</i> mean r {fmt(corr[0])} at the first transition, "
            f"{fmt(corr[len(corr) // 2])} mid-depth, {fmt(corr[-1])} at the last; within-layer "
            f"{fmt(kind['correlation']['within'])} vs cross-layer {fmt(kind['correlation']['cross'])}; "
            f"rank correlation with depth {fmt(summary.get('correlation_rises_with_depth'))}"
            + (
                f"; {summary['constant_units']} (sublayer, unit) pairs are constant over the "
                "samples and left undefined"
                if summary.get("constant_units")
                else ""
            )
            + ".",
        ),
        "fig1d": (
            "Figure 1D: per-unit histograms of correlations",
            f"{FINDINGS['fig1d']} <i>Here:</i> the pooled histogram above, each unit a row below.",
        ),
        "fig1e": (
            "Figure 1E: cosine similarity of successive sublayers",
            f"{FINDINGS['fig1e']} <i>Here:</i> {fmt(per['cosine'][0])} at t0, "
            f"{fmt(per['cosine'][min(1, len(per['cosine']) - 1)])} at t1, within-layer mean "
            f"{fmt(kind['cosine']['within'])}, cross-layer {fmt(kind['cosine']['cross'])}.",
        ),
        "fig1f": (
            "Figure 1F: velocity between successive sublayers",
            f"{FINDINGS['fig1f']} <i>Here:</i> {fmt(per['velocity'][0])} at t0, peak "
            f"{fmt(max(v for v in per['velocity'] if v is not None))} at t"
            f"{int(np.nanargmax(np.asarray(per['velocity'], dtype=float)))} of {s - 2}; within-layer "
            f"{fmt(kind['velocity']['within'])} vs cross-layer {fmt(kind['velocity']['cross'])}.",
        ),
        "fig1g": (
            "Figure 1G: mutual information per unit",
            f"{FINDINGS['fig1g']} "
            f"<i>Here:</i> {summary['mutual_information'].get('estimator', 'kde')}, grid "
            f"{summary['mutual_information']['grid']}, bandwidth "
            f"{summary['mutual_information']['bandwidth']}, N = "
            f"{summary['mutual_information']['n_samples']}; "
            f"{summary['mutual_information']['undefined_pairs']} undefined pairs (constant units)"
            f"{_mi_flag_note(summary['mutual_information'])}.",
        ),
        "fig1h": (
            "Figure 1H: mean mutual information per transition",
            f"{FINDINGS['fig1h']} "
            f"<i>Here:</i> {fmt(per['mi_kde'][0])} at t0, {fmt(min(per['mi_kde']))} at the lowest, "
            f"{fmt(per['mi_kde'][-1])} at the last (Gaussian-from-r cross-check: "
            f"{fmt(per['mi_gaussian'][0])} at t0){_mi_estimator_note(per)}.",
        ),
        "fig2a": (
            "Figure 2A: unit phase portraits",
            FINDINGS["fig2a"],
        ),
        "fig2b": (
            "Figure 2B: rotation counts against nulls",
            f"{FINDINGS['fig2b']} "
            f"<i>Here</i> ({s} sublayers): mean R {fmt(rot.get('mean_r'))}, mean |R| "
            f"{fmt(rot.get('mean_abs_r'))}. "
            + "; ".join(null_line(k) for k in nulls)
            + ". "
            + verdict_rot,
        ),
        "fig2c": (
            "Figure 2C: rotation count per unit",
            "Signed R for every unit (sorted) with each null's per-unit 95th percentile of |R|. "
            "A 64-step Gaussian random walk already gives |R| ≈ 11 through the paper's recipe.",
        ),
    }


def _per_text(pert: dict) -> str:
    """The per-text remaining distances the teleport verdict is decided on, with intervals."""
    verdict = pert.get("verdict") or {}
    remaining = verdict.get("remaining")
    if not remaining or remaining.get("mid") is None:
        return ""

    def ci(pair) -> str:
        return f"[{fmt(pair[0])}, {fmt(pair[1])}]" if pair else ""

    return (
        f"Over {verdict.get('n_texts')} dataset texts: remaining distance at mid depth "
        f"{fmt(remaining['mid'])} {ci(remaining.get('mid_ci'))}, at the lower edge (layer "
        f"{remaining.get('edge_layer')}) {fmt(remaining['edge'])} {ci(remaining.get('edge_ci'))}. "
    )


def _verdict(ok: bool | None, yes: str, no: str) -> str:
    if ok is None:
        return f"<b>Verdict:</b> {verdict_word(None)} here."
    return f"<b>Verdict:</b> {verdict_word(ok)}: {yes if ok else no}"


def reduction_captions(red: dict) -> dict[str, tuple[str, str]]:
    """(title, caption) for the panels of Figures 3 and 4, from reduction_summary.json."""
    pca = red["pca"]
    out = {
        "fig4a": (
            "Figure 4A: trajectories in PC space",
            f"{FINDINGS['fig4a']} "
            f"<i>Here:</i> PC1 and PC2 explain {fmt(100 * pca['pc1_ratio'], 1)} % and "
            f"{fmt(100 * pca['pc2_ratio'], 1)} % of the variance of all sublayer vectors.",
        ),
        "fig4b": (
            "Figure 4B: cumulative explained variance per sublayer",
            f"{FINDINGS['fig4b']} Left: each sublayer's variance (about its own mean) captured by the "
            "global components, the paper's reading; right: each sublayer's own PCA.",
        ),
        "fig4c": (
            f"Figure 4C: explained variance at {pca['n_components_at']} components",
            f"{FINDINGS['fig4c']} <i>Here ({pca['n_components_at']} components, the "
            "same share of the model's width):</i> "
            f"{fmt(pca['cumulative_at_first'])} at the first sublayer, peak "
            f"{fmt(pca['cumulative_at_peak'])} at {html.escape(str(pca['peak_sublayer']))}, "
            f"{fmt(pca['cumulative_at_last'])} at the last"
            + (
                f"; each sublayer's own PCA: {fmt(pca.get('own_at_first'))} first, "
                f"{fmt(pca.get('own_at_last'))} last"
                if pca.get("own_at_first") is not None
                else ""
            )
            + ". "
            + _verdict(
                pca["later_need_fewer"],
                "the later half of the sublayers is captured better than the first half.",
                "the later half is not captured better than the first half.",
            ),
        ),
    }
    cae = red.get("cae")
    if cae:
        out |= {
            "fig3b": (
                "Figure 3B: CAE latent trajectories",
                f"{FINDINGS['fig3b']} "
                f"<i>Here:</i> {cae['n_test']} held-out samples; best validation epoch "
                f"{cae['best_epoch']}.",
            ),
            "fig3c": (
                "Figure 3C: latent distance between successive sublayers",
                f"{FINDINGS['fig3c']} <i>Here:</i> median "
                f"{fmt(cae['step_median'], 3)}, last {fmt(cae['step_last'], 3)} (latent units "
                "depend on the trained network: compare shapes, not values).",
            ),
            "fig3d": (
                "Figure 3D: CAE reconstruction explained variance per sublayer",
                f"{FINDINGS['fig3d']} "
                f"<i>Here</i> (normalised inputs): {fmt(cae['ev_first'])} at the first sublayer, "
                f"{fmt(cae['ev_at_5'])} at the sixth, max {fmt(cae['ev_max'])} at "
                f"{html.escape(str(cae['ev_max_sublayer']))}, {fmt(cae['ev_last'])} at the last. "
                + _verdict(
                    cae["ev_rises"],
                    "explained variance rises with depth.",
                    "explained variance does not rise with depth.",
                ),
            ),
        }
    pert = red.get("perturbation")
    if pert:
        rows = []
        for layer in pert["layers"]:
            m = pert["per_layer"][str(layer)]
            rows.append(
                f"layer {layer}: remaining {fmt(m['remaining'])}, end MSE {fmt(m['end_mse'], 3)}, "
                f"end spread {fmt(m['end_spread_ratio'])}"
                + (f", KL {fmt(m['kl'], 3)}" if m.get("kl") is not None else "")
            )
        verdicts = pert.get("verdicts", {})
        detail = "; ".join(
            f"{k.replace('_', ' ')}: mid {fmt(v['mid'], 3)} vs first/last {fmt(v['first_last'], 3)}"
            for k, v in verdicts.items()
        )
        out |= {
            "fig4d": (
                "Figure 4D: teleport perturbations",
                f"{FINDINGS['fig4d']} "
                f"<i>Here</i> (grid {html.escape(str([round(x, 2) for x in pert['grid_range']]))}"
                f" on both PCs): "
                + "; ".join(rows)
                + ". "
                + (f"Control prompt, mid vs first/last: {detail}. " if detail else "")
                + _per_text(pert)
                + _verdict(
                    pert["mid_recovers_more"],
                    "the dataset texts' teleports recover (remaining below 1 beyond the interval) "
                    "and mid-depth ones end closer than the lower of the first and last layers.",
                    "the dataset texts' teleports do not recover, or mid-depth ones do not end "
                    "closer than the lower of the first and last layers beyond the interval.",
                ),
            ),
            "fig4e": (
                "Figure 4E: recovery per layer (beyond the paper)",
                "Remaining: distance to the control a horizon of sublayers after the perturbation, "
                "over the distance it was sent. End MSE and end spread (in PC1/PC2, over the start "
                "spread) at the last sublayer. KL: next-token distribution against the control's "
                "(causal models only). Gaussian noise (norm = scale × the state's norm) and swaps "
                "with other texts' states at the same layer use the same measures.",
            ),
        }
    return out


def add_claim_verdicts(
    captions: dict[str, tuple[str, str]], evaluated: dict, verdicts: dict | None = None
) -> dict[str, tuple[str, str]]:
    """Append each claim's verdict to its panel's caption, where the caption has none yet:
    paper.verdicts' record (``verdicts``, key -> record) where given, with what decided it."""
    out = dict(captions)
    if verdicts:
        for claim in CLAIMS:
            panel = f"fig{claim.panel.lower()}"
            record = verdicts.get(claim.key)
            if panel not in out or record is None:
                continue
            title, text = out[panel]
            if "<b>Verdict:</b>" in text:  # the caption's own sentence: the record replaces it
                text = text[: text.index("<b>Verdict:</b>")].rstrip()
            number = ""
            if record.get("value") is not None:
                number = f" ({html.escape(claim.measured)} {fmt(record['value'])}"
                if record.get("ci"):
                    number += f", 95 % interval {fmt(record['ci'][0])} to {fmt(record['ci'][1])}"
                number += ")"
            out[panel] = (
                title,
                f"{text} <b>Verdict:</b> {html.escape(claim.statement)}: "
                f"<span class='{VERDICT_MARKS[record['verdict']][0]}'>{record['verdict']}</span>"
                f"{number}; {html.escape('; '.join(record['decided_by']))}.",
            )
        return out
    for claim in CLAIMS:
        panel = f"fig{claim.panel.lower()}"
        if panel not in out or "Verdict" in captions[panel][1]:
            continue
        value, holds = evaluated.get(claim.key, (None, None))
        title, text = out[panel]
        number = "" if value is None else f" ({html.escape(claim.measured)} {fmt(value)})"
        out[panel] = (
            title,
            f"{text} <b>Verdict:</b> {html.escape(claim.statement)}: "
            f"<span class='{MARKS[holds][0]}'>{verdict_word(holds)}</span>{number}.",
        )
    return out

"""The Talking Heads report section: for each model, a caption per figure with the paper's
finding (``reference``) beside this run's numbers and a verdict, the table of top component
outliers and the Laundry List accuracy table, and notes on the conventions and on heads chosen from
the weights; ``write_section`` writes them as the section manifest of the ``talking_heads_section``
rule. Reads the datasets of ``weights`` and ``laundry`` and the figures' paths; needs no torch.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from residual_dynamics.report.page import Figure, Table, write_section_manifest
from residual_dynamics.report.style import fmt
from residual_dynamics.studies.talking_heads import reference
from residual_dynamics.studies.talking_heads.weights import (
    KIND_NAMES,
    dominant_component,
    flag_summary,
    heads_of,
    top_outliers,
)

# How each talking_heads.fold reads, for the report's note (the default: transformer_lens).
FOLD_NOTES = {
    "transformer_lens": "<code>fold: transformer_lens</code> (the default, as TransformerLens's "
    "fold_ln and center_writing_weights, which the paper's authors used): the scale g folded into "
    "W<sub>Q</sub>, W<sub>K</sub>, W<sub>V</sub>, their columns centred over d<sub>model</sub> "
    "(ln_1's own centring, made exact), and each row of W<sub>O</sub> centred (no LayerNorm "
    "reader sees the mean direction).",
    "scale": "<code>fold: scale</code>: the scale g folded into W<sub>Q</sub>, W<sub>K</sub>, "
    "W<sub>V</sub>; LayerNorm centring ignored (the default is transformer_lens).",
    "none": "<code>fold: none</code>: raw weights, LayerNorm ignored (the default is "
    "transformer_lens).",
}


def percent(value) -> str:
    """A fraction as whole percent for a caption ("64 %"); "n/a" for a missing or non-finite one."""
    text = fmt(None if value is None else 100 * value, 0)
    return text if text == "n/a" else f"{text} %"


def section_captions(model: str, weights: xr.Dataset, result: xr.Dataset, heads: dict, kind: str):
    """(figure id, title, caption HTML) per figure, the paper's finding beside ours."""
    name = html.escape(model)
    comp = weights["composition"].sel(kind=kind).values
    i, j = np.unravel_index(np.nanargmax(comp), comp.shape)
    labels = weights["source"].values
    top = top_outliers(weights, kind=kind, target=heads["mover"], n=1)
    top_row = top[0] if top else {"label": "n/a", "z": float("nan"), "score": float("nan")}
    n_comp = int(weights.attrs["d_head"])
    # With n components z cannot exceed sqrt(n - 1) (one component high, the rest equal), so the
    # paper's 5 SD out of 64 is out of reach for small heads; the nulls decide instead.
    bound = float(np.sqrt(n_comp - 1))
    verdict_outlier, null_text = outlier_verdict(weights, kind, heads["mover"], top_row)
    auto = heads.get("automatic", [])
    chosen = (
        f"mover {html.escape(heads['mover'])}"
        + (" (chosen from the weights)" if "mover" in auto else " (from the config)")
        + f", feeding heads {html.escape(', '.join(heads['inhibition']))}"
        + (" (chosen from the weights)" if "inhibition" in auto else " (from the config)")
    )
    captions = [
        (
            "composition",
            f"{name}: composition scores between heads",
            f"Whole-head Q-, K- and V-composition of every earlier head (rows) into every later "
            f"head (columns); grey: not earlier. <i>Paper ({reference.MODEL}):</i> "
            f"{reference.FINDINGS['heads']}. "
            f"<i>Here:</i> strongest {KIND_NAMES[kind]} {html.escape(str(labels[i]))} → "
            f"{html.escape(str(labels[j]))} (CS {np.nanmax(comp):.3f}; median over pairs "
            f"{np.nanmedian(comp):.3f}); {chosen}.",
        ),
        (
            "components",
            f"{name}: SVD components into mover {html.escape(heads['mover'])}",
            f"Each earlier head's OV split into rank-1 SVD components, each scored ({KIND_NAMES[kind]}) "
            f"against the mover; z in SDs above its head's mean. <i>Paper:</i> "
            f"{reference.FINDINGS['outlier']}. "
            f"<i>Here:</i> top outlier {html.escape(top_row['label'])} at z = {top_row['z']:.1f} "
            f"(score {top_row['score']:.3f}) of {n_comp} components (z cannot exceed "
            f"{bound:.1f} with {n_comp}). {null_text} " + verdict_outlier,
        ),
    ]
    if result.attrs.get("skipped"):
        return captions
    acc = result["accuracy_vocab"].values
    ns = result["n_items"].values
    paper_n = reference.LAUNDRY_N
    at_paper_n = (
        float(result["accuracy_vocab"].sel(n_items=paper_n)) if paper_n in ns else float("nan")
    )
    falling = len(acc) > 1 and acc[-1] < acc[0]
    captions.append(
        (
            "laundry",
            f"{name}: Laundry List accuracy against N",
            f"Top-1 accuracy on the missing object and accuracy among the listed objects, with the "
            f"rate of picking the last-mentioned item. <i>Paper ({reference.MODEL}):</i> "
            f"{reference.FINDINGS['accuracy']}. <i>Here:</i> {percent(at_paper_n)} at N = "
            f"{reference.LAUNDRY_N}, {percent(acc[-1])} at N = {ns[-1]}; among listed "
            f"{percent(result['accuracy_listed'].values[0])} at N = {ns[0]} against chance "
            f"{percent(result['chance_listed'].values[0])}; last-item rate "
            f"{percent(result['last_item_rate'].values[0])}. <b>Verdict:</b> accuracy "
            + ("falls with N, as in the paper." if falling else "does not fall with N here."),
        )
    )
    if "steering_accuracy_vocab" in result:
        base = result.attrs["baseline_accuracy_vocab"]
        steer = result["steering_accuracy_vocab"].values
        best = int(np.argmax(steer))
        removal = ""
        if "removal_label" in result:
            main = ~result["removal_control"].values
            deltas = result["removal_accuracy_vocab"].values[main] - base
            removal = (
                f" Removing each feeding head's top component changes top-1 accuracy by "
                f"{', '.join(f'{100 * d:+.0f}' for d in deltas)} points (controls: their lowest-z "
                "component)."
            )
        captions.append(
            (
                "interventions",
                f"{name}: interventions on the mover's input",
                f"<i>Paper:</i> {reference.FINDINGS['oracle']}. <i>Here</i> (N = "
                f"{result.attrs['intervention_n_items']}, {result.attrs['intervention_n_prompts']} "
                f"prompts): {percent(base)} without intervention, {percent(steer[best])} at the best "
                f"steering scale ({float(result['scale'].values[best]):+g} SD along "
                f"{html.escape(result.attrs['steering_component'])}; chosen on the same prompts, an "
                "oracle like the paper's)." + removal,
            )
        )
    if "grid_attended_index" in result:
        attended = result["grid_attended_index"].values
        hits = result["grid_baseline_attended_index"].values == result["grid_missing_index"].values
        captions.append(
            (
                "grid",
                f"{name}: the mover's attention over the top three components",
                "The state entering the mover's layer at the last token, moved over a grid in the span "
                f"of components {html.escape(', '.join(result.attrs['grid_components']))}; colour: the "
                "list item the mover attends to most (majority over prompts). "
                f"<i>Paper:</i> {reference.FINDINGS['grid']}. <i>Here:</i> "
                f"{len(np.unique(attended))} distinct list items are reached over the grid; "
                f"unmoved, the mover attends to the missing item in {percent(hits.mean())} of prompts.",
            )
        )
    return captions


def _p(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.2g}"


def outlier_verdict(weights: xr.Dataset, kind: str, mover: str, top_row: dict) -> tuple[str, str]:
    """(verdict HTML, sentence on the nulls) for the top component into the mover.

    The claim (one component of a feeding head dominates its composition with the mover) is
    reproduced only if that component beats every null as the top of all components feeding
    the mover (``dominant_component``).
    """
    if "component_flagged" not in weights:
        return (
            "<b>Verdict:</b> not comparable: no null was computed (talking_heads.nulls.rotations "
            "is 0), and z alone has none.",
            "",
        )
    alpha = float(weights.attrs["alpha"])
    summary = flag_summary(weights, kind)
    top = dominant_component(weights, kind, mover)
    label = html.escape(top.get("label", "n/a"))
    twin = (
        f"; the untrained twin's largest z into {html.escape(mover)} is {fmt(top['twin_max_z'], 1)}"
        if top.get("twin_max_z") is not None
        else ""
    )
    text = (
        f"Per component: p {_p(top_row.get('p'))} against rotations of its head's OV"
        + (
            f", p {_p(top_row.get('p_twin'))} against the untrained twin's z"
            if "p_twin" in top_row
            else ""
        )
        + f". As the top of every component feeding {html.escape(mover)}: family-wise p "
        f"{_p(top.get('family_p'))} (the rotations' largest z into the mover){twin}. Over every "
        f"head pair, {summary['n_flagged']} of {summary['n_components']} components "
        f"({100 * summary['share_flagged']:.1f} %) are flagged at the {100 * alpha:g} % level "
        f"against both nulls, where chance alone flags about {100 * alpha:g} %"
        + (
            f" (the untrained twin: {100 * summary['twin_share_flagged']:.1f} % against its own "
            "rotations)."
            if "twin_share_flagged" in summary
            else "."
        )
    )
    verdicts = {
        "reproduced": f"reproduced here: {label} dominates beyond the nulls, a low-rank channel "
        "like the paper's.",
        "not specific": f"not specific: {label} beats the rotations, but the untrained twin has a "
        "component as far out.",
        "not reproduced": "not reproduced here: the top component into the mover is no further "
        "out than the largest of randomly rotated heads.",
        "not comparable": "not comparable: no null for the top component.",
    }
    return f"<b>Verdict:</b> {verdicts[top['verdict']]}", text


def outlier_table(model: str, weights: xr.Dataset, kind: str, n: int):
    rows = []
    for r in top_outliers(weights, kind=kind, n=n):
        row = [r["label"], r["target"], round(r["z"], 2), round(r["score"], 4)]
        row += [_p(r.get("p")), _p(r.get("p_twin"))]
        row.append("n/a" if "flagged" not in r else ("yes" if r["flagged"] else "no"))
        rows.append(row)
    alpha = weights.attrs.get("alpha", 0.01)
    return Table(
        f"{model}: top {KIND_NAMES[kind]} component outliers (z over the source head's components; "
        f"p against the rotation null and the untrained twin; flagged at p <= {alpha:g} in each)",
        [
            "component (layer.head.index)",
            "into head",
            "z (SD)",
            "score",
            "p (rotations)",
            "p (untrained twin)",
            "flagged",
        ],
        rows,
    )


def accuracy_table(model: str, result: xr.Dataset):
    rows = [
        [
            int(n),
            round(float(result["accuracy_vocab"].sel(n_items=n)), 3),
            round(float(result["accuracy_listed"].sel(n_items=n)), 3),
            round(float(result["last_item_rate"].sel(n_items=n)), 3),
            round(float(result["chance_listed"].sel(n_items=n)), 3),
        ]
        for n in result["n_items"].values
    ]
    return Table(
        f"{model}: Laundry List (paper, {reference.MODEL}: {reference.LAUNDRY_ACCURACY:.2f} "
        f"top-1 at N = {reference.LAUNDRY_N})",
        ["N", "top-1 (vocabulary)", "among listed", "last-item rate", "chance 1/N"],
        rows,
    )


def write_section(
    path: Path | str,
    *,
    models: Sequence[str],
    weights: Sequence[xr.Dataset],
    results: Sequence[xr.Dataset],
    figures: Sequence[dict],
    n_outliers: int,
) -> None:
    """The module's report section (a JSON manifest) for every analysed model."""
    all_figures, tables, notes = [], [], []
    fold = str(weights[0].attrs.get("fold", "scale")) if weights else "transformer_lens"
    notes.append(
        "Weights only: OV = W<sub>V</sub>W<sub>O</sub> and QK = W<sub>Q</sub>W<sub>K</sub>"
        "<sup>T</sup> per head in the row-vector convention, after folding ln_1: "
        + FOLD_NOTES.get(fold, html.escape(fold))
        + " 1/σ and all biases are ignored. Composition score CS(A, B) = |AB|<sub>F</sub> / "
        "(|A|<sub>F</sub>|B|<sub>F</sub>): Q = CS(OV<sub>1</sub>, QK<sub>2</sub>), K = "
        "CS(OV<sub>1</sub>, QK<sub>2</sub><sup>T</sup>), V = CS(OV<sub>1</sub>, OV<sub>2</sub>). "
        "Components are the SVD terms of each OV (index by singular value, from 0); z is in "
        "standard deviations over the head's components. Laundry List prompts use the paper's "
        "objects and openers with our own sentence template."
    )
    if weights and "component_p" in weights[0]:
        first = weights[0]
        notes.append(
            "The nulls for z (random weights of GPT-2 small's shape already reach z ≈ 5, the "
            "paper's threshold): (1) each source head's OV rotated at random within its own "
            "row and column spaces (singular values and subspaces kept, the alignment of single "
            f"components destroyed), {int(first.attrs['null_rotations'])} seeded draws (seed "
            f"{int(first.attrs['null_seed'])}); a component's p is the share of the rotated "
            "components' z (same later head) at or above its own; (2) the untrained twin (same "
            "architecture, random weights), its z pooled over every head pair. A component is "
            f"flagged at p &le; {float(first.attrs['alpha']):g} against both, not at a fixed "
            "number of SDs."
        )
    for model, data, result, paths in zip(models, weights, results, figures, strict=True):
        heads = heads_of(data)
        kind = heads["kind"]
        for figure_id, title, caption in section_captions(model, data, result, heads, kind):
            all_figures.append(
                Figure(Path(paths[figure_id]), title, caption, f"{model}-{figure_id}")
            )
        tables.append(outlier_table(model, data, kind, n_outliers))
        if result.attrs.get("skipped"):
            notes.append(
                f"<b>{html.escape(model)}</b>: Laundry List skipped: "
                f"{html.escape(str(result.attrs.get('reason')))}. Its weights-only analysis is "
                "shown above."
            )
        else:
            tables.append(accuracy_table(model, result))
        if heads["automatic"]:
            notes.append(
                f"<b>{html.escape(model)}</b>: {' and '.join(heads['automatic'])} head(s) chosen "
                f"from the weights ({KIND_NAMES[kind]}): the mover is the last-layer head with the "
                "strongest composition from any earlier head, the feeding heads those composing "
                f"most into it: mover {html.escape(heads['mover'])}, feeding "
                f"{html.escape(', '.join(heads['inhibition']))}. Set talking_heads.heads to fix them."
            )
    write_section_manifest(
        path,
        title="Talking Heads: head composition and the Laundry List",
        anchor="talking-heads",
        intro=(
            "Merullo, Eickhoff &amp; Pavlick (2024), <i>Talking Heads: understanding inter-layer "
            "communication in transformer language models</i>: earlier heads write into low-rank "
            "subspaces that later heads read; found from the weights alone by splitting each "
            "head's OV into SVD components, and tested on the Laundry List recall task."
        ),
        figures=all_figures,
        tables=tables,
        notes=notes,
    )

"""The Talking Heads figures of one model: composition heat maps between heads, the SVD
components' z-scores into the mover head, Laundry List accuracy against N, the interventions
(component removal and steering), and the 3-D grid of the mover's attention; ``write_figures``
saves all five (``FIGURES``) for the ``talking_heads_figures`` rule, with a figure that says why
where a part did not run. Reads the datasets of ``weights`` and ``laundry``; needs no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import xarray as xr

from residual_dynamics.report.style import PALETTE, figure_paths, save, set_style
from residual_dynamics.studies.talking_heads import reference
from residual_dynamics.studies.talking_heads.weights import (
    KIND_NAMES,
    KINDS,
    heads_of,
    top_outliers,
)


def _text_figure(text: str):
    set_style()
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.01, 0.5, text, va="center", ha="left", wrap=True, fontsize=9)
    return fig


def composition_figure(data: xr.Dataset, title: str):
    """Heat maps of whole-head Q-, K- and V-composition: earlier heads (rows) x later heads."""
    set_style()
    n_layers, n_heads = int(data.attrs["n_layers"]), int(data.attrs["n_heads"])
    # Rows: heads of layers 0..L-2 (sources); columns: heads of layers 1..L-1 (targets).
    rows, cols = slice(0, (n_layers - 1) * n_heads), slice(n_heads, n_layers * n_heads)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), constrained_layout=True)
    ticks = np.arange(0, (n_layers - 1) * n_heads, n_heads)
    centre = (n_heads - 1) / 2
    for ax, kind in zip(axes, KINDS, strict=True):
        values = data["composition"].sel(kind=kind).values[rows, cols]
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        cmap = sns.color_palette("mako_r", as_cmap=True).with_extremes(bad="0.92")
        image = ax.imshow(
            np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=high, interpolation="nearest"
        )
        for t in ticks[1:]:
            ax.axhline(t - 0.5, color="white", lw=0.4)
            ax.axvline(t - 0.5, color="white", lw=0.4)
        ax.set_xticks(ticks + centre, [str(i) for i in range(1, n_layers)])
        ax.set_yticks(ticks + centre, [str(i) for i in range(n_layers - 1)])
        ax.set_xlabel("later head (layer; heads within it left to right)")
        ax.set_ylabel("earlier head (layer)")
        ax.set_title(KIND_NAMES[kind], fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046, label="composition score")
    fig.suptitle(title, fontsize=10)
    return fig


def components_figure(data: xr.Dataset, heads: dict, kind: str, title: str):
    """Component z-scores of every earlier head into the mover, and the inhibition heads' scores."""
    set_style()
    mover = heads["mover"]
    z = data["component_z"].sel(kind=kind, target=mover)
    score = data["component_score"].sel(kind=kind, target=mover)
    sources = [s for s in z["source"].values if np.isfinite(z.sel(source=s).values).any()]
    inhibition = heads["inhibition"][:4]
    fig = plt.figure(figsize=(11, 6.4), constrained_layout=True)
    grid = fig.add_gridspec(2, max(1, len(inhibition)))
    top = fig.add_subplot(grid[0, :])
    flagged = (
        data["component_flagged"].sel(kind=kind, target=mover)
        if "component_flagged" in data
        else xr.zeros_like(z, dtype=bool)
    )
    for x, source in enumerate(sources):
        values = z.sel(source=source).values
        colour = PALETTE[1] if source in inhibition else "0.55"
        top.scatter(np.full(values.size, x), values, s=9, color=colour, alpha=0.8, lw=0)
        hits = flagged.sel(source=source).values
        if hits.any():
            top.scatter(
                np.full(int(hits.sum()), x),
                values[hits],
                s=40,
                facecolors="none",
                edgecolors=PALETTE[3],
                lw=0.9,
            )
    ranked = top_outliers(data, kind=kind, target=mover, n=3)
    for row in ranked:
        x = sources.index(row["source"])
        top.annotate(
            row["label"], (x, row["z"]), xytext=(4, 2), textcoords="offset points", fontsize=8
        )
    top.axhline(0, color="0.7", lw=0.6)
    step = max(1, len(sources) // 24)
    top.set_xticks(range(0, len(sources), step), sources[::step], rotation=90, fontsize=7)
    top.set_ylabel(f"z of component score\ninto {mover} (SD above head mean)")
    alpha = data.attrs.get("alpha")
    ringed = f"; ringed: flagged at the nulls' {100 * alpha:g} % level" if alpha else ""
    top.set_title(
        f"{KIND_NAMES[kind]} of every SVD component into mover {mover} "
        f"(orange: heads feeding the interventions{ringed})",
        fontsize=9,
    )
    for column, source in enumerate(inhibition):
        ax = fig.add_subplot(grid[1, column])
        values = score.sel(source=source).values
        zs = z.sel(source=source).values
        hits = flagged.sel(source=source).values
        ax.bar(np.arange(values.size), values, color=[PALETTE[3] if h else "0.6" for h in hits])
        best = int(np.nanargmax(zs))
        ax.set_title(f"{source}: top {source}.{best} (z {zs[best]:.1f})", fontsize=9)
        ax.set_xlabel("component (by singular value)")
        if column == 0:
            ax.set_ylabel(f"score into {mover}")
    fig.suptitle(title, fontsize=10)
    return fig


def laundry_figure(result: xr.Dataset, title: str):
    if result.attrs.get("skipped"):
        return _text_figure(f"Laundry List skipped: {result.attrs.get('reason')}")
    set_style()
    ns = result["n_items"].values
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    left.plot(ns, result["accuracy_vocab"], "o-", color=PALETTE[0], label="top-1 over vocabulary")
    left.plot(
        ns, result["accuracy_listed"], "s-", color=PALETTE[2], label="among the listed objects"
    )
    left.plot(ns, result["chance_listed"], ":", color="0.5", label="chance among listed (1/N)")
    left.scatter(
        [reference.LAUNDRY_N],
        [reference.LAUNDRY_ACCURACY],
        marker="*",
        s=120,
        color=PALETTE[3],
        zorder=4,
        label=f"paper, {reference.MODEL}, N = {reference.LAUNDRY_N}",
    )
    left.set_ylim(-0.02, 1.02)
    left.set_xlabel("items in the list (N)")
    left.set_ylabel("accuracy on the missing item")
    left.legend(frameon=False, fontsize=8)
    right.plot(
        ns, result["last_item_rate"], "o-", color=PALETTE[1], label="picks the last-mentioned item"
    )
    right.plot(ns, result["chance_listed"], ":", color="0.5", label="chance (1/N)")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("items in the list (N)")
    right.set_ylabel("rate")
    right.legend(frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def interventions_figure(result: xr.Dataset, title: str):
    if result.attrs.get("skipped") or "steering_accuracy_vocab" not in result:
        reason = result.attrs.get("reason") or "interventions were not run"
        return _text_figure(f"Interventions skipped: {reason}")
    set_style()
    base = result.attrs["baseline_accuracy_vocab"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    if "removal_label" in result:
        labels = [
            f"{label}{' (ctrl)' if ctrl else ''}"
            for label, ctrl in zip(
                result["removal_label"].values, result["removal_control"].values, strict=True
            )
        ]
        x = np.arange(len(labels))
        base_listed = result.attrs["baseline_accuracy_listed"]
        delta = result["removal_accuracy_vocab"].values - base
        delta_listed = result["removal_accuracy_listed"].values - base_listed
        left.bar(x - 0.2, 100 * delta, width=0.4, color=PALETTE[0], label="top-1")
        left.bar(x + 0.2, 100 * delta_listed, width=0.4, color=PALETTE[2], label="among listed")
        left.legend(frameon=False, fontsize=8)
        left.set_xticks(range(len(labels)), labels, rotation=60, fontsize=8)
        left.axhline(0, color="0.3", lw=0.6)
        left.set_ylabel("change in accuracy (points)")
        left.set_title(
            f"remove one OV component (N = {result.attrs['intervention_n_items']}, "
            f"base {100 * base:.0f} %)",
            fontsize=9,
        )
    scales = result["scale"].values
    right.plot(scales, result["steering_accuracy_vocab"], "o-", color=PALETTE[0], label="top-1")
    right.plot(
        scales, result["steering_accuracy_listed"], "s-", color=PALETTE[2], label="among listed"
    )
    right.axhline(base, color="0.5", ls=":", label="no intervention")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel(f"steering along {result.attrs['steering_component']} (SD of its projection)")
    right.set_ylabel("accuracy")
    right.legend(frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def grid_figure(result: xr.Dataset, title: str):
    """The 3-D grid over the top three components, coloured by the list index the mover attends to."""
    if "grid_attended_index" not in result:
        reason = result.attrs.get("reason") or "fewer than three components or no interventions"
        return _text_figure(f"3-D grid skipped: {reason}")
    set_style()
    coords = result["grid_coordinate"].values
    attended = result["grid_attended_index"].values
    n_items = int(result.attrs["intervention_n_items"])
    # Majority over prompts of the attended list index at each grid point.
    counts = np.stack([(attended == i).sum(axis=0) for i in range(n_items)])
    majority = counts.argmax(axis=0)
    fig = plt.figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot(projection="3d")
    colours = [PALETTE[i % len(PALETTE)] for i in range(n_items)]
    for i in range(n_items):
        sel = majority == i
        if sel.any():
            ax.scatter(
                *coords[sel].T, color=colours[i], s=14, label=f"list item {i + 1}", depthshade=False
            )
    names = result.attrs.get("grid_components", ["c1", "c2", "c3"])
    ax.set_xlabel(f"{names[0]} (orth.)", fontsize=8)
    ax.set_ylabel(f"{names[1]} (orth.)", fontsize=8)
    ax.set_zlabel(f"{names[2]} (orth.)", fontsize=8)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=9)
    return fig


FIGURES = ("composition", "components", "laundry", "interventions", "grid")


def write_figures(
    weights: xr.Dataset,
    result: xr.Dataset,
    directory: Path | str,
    formats: Sequence[str],
    dpi: int,
    model: str,
) -> dict[str, Path]:
    """Every figure of one model as ``<directory>/<name>.<format>``; returns the PNG paths.

    A part that did not run (the Laundry List on a tokenizer without the objects) gets a small
    figure that says why, so the set of files is always the same.
    """
    heads = heads_of(weights)
    directory = Path(directory)
    makers = {
        "composition": lambda: composition_figure(weights, f"{model}: composition between heads"),
        "components": lambda: components_figure(
            weights, heads, heads["kind"], f"{model}: components into mover {heads['mover']}"
        ),
        "laundry": lambda: laundry_figure(result, f"{model}: Laundry List"),
        "interventions": lambda: interventions_figure(result, f"{model}: interventions"),
        "grid": lambda: grid_figure(result, f"{model}: mover attention over the top components"),
    }
    outputs = {}
    for name in FIGURES:
        fig = makers[name]()
        save(fig, figure_paths(directory / f"{name}.png", formats), dpi=dpi)
        outputs[name] = directory / f"{name}.png"
    return outputs

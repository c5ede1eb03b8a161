"""Figures 3 and 4: trajectories in CAE and PCA space, explained variance, teleports."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection

from residual_dynamics.report.style import (
    CROSS,
    PALETTE,
    kind_colours,
    kind_legend,
    set_style,
)

DEPTH = "viridis"  # sublayer colour, dark (early) to yellow (late): perceptually uniform


def _coloured_path(ax, path: np.ndarray, lw: float = 2.2, cmap: str = DEPTH):
    """A 2-D path drawn segment by segment in the colour of its sublayer, dots at each point."""
    points = path[:, :2]
    segments = np.stack([points[:-1], points[1:]], axis=1)
    depth = np.linspace(0, 1, len(points))
    ax.add_collection(LineCollection(segments, cmap=cmap, array=depth[:-1], lw=lw, zorder=3))
    return ax.scatter(points[:, 0], points[:, 1], c=depth, cmap=cmap, s=18, zorder=4)


def _depth_colorbar(fig, ax, mappable, names) -> None:
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
    ticks = np.linspace(0, 1, min(5, len(names)))
    bar.set_ticks(ticks, labels=[names[int(round(t * (len(names) - 1)))] for t in ticks])
    bar.set_label("sublayer")


def trajectories(paths: np.ndarray, names, *, title: str, axis_label: str, n_thin: int = 200):
    """Figures 3B and 4A: every sample's trajectory thin and grey, the mean coloured by depth."""
    set_style()
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    finite = np.isfinite(paths).all(axis=(1, 2))
    paths = paths[finite]
    step = max(1, len(paths) // n_thin)
    for path in paths[::step]:
        ax.plot(path[:, 0], path[:, 1], color="0.15", lw=0.3, alpha=0.25)
    mean = paths.mean(axis=0)
    dots = _coloured_path(ax, mean)
    ax.set_xlabel(f"{axis_label} 1")
    ax.set_ylabel(f"{axis_label} 2")
    ax.set_title(title, fontsize=10)
    _depth_colorbar(fig, ax, dots, list(names))
    ax.autoscale()
    return fig


def latent_steps(steps: np.ndarray, kinds, *, title: str):
    """Figure 3C: distance between successive sublayers along the mean latent trajectory."""
    set_style()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    t = np.arange(len(steps))
    ax.plot(t, steps, color="0.4", lw=1)
    ax.scatter(t, steps, c=kind_colours(kinds), s=22, zorder=3)
    ax.set_xlabel("transition t (sublayer t → t+1)")
    ax.set_ylabel("latent distance")
    ax.set_title(title, fontsize=10)
    kind_legend(ax)
    return fig


def explained_variance_band(ev: np.ndarray, r2: np.ndarray, names, *, title: str):
    """Figure 3D: reconstruction explained variance per sublayer, mean and spread over test
    samples, with the pooled R^2 per sublayer."""
    set_style()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    s = np.arange(ev.shape[1])
    mean, sd = np.nanmean(ev, axis=0), np.nanstd(ev, axis=0)
    ax.fill_between(s, mean - sd, mean + sd, color=PALETTE[0], alpha=0.25, lw=0, label="± 1 SD")
    ax.plot(s, mean, color=PALETTE[0], lw=2, label="mean over test samples")
    ax.plot(s, r2, color=PALETTE[3], lw=1.2, ls="--", label="pooled R² per sublayer")
    step = max(1, len(names) // 12)
    ax.set_xticks(s[::step], list(names)[::step], rotation=45, ha="right")
    ax.set_ylabel("explained variance")
    ax.set_ylim(min(-0.05, float(np.nanmin(mean - sd))), 1.0)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return fig


def cumulative_curves(global_basis: np.ndarray, own: np.ndarray | None, names, *, title: str):
    """Figure 4B: cumulative explained variance against components, one curve per sublayer
    (left: in the global basis, the paper's reading; right: each sublayer's own PCA)."""
    set_style()
    panels = [("global components", global_basis)] + (
        [("own PCA per sublayer", own)] if own is not None else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    cmap = plt.get_cmap(DEPTH)
    k = np.arange(1, global_basis.shape[1] + 1)
    for ax, (label, values) in zip(axes[0], panels, strict=True):
        for i, curve in enumerate(values):
            ax.plot(k, curve, color=cmap(i / max(1, len(values) - 1)), lw=1)
        ax.set_xlabel("number of components")
        ax.set_ylabel("cumulative explained variance")
        ax.set_ylim(0, 1)
        ax.set_title(label, fontsize=9)
    mappable = plt.cm.ScalarMappable(cmap=cmap)
    _depth_colorbar(fig, axes[0, -1], mappable, list(names))
    fig.suptitle(title, fontsize=10)
    return fig


def cumulative_at(global_basis: np.ndarray, own: np.ndarray | None, names, at: int, *, title: str):
    """Figure 4C: the cumulative explained variance at ``at`` components, per sublayer."""
    set_style()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    s = np.arange(len(names))
    ax.plot(s, global_basis[:, at - 1], "o-", color=PALETTE[0], ms=4, label="global components")
    if own is not None:
        ax.plot(s, own[:, at - 1], "s--", color=PALETTE[1], ms=3, label="own PCA per sublayer")
    step = max(1, len(names) // 12)
    ax.set_xticks(s[::step], list(names)[::step], rotation=45, ha="right")
    ax.set_ylabel(f"explained variance, {at} components")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return fig


def teleports(
    paths: np.ndarray,
    control: np.ndarray,
    mean_path: np.ndarray,
    layers,
    names,
    horizon: int,
    *,
    title: str,
):
    """Figure 4D: per perturbed layer, where each teleported grid point goes over the next
    ``horizon`` sublayers (start: black dot, end: arrow head), beside the control (grey) and the
    data's mean trajectory (coloured by depth)."""
    set_style()
    n = len(layers)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.3 * cols, 4.0 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, li, layer in zip(axes.ravel(), range(n), layers, strict=False):
        start = list(names).index(f"attn{layer}")
        stop = min(start + horizon, len(names) - 1)
        _coloured_path(ax, mean_path, lw=1.2)
        ax.plot(control[:, 0], control[:, 1], color="0.55", lw=1.6, zorder=2, label="control")
        # Each path faint, the net move from start to end as one arrow (the paper's arrows). One
        # collection, one quiver and one scatter per panel: an artist per point made this figure
        # take 30 s to save.
        segments = np.asarray(paths[li])[:, start : stop + 1, :2]
        ax.add_collection(
            LineCollection(list(segments), colors=CROSS, linewidths=0.4, alpha=0.25, zorder=4)
        )
        first, last = segments[:, 0], segments[:, -1]
        ax.quiver(
            first[:, 0], first[:, 1], last[:, 0] - first[:, 0], last[:, 1] - first[:, 1],
            angles="xy", scale_units="xy", scale=1, color=CROSS, alpha=0.85, width=0.004,
            headwidth=4, headlength=5, zorder=5,
        )  # fmt: skip
        ax.scatter(first[:, 0], first[:, 1], s=4, color="k", zorder=6)
        ax.autoscale_view()
        ax.set_title(f"teleport at layer {layer} ({names[start]} → {names[stop]})", fontsize=9)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[0, 0].legend(frameon=False, fontsize=8, loc="upper left")  # "best" searches every artist
    fig.suptitle(title, fontsize=10)
    return fig


def recovery(
    measures: np.ndarray,
    kinds,
    layers,
    measure_names,
    *,
    title: str,
    per_text: np.ndarray | None = None,
    seed: int = 0,
    replicates: int = 200,
):
    """Recovery per perturbed layer (beyond the paper's figure): remaining distance after the
    horizon, end MSE, end spread ratio and KL, for teleports, noise and swaps on the control
    prompt; with ``per_text`` (text, layer, measure), the dataset texts' teleports too: their mean
    with its 95 % bootstrap band over texts (the band the teleport verdict is decided on)."""
    from residual_dynamics.analysis.recovery import mean_and_interval

    set_style()
    wanted = [
        m
        for m in ("remaining", "end_mse", "end_spread_ratio", "kl")
        if m in measure_names and np.isfinite(measures[:, :, list(measure_names).index(m)]).any()
    ]
    fig, axes = plt.subplots(1, len(wanted), figsize=(3.6 * len(wanted), 3.3), squeeze=False)
    for ax, measure in zip(axes[0], wanted, strict=True):
        mi = list(measure_names).index(measure)
        for ki, kind in enumerate(kinds):
            values = measures[ki, :, mi]
            if np.isnan(values).all():
                continue
            ax.plot(layers, values, "o-", ms=4, color=PALETTE[ki % len(PALETTE)], label=kind)
        if per_text is not None and len(per_text):
            mean, low, high = mean_and_interval(
                per_text[:, :, mi], replicates=replicates, seed=seed
            )
            if np.isfinite(mean).any():
                label = f"teleport, {len(per_text)} texts (95 % CI)"
                ax.fill_between(layers, low, high, color="k", alpha=0.15, lw=0)
                ax.plot(layers, mean, "s--", ms=3, color="k", lw=1, label=label)
        if measure == "remaining":
            ax.axhline(1.0, color="0.6", lw=0.8, ls=":")  # nothing recovered
        ax.set_xlabel("perturbed layer")
        ax.set_title(measure.replace("_", " "), fontsize=9)
        if measure in ("end_mse", "kl"):
            ax.set_yscale("symlog", linthresh=1e-3)
    axes[0, 0].legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig

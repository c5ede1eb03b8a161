"""The panels of Figures 1 and 2 (dynamics across sublayers) and the across-models comparison."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from residual_dynamics.report.style import (  # noqa: E402
    CROSS,
    PALETTE,
    kind_colours,
    kind_legend,
    set_style,
)


def mean_activation_heatmap(means: xr.Dataset, clip: float = 1.0):
    """Figure 1B: mean activation per unit (x, sorted by the last sublayer's mean) and sublayer (y)."""
    set_style()
    mean = means["mean"].values
    order = np.argsort(mean[-1])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    image = ax.imshow(
        np.clip(mean[:, order], -clip, clip),
        aspect="auto",
        cmap="RdBu_r",
        vmin=-clip,
        vmax=clip,
        interpolation="nearest",
    )
    names = list(means["sublayer"].values)
    step = max(1, len(names) // 16)
    ax.set_yticks(range(0, len(names), step), names[::step])
    ax.set_xlabel(f"unit (sorted by mean at {names[-1]})")
    ax.set_ylabel("sublayer")
    title = f"{means.attrs.get('model')} on {means.attrs.get('dataset')}"
    ax.set_title(
        f"Mean activation per unit, N = {means.attrs.get('n_samples')}\n{title}", fontsize=10
    )
    fig.colorbar(image, ax=ax, label=f"mean activation (clipped to ±{clip:g})", fraction=0.04)
    return fig


def transition_heatmap(
    values: np.ndarray,
    *,
    title: str,
    label: str,
    vmin: float,
    vmax: float,
    cmap: str = "viridis",
):
    """Units (y, sorted by their mean over transitions) x transitions (x): Figures 1C and 1G."""
    set_style()
    order = np.argsort(np.nanmean(values, axis=0))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    image = ax.imshow(
        values[:, order].T,
        aspect="auto",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )
    ax.set_xlabel("transition t (sublayer t → t+1)")
    ax.set_ylabel("unit (sorted by mean)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=label, fraction=0.04)
    return fig


def correlation_histogram_figure(hist: np.ndarray, reading: str, title: str):
    """Figure 1D: per-unit histograms of correlations over [0, 1], stacked as an image, with the
    pooled distribution above."""
    set_style()
    bins = hist.shape[1]
    centres = (np.arange(bins) + 0.5) / bins
    order = np.argsort(hist @ centres / np.maximum(hist.sum(1), 1))
    fig, (top, ax) = plt.subplots(
        2, 1, figsize=(6, 5), sharex=True, gridspec_kw={"height_ratios": [1, 3]}
    )
    pooled = hist.sum(axis=0)
    top.bar(centres, pooled / max(pooled.sum(), 1), width=1 / bins, color=CROSS)
    top.set_ylabel("fraction")
    top.set_title(title, fontsize=10)
    ax.imshow(
        hist[order],
        aspect="auto",
        cmap="mako_r",
        extent=(0, 1, len(order), 0),
        interpolation="nearest",
    )
    reading_text = "consecutive transitions" if reading == "transitions" else "all pairs l < m"
    ax.set_xlabel(f"Pearson r ({reading_text})")
    ax.set_ylabel("unit")
    return fig


def per_transition_figure(
    per_sample: np.ndarray,
    kinds,
    *,
    title: str,
    ylabel: str,
    spread: bool = True,
):
    """Figures 1E, 1F, 1H: the mean per transition (points coloured by kind) with the 10-90 %
    band over samples (or units) when ``spread``."""
    set_style()
    values = np.atleast_2d(per_sample)
    mean = np.nanmean(values, axis=0)
    t = np.arange(mean.size)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    if spread and values.shape[0] > 1:
        low, high = np.nanpercentile(values, [10, 90], axis=0)
        ax.fill_between(t, low, high, color="0.85", label="10–90 % over samples", lw=0)
    ax.plot(t, mean, color="0.4", lw=1)
    ax.scatter(t, mean, c=kind_colours(kinds), s=22, zorder=3)
    ax.set_xlabel("transition t (sublayer t → t+1)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    kind_legend(ax)
    return fig


def phase_portraits(x: np.ndarray, y: np.ndarray, units, r_units: np.ndarray, title: str):
    """Figure 2A: phase portraits (mean activation against its derivative over sublayers) for a
    few units, coloured by sublayer."""
    set_style()
    fig, axes = plt.subplots(1, len(units), figsize=(3.1 * len(units), 3.1), squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, x.shape[0]))
    for ax, unit in zip(axes[0], units, strict=True):
        ax.plot(x[:, unit], y[:, unit], color="0.7", lw=0.8)
        ax.scatter(x[:, unit], y[:, unit], c=colours, s=14, zorder=3)
        ax.set_title(f"unit {unit}: R = {r_units[unit]:+.2f}", fontsize=9)
        ax.set_xlabel("mean activation")
    axes[0, 0].set_ylabel("d/d sublayer")
    fig.suptitle(title, fontsize=10)
    return fig


def rotation_histograms(r_units: np.ndarray, nulls: dict[str, np.ndarray], title: str):
    """Figure 2B: |R| of the units against each null's |R| (pair shuffle, surrogates)."""
    set_style()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    every = np.concatenate([np.abs(r_units).ravel(), *[np.abs(v).ravel() for v in nulls.values()]])
    edges = np.linspace(0, np.nanpercentile(every, 99.5) + 1e-9, 50)
    ax.hist(np.abs(r_units), bins=edges, density=True, color="0.2", alpha=0.8, label="units")
    for (name, values), colour in zip(nulls.items(), PALETTE[1:], strict=False):
        ax.hist(
            np.abs(values).ravel(),
            bins=edges,
            density=True,
            histtype="step",
            lw=1.6,
            color=colour,
            label=name.replace("_", " "),
        )
    ax.set_xlabel("|rotation count R|")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return fig


def rotation_per_unit(r_units: np.ndarray, null_p95: dict[str, np.ndarray], title: str):
    """Figure 2C: R for every unit (sorted), with each null's per-unit 95th percentile of |R|."""
    set_style()
    order = np.argsort(r_units)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.plot(r_units[order], color="0.15", lw=1.2, label="units (signed R)")
    for (name, p95), colour in zip(null_p95.items(), PALETTE[1:], strict=False):
        ax.plot(p95[order], color=colour, lw=0.8, label=f"{name.replace('_', ' ')}: 95th pct |R|")
        ax.plot(-p95[order], color=colour, lw=0.8)
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("unit (sorted by R)")
    ax.set_ylabel("rotation count R")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=7, ncol=2)
    return fig


MI_STYLES = {
    "kde": ("KDE (raw margins)", "-", "0.15"),
    "copula_kde": ("copula KDE (rank-Gaussianised)", "--", "#b2182b"),
    "gcmi": ("Gaussian copula (GCMI)", ":", "#2166ac"),
    "gaussian": ("Gaussian from Pearson r", "-.", "0.55"),
}


def mi_estimator_curves(
    per_unit: dict[str, np.ndarray],
    headline: str,
    kinds,
    *,
    ksg: np.ndarray | None,
    excess: np.ndarray,
    title: str,
):
    """Figure 1H: the mean MI per transition by every estimator (the headline's points coloured
    by kind, with its 10-90 % band over units; KSG on its subset of units), and below it the
    dependence beyond the Gaussian, the median over units of copula KDE minus GCMI."""
    set_style()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 5.2), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]}
    )
    values = per_unit[headline]
    t = np.arange(values.shape[0])
    if values.shape[1] > 1:
        low, high = np.nanpercentile(values, [10, 90], axis=1)
        top.fill_between(t, low, high, color="0.88", lw=0, label=f"10–90 % of units ({headline})")
    for name, (label, style, colour) in MI_STYLES.items():
        if name in per_unit:
            top.plot(
                t, np.nanmean(per_unit[name], axis=1), ls=style, color=colour, lw=1.2, label=label
            )
    if ksg is not None and ksg.size and np.isfinite(ksg).any():
        top.plot(
            t,
            np.nanmean(ksg, axis=1),
            "x",
            color="#1b7837",
            ms=4,
            label=f"KSG ({ksg.shape[1]} units)",
        )
    top.scatter(t, np.nanmean(values, axis=1), c=kind_colours(kinds), s=18, zorder=3)
    top.set_ylabel("MI (nats), mean over units")
    top.set_title(title, fontsize=10)
    top.legend(frameon=False, fontsize=7, ncol=2)
    bottom.axhline(0, color="0.6", lw=0.8)
    bottom.plot(t, excess, color="0.4", lw=1)
    bottom.scatter(t, excess, c=kind_colours(kinds), s=14, zorder=3)
    bottom.set_ylabel("beyond Gaussian\n(nats, median)", fontsize=8)
    bottom.set_xlabel("transition t (sublayer t → t+1)")
    kind_legend(bottom)
    return fig

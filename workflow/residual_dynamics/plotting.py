"""Figures: one seaborn style, colour-blind-safe palettes, PNG and SVG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import xarray as xr  # noqa: E402

# Within-layer transitions green and cross-layer blue, as in the paper, from a colour-blind-safe set.
PALETTE = sns.color_palette("colorblind")
WITHIN, CROSS = PALETTE[2], PALETTE[0]


def set_style() -> None:
    sns.set_theme(context="paper", style="ticks", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "axes.titleweight": "bold"})


def save(fig, paths: Sequence[Path | str], dpi: int = 150) -> None:
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    plt.close(fig)


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

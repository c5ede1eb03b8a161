"""One look for every figure: a seaborn style, colour-blind-safe palettes, the files a figure is
saved to (PNG plus the other formats in ``figures.formats``), and number formats for captions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

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


def figure_paths(png: Path | str, formats: Sequence[str]) -> list[Path]:
    """The PNG and one file per other format in ``formats`` (same name, other suffix)."""
    png = Path(png)
    return [png] + [png.with_suffix(f".{fmt}") for fmt in dict.fromkeys(formats) if fmt != "png"]


def fmt(value, digits: int = 2, spec: str = "f") -> str:
    """A number for a caption; "n/a" for a missing or non-finite one."""
    if value is None or (isinstance(value, float | np.floating) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}{spec}}"


def kind_colours(kinds) -> list:
    """Within-layer transitions green, cross-layer blue."""
    return [WITHIN if k == "within" else CROSS for k in kinds]


def kind_legend(ax) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", color=WITHIN, label="within layer (attn→mlp)"),
        Line2D([], [], marker="o", ls="", color=CROSS, label="cross layer (mlp→attn)"),
    ]
    ax.legend(handles=handles, frameon=False, fontsize=8)

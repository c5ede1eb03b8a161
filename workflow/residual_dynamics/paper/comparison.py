"""Across models: every recording's per-transition curves (Figures 1C, 1E, 1F, 1H) on one
depth-normalised axis, with the paper's stated values, coloured by model family."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from residual_dynamics.paper import reference  # noqa: E402
from residual_dynamics.paper.claims import model_source  # noqa: E402
from residual_dynamics.report.style import PALETTE, set_style  # noqa: E402


def recording_styles(models: dict, datasets: dict, recordings) -> dict:
    """Colour per model family (a model and its untrained twin share one), line style per control:
    solid for a trained model on its texts, dotted for the untrained twin, dashed for shuffled tokens."""

    def family(model: str):
        return tuple(model_source(models.get(model, {}))) or model

    families = list(dict.fromkeys(family(m) for m, _ in recordings))
    styles = {}
    for model, dataset in recordings:
        untrained = models.get(model, {}).get("init") == "random"
        shuffled = bool(datasets.get(dataset, {}).get("shuffle_tokens"))
        styles[(model, dataset)] = {
            "color": PALETTE[families.index(family(model)) % len(PALETTE)],
            "ls": ("-." if shuffled else ":") if untrained else ("--" if shuffled else "-"),
            "lw": 1.2 if (untrained or shuffled) else 2.0,
        }
    return styles


def comparison_figure(summaries: dict, styles: dict):
    """Every recording's per-transition curves (Figure 1C, 1E, 1F, 1H) on one axis per measure, the
    transitions normalised to depth 0-1 so models of any depth overlay; the paper's stated values as
    black crosses. Velocity is divided by each recording's peak (its scale depends on the model)."""
    set_style()
    panels = [
        ("correlation", "mean r between sublayers (1C)", False),
        ("cosine", "cosine similarity (1E)", False),
        ("velocity", "velocity / its peak (1F)", True),
        ("mi_kde", "mutual information, nats (1H)", False),
    ]
    rows = (len(summaries) + 2 + 2) // 3  # legend rows: recordings and the paper's two marks
    legend_in = 0.22 * rows + 0.35
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.6 + legend_in), sharex=True)
    for ax, (key, label, normalise) in zip(axes.ravel(), panels, strict=True):
        for (model, dataset), summary in summaries.items():
            values = np.asarray(
                [np.nan if v is None else v for v in summary["per_transition"][key]], float
            )
            if normalise and np.isfinite(values).any():
                values = values / np.nanmax(values)
            depth = np.arange(values.size) / max(values.size - 1, 1)
            ax.plot(depth, values, label=f"{model} · {dataset}", **styles[(model, dataset)])
        if key in reference.CURVES:
            t, v = zip(*reference.CURVES[key], strict=True)
            ax.scatter(
                np.asarray(t) / reference.N_TRANSITIONS,
                v,
                marker="x",
                color="black",
                s=36,
                zorder=5,
                label=f"paper ({reference.MODEL})",
            )
        if key == "correlation":
            ax.axhline(
                reference.CORRELATION_FLOOR,
                color="black",
                ls=(0, (1, 3)),
                lw=1,
                label=f"paper: r > {reference.CORRELATION_FLOOR}",
            )
        ax.set_ylabel(label)
    for ax in axes[1]:
        ax.set_xlabel("depth (transition / number of transitions)")
    # One legend for the figure: every label once, in the order the panels first draw it.
    legend = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    labels, handles = list(legend), list(legend.values())
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=3,
        frameon=False,
        fontsize=8,
        bbox_to_anchor=(0.5, 0.0),
    )
    fig.suptitle(
        "All recordings, depth normalised: solid trained, dotted untrained twin, "
        "dashed shuffled tokens",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, legend_in / (6.6 + legend_in), 1, 1))
    return fig

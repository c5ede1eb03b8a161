"""The embedding-space study's figures, one set per recording: the true next token's rank per
sublayer, proximity to token embeddings, and the encoding walk."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from residual_dynamics.report.style import PALETTE, figure_paths, save, set_style


def _sublayer_axis(ax, sublayers: Sequence[str]) -> None:
    step = max(1, len(sublayers) // 12)
    ax.set_xticks(range(0, len(sublayers), step), list(sublayers)[::step], rotation=45)
    ax.set_xlabel("sublayer (residual stream before it; 'final' = after the last block)")


def _band(ax, x, values, colour, label):
    values = np.asarray(values, dtype=np.float64)
    low, mid, high = np.nanpercentile(values, [25, 50, 75], axis=0)
    ax.fill_between(x, low, high, color=colour, alpha=0.2, lw=0)
    ax.plot(x, mid, marker="o", ms=3, color=colour, label=label)


def figure_rank(lens, title: str):
    """True next-token rank per sublayer: medians with IQR bands, and the log-rank distribution."""
    import matplotlib.pyplot as plt

    set_style()
    sublayers = list(lens.attrs["sublayers"])
    x = np.arange(len(sublayers))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    _band(left, x, lens["true_rank"].values, PALETTE[0], "logit lens (final norm, unembedding)")
    _band(left, x, lens["rank_next_embed"].values, PALETTE[1], "cosine to W_E rows")
    if "rank_next_unembed" in lens:
        _band(left, x, lens["rank_next_unembed"].values, PALETTE[2], "cosine to W_U rows")
    left.set_yscale("log")
    left.set_ylabel("rank of the true next token (1 = top)")
    left.set_title("median and IQR over positions", fontsize=9)
    left.legend(frameon=False, fontsize=7)
    _sublayer_axis(left, sublayers)
    log_rank = np.log10(lens["true_rank"].values)
    right.boxplot(
        [log_rank[:, s] for s in range(len(sublayers))],
        positions=x,
        widths=0.6,
        showfliers=False,
        medianprops={"color": PALETTE[0]},
    )
    right.set_ylabel("log10 rank (logit lens)")
    right.set_title("distribution over positions (boxes: IQR, whiskers 1.5 IQR)", fontsize=9)
    _sublayer_axis(right, sublayers)
    fig.suptitle(title, fontsize=10)
    return fig


def figure_proximity(lens, title: str):
    """Cosine to token embeddings per sublayer, and the vocabulary-wide Spearman rho."""
    import matplotlib.pyplot as plt

    set_style()
    sublayers = list(lens.attrs["sublayers"])
    x = np.arange(len(sublayers))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, colour, label in (
        ("cos_next_embed", PALETTE[0], "true next token"),
        ("cos_current_embed", PALETTE[1], "current (input) token"),
        ("cos_mean_embed", PALETTE[2], "mean of the text's tokens so far"),
        ("max_cos_embed", PALETTE[3], "best token in the vocabulary"),
    ):
        _band(left, x, lens[name].values, colour, label)
    left.axhline(0, color="0.6", lw=0.6)
    left.set_ylabel("cosine to W_E row(s)")
    left.legend(frameon=False, fontsize=7)
    _sublayer_axis(left, sublayers)
    _band(right, x, lens["spearman_embed_logprob"].values, PALETTE[0], "cos(r, W_E[t]) vs log p(t)")
    right.axhline(0, color="0.6", lw=0.6)
    right.set_ylabel("Spearman rho over the vocabulary")
    right.legend(frameon=False, fontsize=7)
    _sublayer_axis(right, sublayers)
    fig.suptitle(title, fontsize=10)
    return fig


def figure_walk(walk, title: str):
    """Path length against displacement, delta norms per layer, and their ratio."""
    import matplotlib.pyplot as plt

    set_style()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    path, disp = walk["path_length"].values, walk["displacement"].values
    a.scatter(disp, path, s=6, alpha=0.5, color=PALETTE[0])
    top = float(np.nanmax([np.nanmax(path), np.nanmax(disp)])) * 1.05
    a.plot([0, top], [0, top], color="0.5", lw=0.8, ls="--", label="path = displacement")
    a.set_xlabel("displacement |r_L - r_0|")
    a.set_ylabel("path length sum |step|")
    a.legend(frameon=False, fontsize=7)
    layers = np.arange(walk["attn_delta_norm"].shape[1])
    _band(b, layers, walk["attn_delta_norm"].values, PALETTE[0], "attention step |Δ|")
    _band(b, layers, walk["mlp_delta_norm"].values, PALETTE[1], "MLP step |Δ|")
    b.set_xlabel("layer")
    b.set_ylabel("step norm")
    b.legend(frameon=False, fontsize=7)
    ratio = walk["attn_delta_norm"].values / walk["mlp_delta_norm"].values
    _band(c, layers, ratio, PALETTE[2], "|attention Δ| / |MLP Δ|")
    c.axhline(1, color="0.5", lw=0.8, ls="--")
    c.set_yscale("log")
    c.set_xlabel("layer")
    c.set_ylabel("ratio (median, IQR)")
    c.legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def write_figures(lens, walk, outputs: dict, *, label: str, formats, dpi: int) -> None:
    """The three figures of one recording; ``outputs`` maps rank, proximity and walk to their PNG
    paths (the other ``formats`` are saved beside them)."""
    n = lens.attrs.get("n_rows")
    save(
        figure_rank(lens, f"True next-token rank per sublayer, {label}, {n} positions"),
        figure_paths(outputs["rank"], formats),
        dpi=dpi,
    )
    save(
        figure_proximity(lens, f"Proximity to token embeddings, {label}, {n} positions"),
        figure_paths(outputs["proximity"], formats),
        dpi=dpi,
    )
    save(
        figure_walk(
            walk,
            f"Encoding walk at the stored positions ({walk.attrs.get('positions')} token), "
            f"{label}, N = {walk.attrs.get('n_samples')}",
        ),
        figure_paths(outputs["walk"], formats),
        dpi=dpi,
    )

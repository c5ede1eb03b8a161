"""The affine study's figures: accuracy per position, layer-0 attention by offset, the logit lens
after each block, the last layer's negative-similarity heads, and the ablations."""

from __future__ import annotations

import numpy as np

# The study's figures: the keys of ``write_figures``' ``paths`` and the section rule's outputs.
FIGURES = ("accuracy", "offsets", "lens", "similarity", "ablation")


def write_figures(results: dict[str, dict], paths: dict[str, list], dpi: int = 150) -> None:
    """The study's figures for every analysed model (the first is the main one).

    ``paths`` maps each figure key of ``FIGURES`` to its output paths (PNG, SVG, ...)."""
    import matplotlib.pyplot as plt

    from residual_dynamics.report.style import PALETTE, save, set_style

    set_style()
    names = list(results)
    main = results[names[0]]
    length = main["length"]
    x = np.arange(length)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, name in enumerate(names):
        ax.plot(x, results[name]["accuracy"], marker="o", color=PALETTE[i], label=name)
    if main.get("bayes_accuracy"):
        ax.plot(x, main["bayes_accuracy"], ls="--", color="0.3", label="Bayes-optimal")
    ax.axvline(main["min_position"] - 0.5, color="0.7", lw=0.8)
    ax.set(
        xlabel="position n of the predicted value x_n",
        ylabel="top-1 accuracy",
        ylim=(-0.02, 1.02),
        title="Accuracy per position (held-out (a, b))",
    )
    ax.legend(frameon=False, fontsize=8)
    save(fig, paths["accuracy"], dpi)

    offsets = np.asarray(main["layer0"]["attention_by_offset"])
    bos = np.asarray(main["layer0"]["attention_to_bos"])
    shown = min(8, offsets.shape[1])
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.8 / main["n_heads"]
    for h in range(main["n_heads"]):
        ax.bar(
            np.arange(shown + 1) + h * width,
            [*offsets[h, :shown], bos[h]],
            width,
            color=PALETTE[h % len(PALETTE)],
            label=f"L0H{h}",
        )
    ax.set_xticks(np.arange(shown + 1) + 0.4 - width / 2, [str(k) for k in range(shown)] + ["BOS"])
    ax.set(
        xlabel="relative offset (0 = own token, 1 = previous value)",
        ylabel="mean attention",
        title="Layer 0: attention by relative offset",
    )
    ax.legend(frameon=False, fontsize=8, ncol=2)
    save(fig, paths["offsets"], dpi)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    styles = {"answer": "-", "current": "--", "previous": ":"}
    for layer, hits in sorted(main["lens"].items(), key=lambda kv: int(kv[0])):
        for key, ls in styles.items():
            ax.plot(
                x,
                np.asarray(hits[key], dtype=float),
                ls=ls,
                marker=".",
                color=PALETTE[int(layer)],
                label=f"after block {layer}: {key}",
            )
    ax.set(
        xlabel="position n of the predicted value x_n",
        ylabel="share of top-1",
        ylim=(-0.02, 1.02),
        title="Logit lens: answer x_n, current x_{n-1}, previous x_{n-2}",
    )
    ax.legend(frameon=False, fontsize=7, ncol=2)
    save(fig, paths["lens"], dpi)

    last = main["last_layer"]
    pts = np.asarray(last["scatter"])
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), gridspec_kw={"width_ratios": [1.3, 1]})
    ax = axes[0]
    if len(pts):
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.3, color=PALETTE[0], rasterized=True)
        slope = last["qk_cosine_slope"][last["most_negative_head"]]
        grid = np.linspace(pts[:, 0].min(), pts[:, 0].max(), 2)
        ax.plot(grid, slope * grid, color=PALETTE[3], label=f"slope {slope:.2f}")
        ax.legend(frameon=False, fontsize=8)
    ax.set(
        xlabel="cosine of query and key token embeddings (centred per query)",
        ylabel="QK score (centred per query)",
        title=f"L{last['layer']}H{last['most_negative_head']}: score vs similarity",
    )
    ax = axes[1]
    heads = np.arange(main["n_heads"])
    ax.bar(heads - 0.2, last["qk_cosine_slope"], 0.4, color=PALETTE[0], label="QK-cosine slope")
    ax.bar(
        heads + 0.2,
        last["dla"]["estimate_when_wrong"],
        0.4,
        color=PALETTE[3],
        label="DLA to wrong layer-0 estimate",
    )
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(heads, [f"L{last['layer']}H{h}" for h in heads])
    ax.set(title="Last-layer heads")
    ax.legend(frameon=False, fontsize=8)
    save(fig, paths["similarity"], dpi)

    rows = [r for r in main["ablation"] if r["kind"] != "baseline"]
    fig, ax = plt.subplots(figsize=(6.4, 0.25 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["zero_delta_accuracy"] for r in rows], 0.4, color=PALETTE[3], label="zero")
    ax.barh(y + 0.2, [r["mean_delta_accuracy"] for r in rows], 0.4, color=PALETTE[0], label="mean")
    ax.set_yticks(y, [r["component"] for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set(xlabel=f"change in accuracy on positions >= {main['min_position']}", title="Ablations")
    ax.legend(frameon=False, fontsize=8)
    save(fig, paths["ablation"], dpi)

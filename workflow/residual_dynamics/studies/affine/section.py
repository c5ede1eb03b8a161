"""The affine-recurrence study's verdicts, figures, report section and config checks.

Kept apart from ``affine`` (which needs torch) so the figure and report rules run in the analysis
environment and the rules file can check the config while the workflow is parsed.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------
# verdicts, figures and the report section


def verdicts(result: dict) -> dict:
    """The paper's two claims, judged on one model's numbers (thresholds stated in the text)."""
    l0 = result["layer0"]
    lens0 = result["lens"][0] if 0 in result["lens"] else result["lens"]["0"]
    m = result["min_position"]
    copy_lens = max(
        float(np.nanmean(np.asarray(lens0["current"], dtype=float)[m:])),
        float(np.nanmean(np.asarray(lens0["previous"], dtype=float)[m:])),
    )
    offsets = np.asarray(l0["attention_by_offset"])
    # A copying head: attends mostly to a fixed recent offset and its OV circuit copies.
    copy_heads = [
        h
        for h in range(result["n_heads"])
        if offsets[h, :3].max() > 0.5 and l0["ov_copy_eigen"][h] > 0.5
    ]
    layer0 = bool(copy_heads) and copy_lens > 0.5
    last = result["last_layer"]
    neg = [
        h for h, s in enumerate(last["qk_cosine_slope"]) if s < 0 and last["qk_cosine_r"][h] < -0.2
    ]
    refine = [h for h in neg if last["dla"]["estimate_when_wrong"][h] < 0]
    return {
        "copying_heads_layer0": copy_heads,
        "layer0_lens_copy_share": copy_lens,
        "layer0_copying_holds": layer0,
        "negative_similarity_heads": neg,
        "refining_heads": refine,
        "negative_similarity_holds": bool(refine),
    }


def figures(results: dict[str, dict], paths: dict[str, list], dpi: int = 150) -> None:
    """The study's figures for every analysed model (the first is the main one).

    ``paths`` maps a figure key (accuracy, offsets, lens, similarity, ablation) to its output
    paths (PNG, SVG, ...)."""
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


def _heads(layer: int, heads) -> str:
    return ", ".join(f"L{layer}H{h}" for h in heads) or "none"


def _fmt(v, d: int = 2) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{d}f}"


def section(results: dict[str, dict], pngs: dict[str, str]) -> dict:
    """Title, intro, figures, tables and notes of the report section (HTML, escaped)."""
    import html

    from residual_dynamics.report.page import Figure, Table

    names = list(results)
    main_name = names[0]
    main = results[main_name]
    v = verdicts(main)
    m = main["min_position"]
    esc = html.escape
    bayes = main.get("bayes_accuracy")
    acc_line = (
        f"{esc(main_name)}: accuracy on positions &ge; {m} is {_fmt(main['accuracy_from_min'])}"
        + (
            f" (Bayes-optimal {_fmt(float(np.mean(bayes[m:])))}; positions 0&ndash;{m - 1}: "
            f"model {', '.join(_fmt(a) for a in main['accuracy'][:m])}, Bayes "
            f"{', '.join(_fmt(a) for a in bayes[:m])})"
            if bayes
            else ""
        )
        + "".join(f"; {esc(n)}: {_fmt(results[n]['accuracy_from_min'])}" for n in names[1:])
    )
    l0 = main["layer0"]
    offsets = np.asarray(l0["attention_by_offset"])
    head_lines = ", ".join(
        f"L0H{h}: offset {int(np.argmax(offsets[h]))} ({_fmt(offsets[h].max())}), "
        f"OV eigen score {_fmt(l0['ov_copy_eigen'][h])}"
        for h in range(main["n_heads"])
    )
    last = main["last_layer"]
    slope_lines = ", ".join(
        f"L{last['layer']}H{h}: slope {_fmt(s)} (r {_fmt(last['qk_cosine_r'][h])}), DLA to a wrong "
        f"layer-0 estimate {_fmt(last['dla']['estimate_when_wrong'][h])}"
        for h, s in enumerate(last["qk_cosine_slope"])
    )
    figs = [
        Figure(
            pngs["accuracy"],
            "Accuracy per position",
            "Top-1 accuracy of predicting x<sub>n</sub> on sequences with held-out (a, b), "
            "beside the Bayes-optimal predictor (chance until (a, b) is identified). "
            f"Measured: {acc_line}.",
            "accuracy",
        ),
        Figure(
            pngs["offsets"],
            "Layer 0: attention by relative offset",
            "Paper: layer 0 copies earlier values into the current position. Mean attention "
            "of each layer-0 head by offset from the query (BOS apart). Measured: "
            f"{head_lines}.",
            "offsets",
        ),
        Figure(
            pngs["lens"],
            "Logit lens after each block",
            "Share of sequences whose top-1 after a block (final LayerNorm, unembedding) is the "
            "answer x<sub>n</sub>, the current value x<sub>n-1</sub> or the one before. "
            f"Measured after block 0 on positions &ge; {m}: copy share "
            f"{_fmt(v['layer0_lens_copy_share'])}.",
            "lens",
        ),
        Figure(
            pngs["similarity"],
            "Last layer: negative-similarity heads",
            "Paper: the last layer's heads refine the estimate by attending to values "
            "dissimilar to the query's. Left: pre-softmax QK score against the cosine of the "
            "query and key token embeddings, centred within each query, for the head with the "
            "most negative slope. Right: slope per head, and its direct logit attribution to "
            "the layer-0 estimate where that estimate is wrong (final LayerNorm scale frozen, "
            f"relative to the mean value logit). Measured: {slope_lines}.",
            "similarity",
        ),
        Figure(
            pngs["ablation"],
            "Ablations",
            f"Change in accuracy on positions &ge; {m} when a head, a layer's attention or "
            "MLP is replaced by zero or by its mean per position.",
            "ablation",
        ),
    ]
    rows = [
        [
            r["component"],
            _fmt(r["zero_accuracy"], 3),
            _fmt(r["zero_delta_loss"], 3),
            _fmt(r["mean_accuracy"], 3),
            _fmt(r["mean_delta_loss"], 3),
        ]
        for r in main["ablation"]
    ]
    tables = [
        Table(
            f"Ablations of {main_name} (accuracy on positions >= {m}; change in loss)",
            ["component", "zero: accuracy", "zero: Δloss", "mean: accuracy", "mean: Δloss"],
            rows,
        )
    ]
    yes = {True: "holds", False: "does not hold"}
    notes = [
        f"Claim 1 (copying in layer 0) {yes[v['layer0_copying_holds']]} here: copying heads "
        f"(attention &gt; 0.5 at offset 0&ndash;2 and OV eigen score &gt; 0.5): "
        f"{_heads(0, v['copying_heads_layer0'])}; the lens after "
        f"block 0 names x<sub>n-1</sub> or x<sub>n-2</sub> in "
        f"{_fmt(v['layer0_lens_copy_share'])} of cases (threshold 0.5)"
        + "".join(
            f"; in {esc(n)}: {_fmt(verdicts(results[n])['layer0_lens_copy_share'])}"
            for n in names[1:]
        )
        + ". With tied embeddings even an untrained model's lens tends to name the current "
        "value (its residual stream is still mostly that token's embedding), so compare with the "
        "untrained twin.",
        f"Claim 2 (negative-similarity refinement in the last layer) "
        f"{yes[v['negative_similarity_holds']]} here: heads with a negative QK-cosine slope "
        f"(r &lt; -0.2): {_heads(last['layer'], v['negative_similarity_heads'])}; "
        f"of these, pushing down a wrong layer-0 estimate: "
        f"{_heads(last['layer'], v['refining_heads'])}.",
        "The task follows the related-analyses description (only the paper's abstract is "
        "available): the paper's exact data and thresholds are unknown, so the verdicts are "
        "ours, with the thresholds stated.",
    ]
    intro = (
        "Bhargav &amp; Gu (arXiv 2410.17438) train a three-layer GPT on affine recurrences "
        "x<sub>n+1</sub> = a x<sub>n</sub> + b and report an initial estimate formed by copying "
        "in layer 0, refined by negative-similarity heads in the last layer. Here the workflow "
        "trains such a model itself and measures both claims on sequences whose (a, b) were "
        "held out of training."
    )
    return {
        "title": "Affine recurrences in a small GPT",
        "anchor": "affine",
        "intro": intro,
        "figures": figs,
        "tables": tables,
        "notes": notes,
        "verdicts": v,
    }

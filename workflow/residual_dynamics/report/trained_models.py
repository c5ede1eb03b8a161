"""The report section on the models the workflow trained (no torch needed)."""

from __future__ import annotations

# --------------------------------------------------------------------------------------------
# the report section


def _metric_text(summary: dict) -> str:
    metrics = summary.get("metrics", {})
    if "validation_perplexity" in metrics:
        return f"validation perplexity {metrics['validation_perplexity']:.1f}"
    if "accuracy_from_3" in metrics:
        return f"held-out accuracy on positions >= 3: {metrics['accuracy_from_3']:.3f}"
    return "n/a"


def section(summaries: dict[str, dict], curves_png: str | None = None) -> dict:
    """Title, intro, tables, figures and notes of the report section on trained models."""
    import html

    from residual_dynamics.report.page import Figure, Table

    rows = []
    for name, s in summaries.items():
        st = s.get("settings", {})
        rows.append(
            [
                name,
                s.get("init", "?"),
                st.get("architecture", "?"),
                f"{st.get('n_layers')} x {st.get('d_model')} ({st.get('n_heads')} heads)",
                s.get("n_parameters", 0),
                st.get("data", "?"),
                st.get("steps", 0) if s.get("init") == "trained" else 0,
                _metric_text(s),
                round(s.get("seconds", float("nan")), 1),
                s.get("weights_sha256", "")[:12],
            ]
        )
    notes = []
    for name, s in summaries.items():
        twins = [
            n
            for n, t in summaries.items()
            if t.get("init") == "random"
            and s.get("init") == "trained"
            and t.get("settings") == s.get("settings")
        ]
        for twin in twins:
            notes.append(
                f"{html.escape(name)}: {_metric_text(s)}; its untrained twin "
                f"{html.escape(twin)}: {_metric_text(summaries[twin])}"
                + (
                    f" (vocabulary {summaries[twin].get('vocab_size')})"
                    if summaries[twin].get("vocab_size")
                    else ""
                )
                + "."
            )
    notes.append(
        "Training is seeded (weights from train.seed, batch s from (seed, s)); the same seed "
        "gives the same weights, which the weights' sha256 lets you check across runs."
    )
    figures = []
    if curves_png is not None:
        figures.append(
            Figure(
                curves_png,
                "Training curves",
                "Held-out accuracy (task models) and validation perplexity "
                "(language models) during training.",
                "curves",
            )
        )
    return {
        "title": "Models the workflow trained",
        "anchor": "trained-models",
        "intro": "Decoder models trained by the workflow itself (rule train_model), so the "
        "default run has pre-norm causal models with no download; each has an "
        "untrained twin (same architecture and tokenizer, seeded initialisation).",
        "figures": figures,
        "tables": [
            Table(
                "Trained models and their twins",
                [
                    "model",
                    "init",
                    "architecture",
                    "size",
                    "parameters",
                    "data",
                    "steps",
                    "quality",
                    "wall s",
                    "weights sha256",
                ],
                rows,
            )
        ],
        "notes": notes,
    }


def curves_figure(summaries: dict[str, dict], paths, dpi: int = 150) -> None:
    import matplotlib.pyplot as plt

    from residual_dynamics.report.style import PALETTE, save, set_style

    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4))
    for i, (name, s) in enumerate(summaries.items()):
        hist = s.get("history", [])
        steps = [h["step"] for h in hist]
        # task models on the left (held-out accuracy), text models on the right (perplexity)
        for ax, key in zip(axes, ("accuracy_from_3", "validation_perplexity"), strict=True):
            if hist and key in hist[0]:
                ax.plot(
                    steps,
                    [h[key] for h in hist],
                    marker="o",
                    color=PALETTE[i % len(PALETTE)],
                    label=name,
                )
    axes[0].set(
        xlabel="step",
        ylabel="held-out accuracy, positions >= 3",
        ylim=(0, 1.02),
        title="Task models",
    )
    axes[1].set(
        xlabel="step", ylabel="validation perplexity", yscale="log", title="Language models"
    )
    for ax in axes:
        if ax.lines:
            ax.legend(frameon=False, fontsize=8)
    save(fig, paths, dpi)

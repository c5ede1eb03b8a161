"""The embedding-space study's report section: a summary table per recording, the concept-similarity
table beside the reference's numbers, figures with captions stating the measured numbers and the
verdicts, and notes."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from residual_dynamics.report.page import Figure, Table, write_section_manifest
from residual_dynamics.report.style import fmt
from residual_dynamics.studies.embedding_space.reference import REFERENCE, REFERENCE_CONCEPT
from residual_dynamics.studies.embedding_space.summary import (
    RANK_CRITERION,
    RHO_CRITERION,
    rank_falls,
    rho_positive,
)


def _verdict(ok: bool | None) -> str:
    return {True: "<b>agrees</b>", False: "<b>does not agree</b>", None: "<b>undecided</b>"}[ok]


def section_manifest(
    path: Path | str,
    *,
    pairs: Sequence[tuple[str, str]],
    summaries: Sequence[dict],
    figures: Sequence[dict],
    concept: Sequence[dict] = (),
) -> None:
    """The module's report section: a table per recording, figures with captions, verdicts."""
    rows, fig_list, notes = [], [], []
    for (model, dataset), s, figs in zip(pairs, summaries, figures, strict=True):
        label = f"{html.escape(model)} on {html.escape(dataset)}"
        falls = rank_falls(s)
        rho_ok = rho_positive(s)
        loss, loss_u = s.get("loss"), s.get("loss_uniform_attention")
        rows.append(
            [
                model,
                dataset,
                s["n_rows"],
                fmt(s["median_rank_first"], 3, "g"),
                fmt(s["median_rank_middle"], 3, "g"),
                fmt(s["median_rank_last"], 3, "g"),
                fmt(s["top1_last"], 3, "g"),
                fmt(s["spearman_last_median"], 3, "g"),
                fmt(s["path_over_displacement"], 3, "g"),
                fmt(s["attn_mlp_ratio_median"], 3, "g"),
                fmt(loss, 3, "g"),
                fmt(loss_u, 3, "g"),
            ]
        )
        ranks = ", ".join(
            f"{name} {fmt(r, 3, 'g')}"
            for name, r in zip(s["sublayers"], s["median_rank"], strict=True)
        )
        fig_list.append(
            Figure(
                Path(figs["rank"]),
                f"True next-token rank, {label}",
                f"Reference ({REFERENCE}): the true next token's rank under the logit lens falls "
                f"with depth. Measured on {s['n_rows']} positions of {s['n_texts']} texts "
                f"(vocabulary {s['vocab_size']}): median rank {ranks}; top-1 at the last row "
                f"{fmt(s['top1_last'], 3, 'g')}; Spearman of median rank against depth "
                f"{fmt(s['rank_depth_spearman'], 3, 'g')}. "
                f"Verdict ({RANK_CRITERION}): {_verdict(falls)}.",
                f"rank-{model}-{dataset}",
            )
        )
        fig_list.append(
            Figure(
                Path(figs["proximity"]),
                f"Proximity to token embeddings, {label}",
                f"Reference: proximity of the residual vector to token vectors reflects "
                f"next-token probability; Spearman rho over the vocabulary between "
                f"cos(r_L, W_E[t]) and log p(t) clearly &gt; 0. Measured at the last row: median "
                f"rho {fmt(s['spearman_last_median'], 3, 'g')} (positive for "
                f"{fmt(100 * s['spearman_last_positive'], 3, 'g')} % of positions); "
                "mean cosine to the true next token's embedding "
                f"{fmt(s['cos_next_embed_first'], 3, 'g')} at the first row, "
                f"{fmt(s['cos_next_embed_last'], 3, 'g')} at the last; "
                + ("embeddings tied." if s["tied"] else "unembedding untied (W_U shown too).")
                + f" Verdict ({RHO_CRITERION}): {_verdict(rho_ok)}.",
                f"proximity-{model}-{dataset}",
            )
        )
        ratios = ", ".join(fmt(r, 3, "g") for r in s["attn_mlp_ratio_by_layer"])
        fig_list.append(
            Figure(
                Path(figs["walk"]),
                f"Encoding walk, {label}",
                f"Reference: attention mostly aggregates and MLPs filter; r_L = r_0 + the sum of "
                f"attention and MLP steps. Measured on {s['walk_rows']} stored rows: median path "
                f"length / displacement {fmt(s['path_over_displacement'], 3, 'g')} "
                "(1 = a straight walk); "
                f"median |attention Δ| / |MLP Δ| per layer {ratios}. The paper gives no number "
                "for this ratio: a description, not a test.",
                f"walk-{model}-{dataset}",
            )
        )
        notes.append(
            f"{label}: the true next token's median rank under the logit lens goes from "
            f"{fmt(s['median_rank_first'], 3, 'g')} ({html.escape(s['sublayers'][0])}) through "
            f"{fmt(s['median_rank_middle'], 3, 'g')} (middle) to "
            f"{fmt(s['median_rank_last'], 3, 'g')} ({html.escape(s['sublayers'][-1])}) "
            f"of {s['vocab_size']} tokens; top-1 {fmt(s['top1_first'], 3, 'g')} at the first row, "
            f"{fmt(s['top1_last'], 3, 'g')} at the last. "
            + (
                "It falls with depth, as the reference expects."
                if falls
                else "It does not fall with depth here (the reference expects it to)."
            )
        )
        if loss is not None and loss_u is not None:
            notes.append(
                f"{label}: with a uniform causal attention pattern the next-token loss goes "
                f"from {fmt(loss, 4, 'g')} to {fmt(loss_u, 4, 'g')} nats/token "
                f"(Δ = {fmt(loss_u - loss, 3, 'g')}): how much the learnt attention pattern, "
                "rather than plain averaging, matters."
            )
    tables = [
        Table(
            "Movement through embedding space: summary per model and dataset",
            [
                "model",
                "dataset",
                "positions",
                "median rank, first row",
                "median rank, middle",
                "median rank, last row",
                "top-1, last row",
                "Spearman rho (cos W_E, log p), last row",
                "path / displacement",
                "|attn Δ| / |MLP Δ|",
                "loss",
                "loss, uniform attention",
            ],
            rows,
        )
    ]
    if concept:
        tables.append(
            Table(
                "Concept similarity on HellaSwag (accuracy; chance 0.25)",
                [
                    "model",
                    "examples",
                    "mean",
                    "position-weighted mean",
                    "last token",
                    "log-likelihood per char (baseline)",
                    "log-likelihood sum",
                ],
                [
                    [
                        c["model"],
                        c["n_examples"],
                        fmt(c["accuracy"]["mean"], 3, "g"),
                        fmt(c["accuracy"]["position_weighted"], 3, "g"),
                        fmt(c["accuracy"]["last"], 3, "g"),
                        fmt(c["baseline"]["ll_per_char"], 3, "g"),
                        fmt(c["baseline"]["ll_sum"], 3, "g"),
                    ]
                    for c in concept
                ]
                + [
                    [
                        f"reference: {REFERENCE_CONCEPT['model']} (0-shot)",
                        "",
                        fmt(REFERENCE_CONCEPT["concept_similarity"], 3, "g"),
                        "",
                        "",
                        fmt(REFERENCE_CONCEPT["log_likelihood"], 3, "g"),
                        "",
                    ]
                ],
            )
        )
    intro = (
        f"The residual vector as a walk through embedding space ({REFERENCE}). The logit lens "
        "applies the model's own final norm and unembedding to every sublayer's residual vector "
        "(at the row after the last block it is the model's output); proximity is the cosine to "
        "every token embedding. Positions: every position with a known next token (after a leading "
        "BOS), up to a per-text cap drawn with a seed. The walk is read from the activation store "
        "(the recorded positions)."
    )
    write_section_manifest(
        path,
        title="Movement through embedding space",
        anchor="embedding-space",
        intro=intro,
        figures=fig_list,
        tables=tables,
        notes=notes,
    )

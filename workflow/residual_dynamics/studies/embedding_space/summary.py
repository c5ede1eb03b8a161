"""The numbers the embedding-space section states, from the lens and walk results, and the
verdict rules (with their criteria as the captions print them) that judge them against the
reference's claims."""

from __future__ import annotations

import numpy as np


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def summarise(lens, walk) -> dict:
    """The numbers the report states, from the lens and walk results (xarray Datasets)."""
    sublayers = (
        list(lens["sublayer"].values) if "sublayer" in lens.coords else lens.attrs["sublayers"]
    )
    rank = lens["true_rank"].values
    median_rank = np.median(rank, axis=0)
    last = len(sublayers) - 1
    # Computed on a seeded subset of positions (NaN elsewhere).
    rho = _finite(lens["spearman_embed_logprob"].values[:, last])
    ratio = walk["attn_delta_norm"].values / walk["mlp_delta_norm"].values
    depth = np.arange(len(sublayers))
    from scipy.stats import spearmanr

    trend = spearmanr(depth, median_rank).statistic if len(sublayers) > 2 else float("nan")
    out = {
        "n_rows": int(rank.shape[0]),
        "n_texts": int(lens.attrs.get("n_texts", 0)),
        "sublayers": sublayers,
        "median_rank": median_rank.tolist(),
        "median_rank_first": float(median_rank[0]),
        "median_rank_middle": float(median_rank[len(sublayers) // 2]),
        "median_rank_last": float(median_rank[last]),
        "top1_last": float(np.mean(rank[:, last] == 1)),
        "top1_first": float(np.mean(rank[:, 0] == 1)),
        "rank_depth_spearman": float(trend),
        "spearman_last_median": float(np.median(rho)) if rho.size else float("nan"),
        "spearman_last_positive": float(np.mean(rho > 0)) if rho.size else float("nan"),
        "spearman_positions": int(rho.size),
        "cos_next_embed_first": float(np.mean(lens["cos_next_embed"].values[:, 0])),
        "cos_next_embed_last": float(np.mean(lens["cos_next_embed"].values[:, last])),
        "median_rank_embed_last": float(np.median(lens["rank_next_embed"].values[:, last])),
        "vocab_size": int(lens.attrs.get("vocab_size", 0)),
        "tied": bool(lens.attrs.get("tied_embeddings", True)),
        "walk_rows": int(walk["path_length"].shape[0]),
        "path_over_displacement": float(
            np.median(walk["path_length"].values / walk["displacement"].values)
        ),
        "attn_mlp_ratio_by_layer": np.nanmedian(ratio, axis=0).tolist(),
        "attn_mlp_ratio_median": float(np.nanmedian(ratio)),
        "loss": lens.attrs.get("loss"),
        "loss_uniform_attention": lens.attrs.get("loss_uniform_attention"),
    }
    return out


# The verdict rules' criteria as the captions print them (HTML).
RANK_CRITERION = (
    "the median rank at the last row at most half that at the first, and falling overall: "
    "Spearman of median rank against depth &lt; 0"
)
RHO_CRITERION = "median rho &gt; 0.1 and positive at more than 75 % of positions"


def rank_falls(summary: dict) -> bool:
    """The logit-lens claim's verdict: does the true next token's rank fall with depth?"""
    return bool(
        summary["median_rank_last"] <= 0.5 * summary["median_rank_first"]
        and summary["rank_depth_spearman"] < 0
    )


def rho_positive(summary: dict) -> bool:
    """The proximity claim's verdict: does cosine to W_E track log-probability at the last row?"""
    return bool(summary["spearman_last_median"] > 0.1 and summary["spearman_last_positive"] > 0.75)

"""The affine study's attention measurements: each layer's pre-softmax causal scores recomputed
from the block's own Q/K weights (``attention_scores``), the mean attention by relative offset
(layer-0 copying), and the negative-similarity fit of the last layer: the QK score regressed on
the cosine of the query's and key's token embeddings within each query (``similarity_masks``,
``within_query_slope``, ``similarity_regression``). Conventions as in ``analysis``."""

from __future__ import annotations

import math

import numpy as np
import torch

from residual_dynamics.studies.affine.view import GPT2View, capture_inputs


@torch.no_grad()
def attention_scores(view: GPT2View, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Pre-softmax causal attention scores (n, heads, T, T) of a layer; -inf above the diagonal.

    Recomputed from the block's LayerNorm input with the head's own Q/K weights (and GPT-2's
    1/sqrt(d_head) scale), so the pattern and the scores come from one place (softmax of these
    equals the model's attention weights; tested).
    """
    block = view.blocks[layer]
    with capture_inputs({"x": block.attn}) as seen:
        view.model(input_ids=ids)
    x = seen["x"]  # the output of ln_1, the attention's input
    d = view.model.config.n_embd
    q, k, _ = block.attn.c_attn(x).split(d, dim=2)
    n, t, _ = q.shape
    q = q.view(n, t, view.n_heads, view.d_head).transpose(1, 2)
    k = k.view(n, t, view.n_heads, view.d_head).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) * block.attn.scaling
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf"))


def mean_attention_by_offset(pattern: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean attention by relative offset: (heads, T-1) for offsets 0..T-2 among value tokens,
    and (heads,) the mean attention to BOS.

    Averaged over queries t >= 1 (value positions) for which the key t - offset is a value
    (>= 1); position 0 is BOS and is reported separately.
    """
    pattern = torch.as_tensor(pattern, dtype=torch.float64)
    n, h, t, _ = pattern.shape
    by_offset = np.zeros((h, t - 1))
    for offset in range(t - 1):
        queries = torch.arange(1 + offset, t)
        by_offset[:, offset] = pattern[:, :, queries, queries - offset].mean(dim=(0, 2)).numpy()
    to_bos = pattern[:, :, 1:, 0].mean(dim=(0, 2)).numpy()
    return by_offset, to_bos


def masked_centred(values, mask) -> np.ndarray:
    """``values`` minus the mean of each row's masked entries (NaN outside the mask; a row with
    no masked entry stays NaN, without numpy's empty-slice warning)."""
    inside = np.where(mask, values, 0.0)
    count = mask.sum(axis=-1, keepdims=True)
    mean = inside.sum(axis=-1, keepdims=True) / np.maximum(count, 1)
    return np.where(mask, values - mean, np.nan)


def within_query_slope(scores, cosines, mask) -> tuple[float, float]:
    """OLS slope and correlation of score on cosine after removing each query's mean (softmax
    ignores a per-query shift). Arrays (queries, keys); ``mask`` marks the pairs that count."""
    s = masked_centred(scores, mask)
    c = masked_centred(cosines, mask)
    keep = mask & np.isfinite(s) & np.isfinite(c)
    x, y = c[keep], s[keep]
    var = float((x * x).sum())
    if var == 0:
        return float("nan"), float("nan")
    slope = float((x * y).sum() / var)
    r = float((x * y).sum() / math.sqrt(var * float((y * y).sum()) + 1e-300))
    return slope, r


def similarity_masks(ids: torch.Tensor, min_position: int = 3) -> dict[str, np.ndarray]:
    """Which (query, key) pairs each QK-cosine fit uses, (n, T, T) per sequence.

    Queries predict x_n for n >= min_position; keys are value tokens (BOS excluded) up to the
    query. 'all': every such key, the query's own included; 'other_tokens' (the fit the verdict
    uses): without the query's own key and without keys holding the query's token, whose
    cosine is 1 and which would otherwise dominate the fit.
    """
    n, t = ids.shape
    base = np.zeros((t, t), dtype=bool)
    for q in range(min_position, t):
        base[q, 1 : q + 1] = True
    values = ids.numpy()
    same = values[:, :, None] == values[:, None, :]  # includes the query's own key
    every = np.broadcast_to(base, (n, t, t))
    return {"all": every.copy(), "other_tokens": every & ~same}


@torch.no_grad()
def similarity_regression(view: GPT2View, ids: torch.Tensor, layer: int, min_position: int = 3):
    """Per head of ``layer``: slope and r of the pre-softmax QK score on the cosine between the
    query's and the key's token embeddings, within each query, over queries predicting x_n for
    n >= min_position and keys on other value tokens (``similarity_masks``: 'other_tokens').
    Returns (slopes, rs, head with the most negative slope, sample (cos, score) of that head for
    plotting, and the same slopes and rs over every key ('all', the query's own and same-token
    keys included) for comparison)."""
    scores = attention_scores(view, ids, layer).numpy()  # (n, H, T, T)
    emb = view.model.transformer.wte.weight[ids]  # (n, T, d)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    cos = (emb @ emb.transpose(1, 2)).numpy()  # (n, T, T)
    n, h, t, _ = scores.shape
    masks = similarity_masks(ids, min_position)
    rows = masks["all"][0].any(axis=1)  # the query positions
    fits = {}
    for name, mask in masks.items():
        m = mask[:, rows].reshape(-1, t)
        c = cos[:, rows].reshape(-1, t)
        fit = np.zeros((2, h))
        for head in range(h):
            s = scores[:, head][:, rows].reshape(-1, t)
            fit[:, head] = within_query_slope(s, c, m)
        fits[name] = fit
    slopes, rs = fits["other_tokens"]
    best = int(np.argmin(np.where(np.isfinite(slopes), slopes, np.inf)))
    m = masks["other_tokens"][:, rows]
    s = scores[:, best][:, rows]
    c = cos[:, rows]
    s, c = masked_centred(s, m), masked_centred(c, m)
    return slopes, rs, best, np.stack([c[m], s[m]], axis=1), fits["all"]

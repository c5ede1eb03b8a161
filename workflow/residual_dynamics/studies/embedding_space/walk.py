"""The encoding walk of the embedding-space study (Singh, arXiv 2308.10874): each row's residual
vector followed from the embedding to the last block, read from the activation store. No torch
here; the model side (logit lens, proximity, uniform attention) is ``lens``, the HellaSwag test
``concepts``.

With the residual stream recorded at attn0, mlp0, attn1, ..., mlp{L-1}, final (the store's
interleaved rows), layer l's attention step is h[mlp_l] - h[attn_l] and its MLP step
h[attn_{l+1}] - h[mlp_l] (h[final] - h[mlp_{L-1}] for the last layer), so that
r_L = r_0 + sum over layers of (attention step + MLP step). Path length is the sum of the steps'
norms, displacement |r_L - r_0|. Without a ``final`` row the walk ends at mlp{L-1} and the last MLP
step is missing (NaN), in both path and displacement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def layer_points(sublayers: Sequence[str]) -> tuple[list[int], list[int], int | None]:
    """Indices of attn{l} and mlp{l} for l = 0..L-1, and of 'final' (None if not recorded)."""
    index = {name: i for i, name in enumerate(sublayers)}
    n_layers = sum(1 for name in sublayers if re.fullmatch(r"attn\d+", name))
    try:
        attn = [index[f"attn{layer}"] for layer in range(n_layers)]
        mlp = [index[f"mlp{layer}"] for layer in range(n_layers)]
    except KeyError as missing:
        raise ValueError(
            f"sublayers {list(sublayers)[:6]}... have no {missing}: the walk needs the interleaved "
            "attn/mlp rows of a sequential pre-norm decoder (parallel blocks have no mlp rows)"
        ) from None
    return attn, mlp, index.get("final")


def sublayer_deltas(resid: np.ndarray, sublayers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Attention and MLP steps (rows, layers, d); the last MLP step is NaN without 'final'."""
    attn, mlp, final = layer_points(sublayers)
    resid = np.asarray(resid, dtype=np.float64)
    attn_delta = resid[:, mlp] - resid[:, attn]
    after_mlp = [*attn[1:], final]
    mlp_delta = np.full_like(attn_delta, np.nan)
    for layer, nxt in enumerate(after_mlp):
        if nxt is not None:
            mlp_delta[:, layer] = resid[:, nxt] - resid[:, mlp[layer]]
    return attn_delta, mlp_delta


def encoding_walk(resid: np.ndarray, sublayers: Sequence[str]) -> dict[str, np.ndarray]:
    """Per row: the steps' norms per layer, path length and displacement (see module docstring)."""
    attn, mlp, final = layer_points(sublayers)
    attn_delta, mlp_delta = sublayer_deltas(resid, sublayers)
    attn_norm = np.linalg.norm(attn_delta, axis=-1)
    mlp_norm = np.linalg.norm(mlp_delta, axis=-1)
    end = final if final is not None else mlp[-1]
    resid = np.asarray(resid, dtype=np.float64)
    return {
        "attn_delta_norm": attn_norm,
        "mlp_delta_norm": mlp_norm,
        "path_length": attn_norm.sum(-1) + np.nansum(mlp_norm, axis=-1),
        "displacement": np.linalg.norm(resid[:, end] - resid[:, attn[0]], axis=-1),
    }


def store_walk(store_path: Path | str, block_rows: int | None = None) -> tuple[dict, dict]:
    """The encoding walk of every row of an activation store, read block by block."""
    from residual_dynamics.io.store import open_store

    group = open_store(store_path)
    resid = group["resid"]
    sublayers = list(group.attrs["sublayers"])
    n_rows = resid.shape[0]
    step = block_rows or max(resid.chunks[0], 1)
    parts: dict[str, list] = {}
    norm_sum = np.zeros(len(sublayers))
    for start in range(0, n_rows, step):
        block = np.asarray(resid[start : start + step], dtype=np.float64)
        for name, value in encoding_walk(block, sublayers).items():
            parts.setdefault(name, []).append(value)
        norm_sum += np.linalg.norm(block, axis=-1).sum(0)
    attn, _, final = layer_points(sublayers)
    arrays = {
        name: (
            ("sample", "layer") if np.ndim(values[0]) == 2 else ("sample",),
            np.concatenate(values),
        )
        for name, values in parts.items()
    }
    arrays["resid_norm_mean"] = (("sublayer",), norm_sum / max(n_rows, 1))
    arrays["token_position"] = (("sample",), np.asarray(group["token_position"][:]))
    attrs = {
        "model": group.attrs.get("model"),
        "dataset": group.attrs.get("dataset"),
        "positions": group.attrs.get("positions"),
        "n_samples": int(n_rows),
        "sublayers": sublayers,
        "n_layers": len(attn),
        "has_final": final is not None,
    }
    return arrays, attrs

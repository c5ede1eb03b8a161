"""Continuity across sublayers (the paper's Figure 1C-1F), in one pass over the store.

Each Dask task reads one block of rows (all analysed sublayers) straight from Zarr and returns
small partial sums; the driver adds them up. Memory is bounded by one block, whatever N is.

- Per unit, Pearson r between sublayers: from shifted first and second moments over samples. The
  cross moments are kept for every pair of sublayers (l, m), so both readings of the paper's 1D
  (consecutive transitions, or all pairs l < m) come from the same pass.
- Per sample and transition: cosine similarity and velocity |h_{t+1} - h_t| of the whole vector,
  kept per sample so the report can show the spread.
"""

from __future__ import annotations

import logging
import warnings

import dask
import numpy as np
import xarray as xr

from residual_dynamics.analysis.bootstrap import (
    correlation_from_moments,
    text_weights,
    weighted_curves,
)
from residual_dynamics.analysis.unit_means import analysed_sublayers
from residual_dynamics.io.store import open_store

log = logging.getLogger(__name__)


def transition_kind(names: list[str]) -> list[str]:
    """'within' for attn_l -> mlp_l, 'cross' for mlp_l -> attn_{l+1} (and anything -> final)."""
    kinds = []
    for a, b in zip(names[:-1], names[1:], strict=True):
        same_layer = a.startswith("attn") and b.startswith("mlp") and a[4:] == b[3:]
        kinds.append("within" if same_layer else "cross")
    return kinds


def row_blocks(
    n_rows: int, chunk_rows: int, target_rows: int | None = None
) -> list[tuple[int, int]]:
    """Row ranges that follow the store's chunks (several chunks per block when they are small)."""
    step = chunk_rows * max(1, (target_rows or chunk_rows) // chunk_rows)
    return [(s, min(n_rows, s + step)) for s in range(0, n_rows, step)]


def unit_blocks(
    n_units: int, rows: int, sublayers: int, target_mib: float
) -> list[tuple[int, int]]:
    """Unit ranges so that one tile's largest array, the (S, S, units) cross moments or the
    (rows, S, units) block, stays near ``target_mib``: tasks fit a worker's memory whatever d is."""
    per_unit = 8 * sublayers * max(rows, sublayers)
    width = max(1, min(n_units, int(target_mib * 2**20 // per_unit)))
    return [(u, min(n_units, u + width)) for u in range(0, n_units, width)]


def task_array(a: np.ndarray) -> np.ndarray:
    """A driver array as a task uses it: a fresh, aligned, C-ordered float64 copy.

    Arrays passed into the graph (``dask.delayed(array)``) reach a distributed worker deserialized
    in place inside a message buffer, at an offset that changes from run to run and is often not a
    multiple of 8 bytes. NumPy's matmul then copies such an operand into an aligned C-ordered
    buffer, while an aligned Fortran-ordered one (e.g. eigenvectors from ``eigh``) goes to BLAS
    as it is: another kernel, another summation order, results 1 ulp apart between runs. Copying
    here makes every task see the same layout whatever the transport did.
    """
    return np.array(a, dtype=np.float64, order="C", copy=True)


def _tile(
    path: str,
    rows: tuple[int, int],
    units: tuple[int, int],
    keep,
    shift: np.ndarray,
    weights: np.ndarray | None = None,
):
    """Moments and per-sample partial sums of one tile (a block of rows x a block of units); with
    bootstrap ``weights`` (B, rows of the tile), also each replicate's weighted moments."""
    resid = open_store(path)["resid"]
    shift = task_array(shift[:, units[0] : units[1]])
    x = np.asarray(resid[rows[0] : rows[1], keep, units[0] : units[1]], dtype=np.float64)
    finite = np.isfinite(x).all(
        axis=1
    )  # (n, du): a row counts for a unit when all its sublayers do
    y = np.where(
        finite[:, None, :], x - shift, 0.0
    )  # shifted: covariances unchanged, no cancellation
    s1 = y.sum(axis=0)
    s2 = np.einsum("nsd,ntd->std", y, y, optimize=True)
    count = finite.sum(axis=0)
    moments = (s1, s2, count)
    if weights is not None:
        w = task_array(weights)
        n, s, du = y.shape
        flat = y.reshape(n, s * du)
        moments += (
            w @ finite.astype(np.float64),
            (w @ flat).reshape(-1, s, du),
            (w @ (flat * flat)).reshape(-1, s, du),
            (w @ (y[:, :-1, :] * y[:, 1:, :]).reshape(n, (s - 1) * du)).reshape(-1, s - 1, du),
        )
    a, b = x[:, :-1, :], x[:, 1:, :]
    # Whole-vector cosine and velocity are sums over units: each tile adds its share.
    per_sample = (
        np.einsum("nsd,nsd->ns", a, b),
        np.einsum("nsd,nsd->ns", x, x),
        np.einsum("nsd,nsd->ns", b - a, b - a),
    )
    return moments, per_sample


def _add(first, second=None):
    if second is None:
        return first
    return tuple(a + b for a, b in zip(first, second, strict=True))


def tree_sum(parts: list):
    """Add delayed partial results pairwise, so the scheduler holds only a few at a time."""
    add = dask.delayed(_add, pure=True)
    while len(parts) > 1:
        parts = [add(*parts[i : i + 2]) for i in range(0, len(parts), 2)]
    return parts[0]


def transition_statistics(
    store_path,
    sublayers: str = "paper",
    block_rows: int | None = None,
    tile_mib: float = 64,
    bootstrap: int = 0,
    seed: int = 0,
) -> xr.Dataset:
    """Per-unit correlations and per-sample cosine and velocity; runs on the current Dask
    scheduler (a distributed client if one is active). Work is split into tiles of rows x units
    so that no task holds more than about ``tile_mib`` in its largest array.

    With ``bootstrap`` replicates (analysis.bootstrap.text_weights(n, bootstrap, seed): the same
    plan for every recording of the same texts), also each replicate's curves over transitions:
    ``r_boot`` (the mean over units of the per-unit correlations, from weighted moments in the
    same pass), ``cosine_boot`` and ``velocity_boot`` (weighted means of the per-sample values)."""
    group = open_store(store_path)
    resid = group["resid"]
    keep_list = analysed_sublayers(group, sublayers)
    # A slice reads only the kept chunks; the analysed sublayers are always contiguous.
    keep = slice(keep_list[0], keep_list[-1] + 1)
    names = [group.attrs["sublayers"][i] for i in keep_list]
    s = len(names)
    n_rows, _, d = resid.shape
    first = np.asarray(resid[0:1, keep, :], dtype=np.float64)[0]
    shift = np.where(np.isfinite(first), first, 0.0)
    rows = row_blocks(n_rows, resid.chunks[0], block_rows)
    units = unit_blocks(d, rows[0][1] - rows[0][0], s, tile_mib)
    tile = dask.delayed(_tile, pure=True, nout=2)
    shift_once = dask.delayed(shift)  # one copy in the graph, not one per tile
    weights = text_weights(n_rows, bootstrap, seed) if bootstrap else None
    row_weights = {
        r: None if weights is None else dask.delayed(weights[:, r[0] : r[1]]) for r in rows
    }
    moments, sample_parts = {}, {}
    for u in units:
        for r in rows:
            m, p = tile(str(store_path), r, u, keep, shift_once, row_weights[r])
            moments.setdefault(u, []).append(m)
            sample_parts.setdefault(r, []).append(p)
    totals, per_sample = dask.compute(
        [tree_sum(parts) for parts in moments.values()],
        [tree_sum(parts) for parts in sample_parts.values()],
    )
    s1 = np.concatenate([t[0] for t in totals], axis=-1)
    s2 = np.concatenate([t[1] for t in totals], axis=-1)
    n = np.concatenate([t[2] for t in totals], axis=-1).astype(np.float64)
    dot = np.concatenate([p[0] for p in per_sample])
    sq = np.concatenate([p[1] for p in per_sample])
    dsq = np.concatenate([p[2] for p in per_sample])
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = dot / np.sqrt(sq[:, :-1] * sq[:, 1:])
        mean = s1 / n
        cov = s2 / n - mean[:, None, :] * mean[None, :, :]
    velocity = np.sqrt(dsq)
    if (n < n_rows).any():
        log.warning(
            "non-finite values: %d units lost rows (at most %d of %d); they are left out per unit",
            int((n < n_rows).sum()),
            int(n_rows - n.min()),
            n_rows,
        )
    var = np.diagonal(cov, axis1=0, axis2=1).T  # (S, d)
    constant = (var <= 1e-12 * np.maximum(1.0, np.abs(mean + shift) ** 2)) | (n[None, :] < 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        r_pairs = cov / np.sqrt(var[:, None, :] * var[None, :, :])
    r_pairs[constant[:, None, :] | constant[None, :, :]] = np.nan
    if constant.any():
        log.warning(
            "%d (sublayer, unit) pairs are constant over the samples (%d units): their "
            "correlations are undefined, NaN, flagged in 'constant_unit'",
            int(constant.sum()),
            int(constant.any(axis=0).sum()),
        )
    r_pairs = np.clip(r_pairs, -1.0, 1.0)
    r_next = r_pairs[np.arange(s - 1), np.arange(1, s)]  # (S-1, d)
    boot = {}
    if weights is not None:
        r_boot = correlation_from_moments(
            *(np.concatenate([t[i] for t in totals], axis=-1) for i in range(3, 7))
        )  # (B, S-1, d)
        r_boot[:, constant[:-1] | constant[1:]] = np.nan
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            boot = {
                "r_boot": (("replicate", "transition"), np.nanmean(r_boot, axis=-1)),
                "cosine_boot": (("replicate", "transition"), weighted_curves(cosine, weights)),
                "velocity_boot": (
                    ("replicate", "transition"),
                    weighted_curves(velocity, weights),
                ),
            }
    labels = [f"{a}->{b}" for a, b in zip(names[:-1], names[1:], strict=True)]
    return xr.Dataset(
        {
            "r": (("transition", "unit"), r_next.astype(np.float32)),
            "r_pairs": (("sublayer", "sublayer_to", "unit"), r_pairs.astype(np.float32)),
            "cosine": (("sample", "transition"), cosine.astype(np.float32)),
            "velocity": (("sample", "transition"), velocity.astype(np.float32)),
            "constant_unit": (("sublayer", "unit"), constant),
            "n_finite": (("unit",), n.astype(np.int64)),
            **boot,
        },
        coords={
            "transition": np.arange(s - 1),
            "transition_label": ("transition", labels),
            "transition_kind": ("transition", transition_kind(names)),
            "sublayer": names,
            "sublayer_to": names,
            "unit": np.arange(d),
        },
        attrs={
            "model": group.attrs.get("model"),
            "dataset": group.attrs.get("dataset"),
            "n_samples": int(n_rows),
            "n_finite_samples": int(n.min()),
            "n_constant": int(constant.sum()),
            "norm": group.attrs.get("norm"),
            "bootstrap": int(bootstrap),
            "bootstrap_seed": int(seed),
        },
    )


def correlation_histograms(r_pairs: np.ndarray, reading: str, bins: int = 50) -> np.ndarray:
    """Per-unit histograms over [0, 1] of correlations (Figure 1D): 'transitions' uses the S-1
    consecutive pairs (the Results' reading), 'all_pairs' every l < m (the Methods')."""
    s = r_pairs.shape[0]
    if reading == "transitions":
        values = r_pairs[np.arange(s - 1), np.arange(1, s)]
    else:
        upper = np.triu_indices(s, k=1)
        values = r_pairs[upper[0], upper[1]]
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = np.zeros((values.shape[1], bins), dtype=np.int64)
    for unit in range(values.shape[1]):
        column = values[:, unit]
        out[unit] = np.histogram(column[np.isfinite(column)], bins=edges)[0]
    return out

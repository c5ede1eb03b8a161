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

import contextlib
import logging
from collections.abc import Iterator

import dask
import numpy as np
import xarray as xr

from .stats import analysed_sublayers
from .store import open_store

log = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(
    threads: int = 1, address: str | None = None, memory_limit: str = "auto"
) -> Iterator[object]:
    """A Dask client: an existing scheduler when ``address`` is given, else a LocalCluster sized
    from the rule's threads (one worker process, so its memory limit is enforced by the nanny)."""
    from dask.distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=max(1, threads),
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":0",  # a free port: parallel jobs must not clash on 8787
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


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


def _block_statistics(path: str, start: int, stop: int, keep: list[int], shift: np.ndarray):
    resid = open_store(path)["resid"]
    x = np.asarray(resid[start:stop], dtype=np.float64)[:, keep, :]
    finite = np.isfinite(x).all(axis=(1, 2))
    y = x[finite] - shift  # shifted: covariances are unchanged and cancellation is avoided
    s1 = y.sum(axis=0)
    s2 = np.einsum("nsd,ntd->std", y, y, optimize=True)
    a, b = x[:, :-1, :], x[:, 1:, :]
    dot = np.einsum("nsd,nsd->ns", a, b)
    norms = np.linalg.norm(x, axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = dot / (norms[:, :-1] * norms[:, 1:])
    velocity = np.linalg.norm(b - a, axis=2)
    return (s1, s2, int(finite.sum())), (cosine, velocity)


def _add_moments(first, second=None):
    if second is None:
        return first
    return tuple(a + b for a, b in zip(first, second, strict=True))


def transition_statistics(
    store_path, sublayers: str = "paper", block_rows: int | None = None
) -> xr.Dataset:
    """Per-unit correlations and per-sample cosine and velocity; runs on the current Dask
    scheduler (a distributed client if one is active)."""
    group = open_store(store_path)
    resid = group["resid"]
    keep = analysed_sublayers(group, sublayers)
    names = [group.attrs["sublayers"][i] for i in keep]
    n_rows, _, d = resid.shape
    shift = np.asarray(resid[0:1], dtype=np.float64)[0, keep, :]
    if not np.isfinite(shift).all():
        shift = np.zeros_like(shift)
    blocks = row_blocks(n_rows, resid.chunks[0], block_rows)
    task = dask.delayed(_block_statistics, pure=True, nout=2)
    moments, per_sample = zip(
        *[task(str(store_path), a, b, keep, shift) for a, b in blocks], strict=True
    )
    # Moments are (S, S, d) per block: add them pairwise in a tree so the driver never holds
    # more than a few at once, however many blocks there are.
    moments = list(moments)
    add = dask.delayed(_add_moments, pure=True)
    while len(moments) > 1:
        moments = [add(*moments[i : i + 2]) for i in range(0, len(moments), 2)]
    (s1, s2, n), per_sample = dask.compute(moments[0], list(per_sample))
    cosine = np.concatenate([c for c, _ in per_sample])
    velocity = np.concatenate([v for _, v in per_sample])
    if n < n_rows:
        log.warning("%d of %d rows hold non-finite values and were left out", n_rows - n, n_rows)
    mean = s1 / n
    cov = s2 / n - mean[:, None, :] * mean[None, :, :]
    var = np.diagonal(cov, axis1=0, axis2=1).T  # (S, d)
    constant = var <= 1e-12 * np.maximum(1.0, np.abs(mean + shift) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        r_pairs = cov / np.sqrt(var[:, None, :] * var[None, :, :])
    r_pairs[constant[:, None, :] | constant[None, :, :]] = np.nan
    r_pairs = np.clip(r_pairs, -1.0, 1.0)
    s = len(names)
    r_next = r_pairs[np.arange(s - 1), np.arange(1, s)]  # (S-1, d)
    kinds = transition_kind(names)
    labels = [f"{a}->{b}" for a, b in zip(names[:-1], names[1:], strict=True)]
    return xr.Dataset(
        {
            "r": (("transition", "unit"), r_next.astype(np.float32)),
            "r_pairs": (("sublayer", "sublayer_to", "unit"), r_pairs.astype(np.float32)),
            "cosine": (("sample", "transition"), cosine.astype(np.float32)),
            "velocity": (("sample", "transition"), velocity.astype(np.float32)),
            "constant_unit": (("sublayer", "unit"), constant),
        },
        coords={
            "transition": np.arange(s - 1),
            "transition_label": ("transition", labels),
            "transition_kind": ("transition", kinds),
            "sublayer": names,
            "sublayer_to": names,
            "unit": np.arange(d),
        },
        attrs={
            "model": group.attrs.get("model"),
            "dataset": group.attrs.get("dataset"),
            "n_samples": int(n_rows),
            "n_finite_samples": int(n),
            "norm": group.attrs.get("norm"),
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

"""PCA of the residual stream over all samples and sublayers (the paper's Figure 4A-4C).

The paper stacks the (N, S, D) stream into (N S, D) rows, centres them on the global mean and takes
the SVD. Here the same components come from the eigendecomposition of the D x D covariance, which
is accumulated out of core: each Dask task reads one block of samples (every analysed sublayer)
from Zarr and returns its first and second moments; the driver adds them and decomposes. Memory is
one block plus a few D x D matrices (128 MiB each at D = 4096), whatever N is.

A second pass projects every row onto the leading components and measures, per sublayer, how much
of that sublayer's own variance (about its own mean) the first c global components capture: the
curves of Figure 4B, whose steps suggest the paper measured them in the global basis. The
alternative reading, a separate PCA per sublayer, is computed when asked (``per_sublayer=True``),
in groups of sublayers sized so that their covariances fit ``group_mib``.
"""

from __future__ import annotations

import logging

import dask
import numpy as np
import xarray as xr

from residual_dynamics.analysis.transitions import row_blocks, task_array, tree_sum
from residual_dynamics.analysis.unit_means import analysed_sublayers
from residual_dynamics.io.store import open_store

log = logging.getLogger(__name__)


def _block(path: str, rows: tuple[int, int], keep) -> np.ndarray:
    """One block of samples as stored (float32 by default): the only copy of the block a task
    holds; float64 work is done one sublayer at a time."""
    return np.asarray(open_store(path)["resid"][rows[0] : rows[1], keep, :])


def _finite_samples(x: np.ndarray) -> np.ndarray:
    """Samples whose every analysed value is finite: a sample's trajectory is kept or left whole."""
    return np.isfinite(x).all(axis=(1, 2))


def _moments(path: str, rows: tuple[int, int], keep: slice, shift: np.ndarray):
    """Sums for the global covariance and for each sublayer's own variance, over one block."""
    shift = task_array(shift)
    block = _block(path, rows, keep)
    block = block[_finite_samples(block)]
    n, s, d = block.shape
    total, gram = np.zeros(d), np.zeros((d, d))
    sub_sum, sub_sq = np.zeros((s, d)), np.zeros(s)
    for j in range(s):
        # Shifted: the covariance is unchanged, the cancellation is not.
        x = block[:, j, :].astype(np.float64) - shift
        total += x.sum(axis=0)
        gram += x.T @ x
        sub_sum[j] = x.sum(axis=0)
        sub_sq[j] = np.einsum("nd,nd->", x, x)
    return total, gram, sub_sum, sub_sq, np.array([n], dtype=np.int64)


def _project(path: str, rows: tuple[int, int], keep: slice, mean: np.ndarray, basis: np.ndarray):
    """Projections of one block onto the basis, with per-sublayer sums for their variances."""
    # The basis's layout and alignment as received decide the BLAS kernel: see task_array.
    mean, basis = task_array(mean), task_array(basis)
    block = _block(path, rows, keep)
    finite = _finite_samples(block)
    z = np.empty((block.shape[0], block.shape[1], basis.shape[1]))
    for j in range(block.shape[1]):
        x = np.nan_to_num(block[:, j, :].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        z[:, j] = (x - mean) @ basis
    z[~finite] = np.nan
    ok = z[finite]
    return z.astype(np.float32), (ok.sum(axis=0), (ok**2).sum(axis=0))


def _sublayer_covariances(path: str, rows: tuple[int, int], index: list[int], shift: np.ndarray):
    shift = task_array(shift)
    block = _block(path, rows, index)
    block = block[_finite_samples(block)]
    sums = np.zeros((len(index), block.shape[2]))
    grams = np.zeros((len(index), block.shape[2], block.shape[2]))
    for j in range(len(index)):
        x = block[:, j, :].astype(np.float64) - shift[j]
        sums[j] = x.sum(axis=0)
        grams[j] = x.T @ x
    return sums, grams, np.array([block.shape[0]])


def sign_fixed(vectors: np.ndarray) -> np.ndarray:
    """Columns with their largest-magnitude entry positive: one answer for the sign ambiguity."""
    pivot = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[pivot, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _decompose(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return np.clip(values[order], 0.0, None), sign_fixed(vectors[:, order])


def pca_fit(
    store_path,
    sublayers: str = "paper",
    n_components: int = 100,
    n_projected: int = 10,
    read_at_components="auto",
    per_sublayer: bool = False,
    block_rows: int | None = None,
    group_mib: float = 256,
) -> xr.Dataset:
    """Global PCA of a store's analysed sublayers; runs on the current Dask scheduler.

    ``n_components``: components kept (and the x axis of Figure 4B); ``n_projected``: how many of
    them every row is projected onto and stored (the trajectories need two).
    """
    group = open_store(store_path)
    resid = group["resid"]
    keep_list = analysed_sublayers(group, sublayers)
    keep = slice(keep_list[0], keep_list[-1] + 1)
    names = [group.attrs["sublayers"][i] for i in keep_list]
    n_rows, _, d = resid.shape
    s = len(names)
    k = min(n_components, d)
    k_proj = min(n_projected, k)
    path = str(store_path)
    rows = row_blocks(n_rows, resid.chunks[0], block_rows)

    first = _block(path, (0, min(n_rows, resid.chunks[0])), keep)
    first = first[_finite_samples(first)]
    shift = first.mean(axis=(0, 1), dtype=np.float64) if len(first) else np.zeros(d)
    shift_once = dask.delayed(shift)
    moments = dask.delayed(_moments, pure=True)
    (total, gram, sub_sum, sub_sq, count) = dask.compute(
        tree_sum([moments(path, r, keep, shift_once) for r in rows])
    )[0]
    n = int(count[0])
    if n < 2:
        raise ValueError(
            f"{store_path}: fewer than two samples with finite values in every analysed sublayer"
        )
    if n < n_rows:
        log.warning(
            "%d of %d samples have non-finite values and are left out of the PCA",
            n_rows - n,
            n_rows,
        )
    rows_total = n * s
    shifted_mean = total / rows_total
    cov = gram / rows_total - np.outer(shifted_mean, shifted_mean)
    values, vectors = _decompose(cov)
    total_variance = float(np.trace(cov))
    mean = shifted_mean + shift
    basis = vectors[:, :k]

    # Pass two: projections, and each sublayer's variance along every kept component.
    project = dask.delayed(_project, pure=True, nout=2)
    basis_once, mean_once = dask.delayed(basis), dask.delayed(mean)
    parts = [project(path, r, keep, mean_once, basis_once) for r in rows]
    z_blocks, (z_sum, z_sq) = dask.compute([p[0] for p in parts], tree_sum([p[1] for p in parts]))
    projection = np.concatenate(z_blocks)[:, :, :k_proj]
    along = z_sq / n - (z_sum / n) ** 2  # (S, k): sublayer variance along each global component
    sub_mean = sub_sum / n
    sub_total = sub_sq / n - (sub_mean**2).sum(axis=1)  # (S,): each sublayer's total variance
    with np.errstate(invalid="ignore", divide="ignore"):
        cumulative_global = np.cumsum(along, axis=1) / sub_total[:, None]

    data = {
        "mean": (("unit",), mean.astype(np.float32)),
        "components": (("component", "unit"), basis.T.astype(np.float32)),
        "explained_variance": (("component",), values[:k]),
        "explained_variance_ratio": (("component",), values[:k] / total_variance),
        "projection": (("sample", "sublayer", "pc"), projection),
        "sublayer_cumulative": (("sublayer", "n_components"), cumulative_global),
        "sublayer_variance": (("sublayer",), sub_total),
    }
    if per_sublayer:
        data["sublayer_cumulative_own"] = (
            ("sublayer", "n_components"),
            _per_sublayer_pca(path, rows, keep_list, d, k, group_mib),
        )
    return xr.Dataset(
        data,
        coords={
            "unit": np.arange(d),
            "component": np.arange(k),
            "pc": np.arange(k_proj),
            "sample": np.arange(n_rows),
            "sublayer": names,
            "n_components": np.arange(1, k + 1),
        },
        attrs={
            "model": group.attrs.get("model"),
            "dataset": group.attrs.get("dataset"),
            "n_samples": n,
            "n_rows": rows_total,
            "read_at": min(k, read_at(d, read_at_components)),
            "total_variance": total_variance,
            "centring": "global mean over all samples and analysed sublayers",
            "sublayer_cumulative": "share of each sublayer's variance (about its own mean) "
            "captured by the first c global components",
        },
    )


def _per_sublayer_pca(path, rows, keep_list, d, k, group_mib) -> np.ndarray:
    """Cumulative explained-variance ratio of each sublayer's own PCA, (S, k)."""
    per_group = max(1, int(group_mib * 2**20 // (8 * d * d)))
    out = np.full((len(keep_list), k), np.nan)
    task = dask.delayed(_sublayer_covariances, pure=True)
    for start in range(0, len(keep_list), per_group):
        index = keep_list[start : start + per_group]
        first = _block(path, (0, rows[0][1]), index)
        first = first[_finite_samples(first)]
        shift = dask.delayed(
            first.mean(axis=0, dtype=np.float64) if len(first) else np.zeros((len(index), d))
        )
        sums, grams, count = dask.compute(tree_sum([task(path, r, index, shift) for r in rows]))[0]
        n = int(count[0])
        for j in range(len(index)):
            m = sums[j] / n
            values = np.clip(np.linalg.eigvalsh(grams[j] / n - np.outer(m, m))[::-1], 0.0, None)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start + j] = np.cumsum(values[:k]) / values.sum()
    return out


def read_at(d_model: int, setting="auto") -> int:
    """Where Figure 4C reads the curves: the paper's 100 of 4096 units scaled to the width."""
    if setting == "auto":
        return max(2, int(round(d_model * 100 / 4096)))
    return int(setting)


def pca_summary(pca: xr.Dataset, at: int | None = None) -> dict:
    """The numbers the report quotes beside the paper's Figure 4B/4C (read at ``at``
    components; default: the dataset's own ``read_at`` attribute)."""
    c = pca["sublayer_cumulative"].values
    at = int(pca.attrs.get("read_at", c.shape[1])) if at is None else at
    col = min(at, c.shape[1]) - 1
    at_k = c[:, col]
    names = list(pca["sublayer"].values)
    peak = int(np.nanargmax(at_k))
    return {
        "n_components_at": col + 1,
        "cumulative_at_first": float(at_k[0]),
        "cumulative_at_peak": float(at_k[peak]),
        "peak_sublayer": names[peak],
        "peak_index": peak,
        "cumulative_at_last": float(at_k[-1]),
        "pc1_ratio": float(pca["explained_variance_ratio"].values[0]),
        "pc2_ratio": float(pca["explained_variance_ratio"].values[1]),
        "later_need_fewer": bool(
            np.nanmean(at_k[len(at_k) // 2 :]) > np.nanmean(at_k[: len(at_k) // 2])
        ),
    }

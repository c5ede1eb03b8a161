"""PCA of the residual stream over all samples and sublayers (the paper's Figure 4A-4C).

The paper stacks the (N, S, D) stream into (N S, D) rows, centres them on the global mean and takes
the SVD. Here the same components come from the eigendecomposition of the D x D covariance, which
is accumulated out of core: each Dask task reads one block of samples from Zarr one sublayer (one
chunk) at a time and adds its rows, upcast to float64 a slice at a time, into one D x D Gram
matrix in place (BLAS ``syrk``); the partial sums are added pairwise (``tree_sum``) and the driver
decomposes. A task holds one Gram matrix (128 MiB at D = 4096) and one chunk, whatever N or S is.

A sample is kept only if every analysed value is finite (a trajectory is kept or left whole). The
first pass finds those samples as it reads them; a block in which a sample turns out non-finite
after its earlier sublayers were added is read again without it.

A second pass projects every row onto the leading components and measures, per sublayer, how much
of that sublayer's own variance (about its own mean) the first c global components capture: the
curves of Figure 4B, whose steps suggest the paper measured them in the global basis. The
alternative reading, a separate PCA per sublayer, is computed when asked (``per_sublayer=True``):
one task per sublayer reads that sublayer's rows and returns only its spectrum. With no more
samples than units (the paper: 1000 texts at D = 4096) it decomposes the N x N Gram matrix of the
centred rows, which has the same non-zero eigenvalues as the D x D covariance at (N / D)^3 of the
cost; otherwise it accumulates the D x D covariance like the first pass. Either way a task holds
at most about three min(N, D) x D float64 arrays (384 MiB at D = 4096), and no D x D matrix of a
sublayer ever leaves its task.
"""

from __future__ import annotations

import logging

import dask
import numpy as np
import scipy.linalg
import xarray as xr
from scipy.linalg.blas import dsyr, dsyrk

from residual_dynamics.analysis.transitions import row_blocks, task_array, tree_sum
from residual_dynamics.analysis.unit_means import analysed_sublayers
from residual_dynamics.io.store import open_store

log = logging.getLogger(__name__)

# Rows upcast to float64 at a time: 8 MiB at D = 4096, whatever the block size.
SLICE_ROWS = 256


def _sublayer_list(keep) -> list[int]:
    if isinstance(keep, slice):
        return list(range(keep.start or 0, keep.stop, keep.step or 1))
    return [int(j) for j in keep]


def _read(resid, rows: tuple[int, int], sublayer: int) -> np.ndarray:
    """One sublayer of a block of samples as stored (float32 by default): the chunks of a block
    are read one sublayer at a time, so a task never holds the whole (rows, S, D) block."""
    return np.asarray(resid[rows[0] : rows[1], sublayer, :])


def _slices64(x: np.ndarray, shift: np.ndarray):
    """``x - shift`` in float64, ``SLICE_ROWS`` rows at a time."""
    for start in range(0, len(x), SLICE_ROWS):
        yield x[start : start + SLICE_ROWS].astype(np.float64) - shift


def _add_gram(gram: np.ndarray, x: np.ndarray) -> None:
    """gram += x^T x in place (upper triangle only: syrk does half a matmul's work and
    allocates nothing; ``_symmetrised`` fills the lower one at the end)."""
    # x is C-ordered (rows, D): as a Fortran array it is x^T, and syrk(trans=0) gives x^T x.
    dsyrk(1.0, x.T, beta=1.0, c=gram, trans=0, overwrite_c=1)


def _symmetrised(upper: np.ndarray, step: int = 512) -> np.ndarray:
    """Copy the upper triangle into the lower one, in place, a band at a time."""
    d = upper.shape[0]
    for a in range(0, d, step):
        b = min(d, a + step)
        upper[b:, a:b] = upper[a:b, b:].T
        block = upper[a:b, a:b]
        block[...] = np.triu(block) + np.triu(block, 1).T
    return upper


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1)


def _moments(path: str, rows: tuple[int, int], keep, shift: np.ndarray):
    """Sums for the global covariance and for each sublayer's own variance over one block, and
    which of its samples are finite in every analysed sublayer.

    Returns ((total, gram (upper triangle), sublayer sums, sublayer sums of squares, count),
    finite)."""
    shift = task_array(shift)
    resid = open_store(path)["resid"]
    sublayers = _sublayer_list(keep)
    d = resid.shape[2]
    finite = np.ones(rows[1] - rows[0], dtype=bool)
    for _attempt in range(2):
        total, gram = np.zeros(d), np.zeros((d, d), order="F")
        sub_sum, sub_sq = np.zeros((len(sublayers), d)), np.zeros(len(sublayers))
        stale = False
        for j, sublayer in enumerate(sublayers):
            x = _read(resid, rows, sublayer)
            ok = _finite_rows(x)
            # A sample non-finite here whose earlier sublayers were already added: read again.
            stale |= j > 0 and bool((finite & ~ok).any())
            finite &= ok
            for y in _slices64(x[finite], shift):
                s = y.sum(axis=0)
                total += s
                sub_sum[j] += s
                sub_sq[j] += np.einsum("nd,nd->", y, y)
                _add_gram(gram, y)
        if not stale:
            break
    count = np.array([finite.sum()], dtype=np.int64)
    return (total, gram, sub_sum, sub_sq, count), finite


def _project(
    path: str,
    rows: tuple[int, int],
    keep,
    mean: np.ndarray,
    basis: np.ndarray,
    finite: np.ndarray | None = None,
    n_keep: int | None = None,
):
    """Projections of one block onto the basis (the first ``n_keep`` components kept, float32),
    with per-sublayer sums over its finite samples for their variances along every component."""
    # The basis's layout and alignment as received decide the BLAS kernel: see task_array.
    mean, basis = task_array(mean), task_array(basis)
    resid = open_store(path)["resid"]
    sublayers = _sublayer_list(keep)
    n, k = rows[1] - rows[0], basis.shape[1]
    if finite is None:
        finite = np.ones(n, dtype=bool)
        for sublayer in sublayers:
            finite &= _finite_rows(_read(resid, rows, sublayer))
    n_keep = k if n_keep is None else n_keep
    z = np.full((n, len(sublayers), n_keep), np.nan, dtype=np.float32)
    z_sum, z_sq = np.zeros((len(sublayers), k)), np.zeros((len(sublayers), k))
    index = np.flatnonzero(finite)
    for j, sublayer in enumerate(sublayers):
        x = _read(resid, rows, sublayer)[finite]
        for start, y in zip(range(0, len(x), SLICE_ROWS), _slices64(x, mean), strict=True):
            p = y @ basis
            z[index[start : start + len(p)], j] = p[:, :n_keep]
            z_sum[j] += p.sum(axis=0)
            z_sq[j] += (p * p).sum(axis=0)
    return z, (z_sum, z_sq)


def _sublayer_spectrum(
    path: str, rows: list[tuple[int, int]], sublayer: int, finite: np.ndarray, k: int
) -> np.ndarray:
    """Cumulative explained-variance ratio of one sublayer's own PCA over the finite samples,
    (k,). See the module docstring for the two routes and their memory."""
    resid = open_store(path)["resid"]
    d = resid.shape[2]
    n = int(finite.sum())
    blocks = [(r, finite[r[0] : r[1]]) for r in rows if finite[r[0] : r[1]].any()]
    first = _read(resid, blocks[0][0], sublayer)[blocks[0][1]]
    shift = first.mean(axis=0, dtype=np.float64)  # only against cancellation
    if n <= d:
        # The centred rows themselves (n x D float64, at most one D x D), then their n x n Gram.
        x = np.empty((n, d))
        at = 0
        for r, ok in blocks:
            for y in _slices64(_read(resid, r, sublayer)[ok], shift):
                x[at : at + len(y)] = y
                at += len(y)
        x -= x.mean(axis=0)
        # x is C-ordered (n, D): as a Fortran array it is x^T, and syrk(trans=1) gives x x^T.
        gram = dsyrk(1.0, x.T, trans=1)
        del x
    else:
        gram = np.zeros((d, d), order="F")
        total = np.zeros(d)
        for r, ok in blocks:
            for y in _slices64(_read(resid, r, sublayer)[ok], shift):
                total += y.sum(axis=0)
                _add_gram(gram, y)
        mean = total / n
        gram = dsyr(-float(n), mean, a=gram, overwrite_a=1)  # minus n m m^T: centred
    values = np.linalg.eigvalsh(gram, UPLO="U")[::-1] / n
    values = np.clip(values, 0.0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.cumsum(values[:k]) / values.sum()


def sign_fixed(vectors: np.ndarray) -> np.ndarray:
    """Columns with their largest-magnitude entry positive: one answer for the sign ambiguity."""
    pivot = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[pivot, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _decompose(cov: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The leading ``k`` (default all) eigenpairs, largest first. Only the k wanted vectors are
    computed (LAPACK's MRRR driver): at D = 4096 and k = 100 that is about half the time of
    the full decomposition, and D x k instead of D x D for the vectors."""
    d = cov.shape[0]
    k = d if k is None else min(k, d)
    if k < d:
        values, vectors = scipy.linalg.eigh(cov, subset_by_index=[d - k, d - 1], driver="evr")
    else:
        values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return np.clip(values[order], 0.0, None), sign_fixed(vectors[:, order])


def _shift(resid, rows: tuple[int, int], sublayers: list[int]) -> np.ndarray:
    """Mean of the first block's finite rows over the analysed sublayers, read a sublayer at a
    time: only against cancellation in the sums, so any nearby value does."""
    means = []
    for sublayer in sublayers:
        x = _read(resid, rows, sublayer)
        x = x[_finite_rows(x)]
        if len(x):
            means.append(x.mean(axis=0, dtype=np.float64))
    return np.mean(means, axis=0) if means else np.zeros(resid.shape[2])


def pca_fit(
    store_path,
    sublayers: str = "paper",
    n_components: int = 100,
    n_projected: int = 10,
    read_at_components="auto",
    per_sublayer: bool = False,
    block_rows: int | None = None,
) -> xr.Dataset:
    """Global PCA of a store's analysed sublayers; runs on the current Dask scheduler.

    ``n_components``: components kept (and the x axis of Figure 4B); ``n_projected``: how many of
    them every row is projected onto and stored (the trajectories need two).
    """
    group = open_store(store_path)
    resid = group["resid"]
    keep_list = analysed_sublayers(group, sublayers)
    names = [group.attrs["sublayers"][i] for i in keep_list]
    n_rows, _, d = resid.shape
    s = len(names)
    k = min(n_components, d)
    k_proj = min(n_projected, k)
    path = str(store_path)
    rows = row_blocks(n_rows, resid.chunks[0], block_rows)

    shift = _shift(resid, rows[0], keep_list)
    shift_once = dask.delayed(shift)
    moments = dask.delayed(_moments, pure=True, nout=2)
    parts = [moments(path, r, keep_list, shift_once) for r in rows]
    (total, gram, sub_sum, sub_sq, count), masks = dask.compute(
        tree_sum([p[0] for p in parts]), [p[1] for p in parts]
    )
    finite = np.concatenate(masks)
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
    # In place on the one D x D the driver holds: scale, minus m m^T (rank one), mirror.
    cov = np.asfortranarray(gram)
    del gram
    cov /= rows_total
    cov = _symmetrised(dsyr(-1.0, shifted_mean, a=cov, overwrite_a=1))
    total_variance = float(np.trace(cov))
    values, basis = _decompose(cov, k)
    del cov
    mean = shifted_mean + shift

    # Pass two: projections, and each sublayer's variance along every kept component.
    project = dask.delayed(_project, pure=True, nout=2)
    basis_once, mean_once = dask.delayed(basis), dask.delayed(mean)
    parts = [
        project(path, r, keep_list, mean_once, basis_once, mask, k_proj)
        for r, mask in zip(rows, masks, strict=True)
    ]
    z_blocks, (z_sum, z_sq) = dask.compute([p[0] for p in parts], tree_sum([p[1] for p in parts]))
    projection = np.concatenate(z_blocks)
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
        spectrum = dask.delayed(_sublayer_spectrum, pure=True)
        finite_once = dask.delayed(finite)
        own = dask.compute([spectrum(path, rows, j, finite_once, k) for j in keep_list])[0]
        data["sublayer_cumulative_own"] = (("sublayer", "n_components"), np.stack(own))
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

"""Layer similarity and dimension from a store: linear CKA between every pair of sublayers, the
intrinsic dimension of each sublayer (TwoNN) and the participation ratio of its covariance.

Everything comes from one quantity, the centred Gram matrix K_s = X_s X_s^T of each sublayer s
(X_s: the N x d rows, centred on the sublayer's mean), read out of core in tiles:

- CKA(s, t) = HSIC(K_s, K_t) / sqrt(HSIC(K_s, K_s) HSIC(K_t, K_t)), and every HSIC needs only
  F[s, t] = sum_ij K_s,ij K_t,ij and the diagonals q_s,i = |x_s,i|^2 (a centred Gram's rows sum
  to zero, so the row sums in Song et al.'s formula are -q).
- Squared distances are q_i + q_j - 2 K_ij: each tile yields every row's two nearest neighbours.
- K_s has the same non-zero eigenvalues as (N - 1) times the covariance, so the participation
  ratio (sum lambda)^2 / sum lambda^2 is (sum_i q_s,i)^2 / F[s, s]: no d x d matrix is formed.

Why Gram tiles. At the paper's shape (N ~ 2000, 64 sublayers, d = 4096) the feature route, a
d x d cross-covariance per pair of sublayers, is 2080 matrices of 128 MiB (260 GiB). Holding every
sublayer's N x N Gram is 64 x 32 MiB = 2 GiB on one machine and grows as N^2. Here one Dask task
takes a pair of row blocks (a, b), builds the (S, n_a, n_b) Gram tile one sublayer at a time from
the store's chunks (a chunk holds one sublayer of a block of rows), and returns only the S x S
matrix of its products, its diagonal q and its rows' two nearest distances. A task holds about
``tile_mib`` (128 MiB: 512-row blocks at S = 64); the driver holds O(S^2 + S N). The price is
reading each block once per block it pairs with (5 reads of the store at N = 2000) and N^2 d S
flops (10^12 at the paper's shape: minutes on a node). Stores with more rows are read through a
seeded subsample of ``max_samples`` rows, since all three estimates cost N^2.

Estimators:
- HSIC: biased (Gretton et al. 2005; the CKA of Kornblith et al. 2019) and unbiased (Song et al.
  2012) are both returned; ``cka`` is the unbiased one when N < 100 d (``hsic='auto'``). The biased
  CKA of two independent isotropic clouds is about d / (N + d) (0.67 at N = 2000, d = 4096), and
  stays above 1 % until N ~ 100 d; the unbiased one is centred on 0.
- TwoNN (Facco et al. 2017): mu = r2 / r1 per point, d from the line through the origin of
  -log(1 - F(mu)) against log(mu) with the largest 10 % of mu left out; the maximum-likelihood
  form (n - 1) / sum log mu is returned beside it. Duplicates: rows identical in a sublayer (the
  first sublayer of a causal model holds one embedding per last token, so they are common) are
  collapsed to one point before the neighbour search; a point whose nearest distance is still
  numerically zero (below ``zero_distance_tol`` times the mean squared distance to the centroid)
  is left out of the estimate and counted.
- Participation ratio: of the sample covariance, and a debiased form whose denominator, the
  squared Frobenius norm of the covariance, is the unbiased HSIC of the sublayer with itself (the
  plug-in value cannot exceed N - 1 and is pulled down when d is comparable to N).

Samples with a non-finite value in any analysed sublayer are left out whole (with a warning).
"""

from __future__ import annotations

import hashlib
import logging

import dask
import numpy as np
import xarray as xr
from scipy.spatial.distance import cdist

from residual_dynamics.analysis.transitions import row_blocks, task_array, tree_sum
from residual_dynamics.analysis.unit_means import analysed_sublayers
from residual_dynamics.io.store import open_store

log = logging.getLogger(__name__)

# hsic='auto' uses the unbiased estimator below this many samples per unit (see the docstring).
UNBIASED_BELOW_SAMPLES_PER_UNIT = 100
HSIC_CHOICES = ("auto", "biased", "unbiased")


# ---- in-memory estimators (plain arrays; also the reference the store path is tested against)


def linear_hsic(x: np.ndarray, y: np.ndarray, estimator: str = "unbiased") -> float:
    """HSIC with linear kernels between the rows of x (n, p) and y (n, q): 'biased' is
    tr(K H L H) / (n - 1)^2, 'unbiased' Song et al. (2012), eq. 5 (needs n >= 4)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.shape[0]
    k = (x - x.mean(axis=0)) @ (x - x.mean(axis=0)).T
    ell = (y - y.mean(axis=0)) @ (y - y.mean(axis=0)).T
    if estimator == "biased":
        return float((k * ell).sum() / (n - 1) ** 2)
    if n < 4:
        raise ValueError("the unbiased HSIC needs at least 4 samples")
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(ell, 0.0)
    ones_k, ones_l = k.sum(axis=0), ell.sum(axis=0)
    value = (
        (k * ell).sum()
        + ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * ones_k @ ones_l
    )
    return float(value / (n * (n - 3)))


def linear_cka(x: np.ndarray, y: np.ndarray, estimator: str = "unbiased") -> float:
    """Linear CKA between two representations of the same n samples."""
    cross = linear_hsic(x, y, estimator)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(cross / np.sqrt(linear_hsic(x, x, estimator) * linear_hsic(y, y, estimator)))


def participation_ratio(spectrum: np.ndarray) -> float:
    """(sum lambda)^2 / sum lambda^2 of a covariance spectrum: k for k equal variances."""
    values = np.asarray(spectrum, dtype=np.float64)
    return float(values.sum() ** 2 / (values**2).sum())


def two_nn_from_distances(
    first: np.ndarray, second: np.ndarray, discard_fraction: float = 0.1
) -> tuple[float, float]:
    """TwoNN from each point's first and second nearest-neighbour distances (all > 0):
    (Facco et al.'s fit through the origin without the largest ``discard_fraction`` of mu, the
    maximum-likelihood estimate (n - 1) / sum log mu)."""
    mu = np.sort(np.asarray(second, dtype=np.float64) / np.asarray(first, dtype=np.float64))
    m = len(mu)
    if m < 3:
        return float("nan"), float("nan")
    log_mu = np.log(mu)
    mle = (m - 1) / log_mu.sum() if log_mu.sum() > 0 else float("nan")
    keep = min(int(np.floor(m * (1.0 - discard_fraction))), m - 1)  # F = 1 has -log(0)
    x = log_mu[:keep]
    y = -np.log1p(-np.arange(1, keep + 1) / m)
    fit = float(x @ y / (x @ x)) if (x @ x) > 0 else float("nan")
    return fit, float(mle)


def two_nn_dimension(
    points: np.ndarray, discard_fraction: float = 0.1, zero_distance_tol: float = 1e-10
) -> dict:
    """TwoNN intrinsic dimension of points (n, d) held in memory, with the store path's handling
    of duplicates: identical rows are one point; a point whose nearest distance is numerically
    zero (squared, below ``zero_distance_tol`` times the mean squared distance to the centroid)
    is left out."""
    x = np.asarray(points, dtype=np.float64)
    scale = ((x - x.mean(axis=0)) ** 2).sum(axis=1).mean()
    _, first = np.unique(np.asarray(points) + 0.0, axis=0, return_index=True)
    unique = x[np.sort(first)]
    d2 = cdist(unique, unique, "sqeuclidean")
    np.fill_diagonal(d2, np.inf)
    nearest = two_smallest(d2)
    return _two_nn_summary(nearest, len(x), scale, discard_fraction, zero_distance_tol)


def two_smallest(values: np.ndarray) -> np.ndarray:
    """The two smallest entries along the last axis, sorted (inf where there are fewer)."""
    pad = np.full((*values.shape[:-1], 2), np.inf)
    both = np.partition(np.concatenate([values, pad], axis=-1), 1, axis=-1)[..., :2]
    return np.sort(both, axis=-1)


def _two_nn_summary(nearest, n_points, scale, discard_fraction, zero_distance_tol) -> dict:
    """TwoNN estimates from the (m, 2) squared nearest distances of the distinct points."""
    nearest = nearest[np.isfinite(nearest[:, 1])]
    zero = nearest[:, 0] <= zero_distance_tol * scale
    fit, mle = two_nn_from_distances(
        np.sqrt(nearest[~zero, 0]), np.sqrt(nearest[~zero, 1]), discard_fraction
    )
    return {
        "fit": fit,
        "mle": mle,
        "n_points": int((~zero).sum()),
        "n_duplicates": int(n_points - len(nearest)),
        "n_zero_distance": int(zero.sum()),
    }


# ---- the store path: Dask tasks over row blocks and pairs of row blocks


def _read(resid, index: np.ndarray, sublayer: int) -> np.ndarray:
    """One sublayer of the rows ``index`` (sorted), as stored: a slice when they are contiguous."""
    if index[-1] - index[0] + 1 == len(index):
        return np.asarray(resid[int(index[0]) : int(index[-1]) + 1, sublayer, :])
    return np.asarray(resid.get_orthogonal_selection((index, sublayer, slice(None))))


def _row_hashes(x: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each row's bytes (+0.0 first, so -0.0 and 0.0 hash alike)."""
    rows = np.ascontiguousarray(x + x.dtype.type(0.0))
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
            for row in rows
        ],
        dtype=np.uint64,
    )


def _block_moments(path: str, index: np.ndarray, keep: list[int], use: np.ndarray | None):
    """Per sublayer: which rows are finite, their sum, and a digest of each row."""
    resid = open_store(path)["resid"]
    finite = np.empty((len(keep), len(index)), dtype=bool)
    sums = np.zeros((len(keep), resid.shape[2]))
    hashes = np.empty((len(keep), len(index)), dtype=np.uint64)
    for j, s in enumerate(keep):
        x = _read(resid, index, s)
        finite[j] = np.isfinite(x).all(axis=1)
        counted = finite[j] if use is None else finite[j] & use
        sums[j] = x[counted].sum(axis=0, dtype=np.float64)
        hashes[j] = _row_hashes(x)
    return finite, sums, hashes


def _centred(resid, index, sublayer, mean, use) -> np.ndarray:
    x = _read(resid, index, sublayer).astype(np.float64) - mean
    x[~use] = 0.0  # a left-out row adds nothing to any sum: the same as dropping it
    return x


def _tile(path, index_a, index_b, same, keep, mean, use_a, use_b, active_a, active_b):
    """One pair of row blocks: the S x S products of the centred Gram tiles, the Gram diagonal
    (diagonal tiles only) and each row's and column's two smallest squared distances to points
    of the other block (only distinct, kept points are candidates)."""
    resid = open_store(path)["resid"]
    mean = task_array(mean)
    n_sub = len(keep)
    grams = np.empty((n_sub, len(index_a), len(index_b)))
    q_a = np.empty((n_sub, len(index_a)))
    q_b = np.empty((n_sub, len(index_b)))
    for j, s in enumerate(keep):
        x_a = _centred(resid, index_a, s, mean[j], use_a)
        x_b = x_a if same else _centred(resid, index_b, s, mean[j], use_b)
        np.matmul(x_a, x_b.T, out=grams[j])
        q_a[j] = np.einsum("nd,nd->n", x_a, x_a)
        q_b[j] = np.einsum("nd,nd->n", x_b, x_b)
    flat = grams.reshape(n_sub, -1)
    # Off-diagonal tiles stand for themselves and their transpose.
    cross = (flat @ flat.T) * (1.0 if same else 2.0)
    near_a = np.empty((n_sub, len(index_a), 2))
    near_b = np.empty((n_sub, len(index_b), 2))
    for j in range(n_sub):
        d2 = grams[j]  # overwritten in place: the tile's products are already summed
        d2 *= -2.0
        d2 += q_a[j][:, None]
        d2 += q_b[j][None, :]
        np.maximum(d2, 0.0, out=d2)
        d2[~active_a[j], :] = np.inf
        d2[:, ~active_b[j]] = np.inf
        if same:
            np.fill_diagonal(d2, np.inf)
        near_a[j] = two_smallest(d2)
        if not same:
            near_b[j] = two_smallest(d2.T)
    return cross, (q_a if same else None), near_a, (None if same else near_b)


def _sample_rows(n_rows: int, max_samples: int | None, seed: int) -> np.ndarray:
    if max_samples is None or n_rows <= max_samples:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_samples, replace=False))


def _first_pass(path, index, blocks, keep):
    """Finite rows, per-sublayer means over the rows kept, and the distinct rows per sublayer."""
    moments = dask.delayed(_block_moments, pure=True, nout=3)
    parts = dask.compute([moments(path, index[a:b], keep, None) for a, b in blocks])[0]
    finite = np.concatenate([p[0] for p in parts], axis=1)
    used = finite.all(axis=0)
    sums = [p[1] for p in parts]
    # A row finite in some sublayers but not all was summed there: redo those blocks without it.
    redo = [i for i, (a, b) in enumerate(blocks) if (finite[:, a:b] & ~used[a:b]).any()]
    if redo:
        again = dask.compute(
            [moments(path, index[a:b], keep, used[a:b]) for a, b in (blocks[i] for i in redo)]
        )[0]
        for i, part in zip(redo, again, strict=True):
            sums[i] = part[1]
    hashes = np.concatenate([p[2] for p in parts], axis=1)
    active = np.zeros_like(finite)
    kept = np.flatnonzero(used)
    for j in range(len(keep)):
        _, first = np.unique(hashes[j, kept], return_index=True)
        active[j, kept[first]] = True
    n = int(used.sum())
    return used, np.sum(sums, axis=0) / max(n, 1), active


def layer_geometry(
    store_path,
    sublayers: str = "paper",
    hsic: str = "auto",
    max_samples: int | None = 5000,
    seed: int = 0,
    block_rows: int | None = None,
    tile_mib: float = 128,
    discard_fraction: float = 0.1,
    zero_distance_tol: float = 1e-10,
) -> xr.Dataset:
    """CKA between all pairs of analysed sublayers, TwoNN dimension and participation ratio of
    each, from a store; runs on the current Dask scheduler (a distributed client if one is
    active).

    ``hsic``: which HSIC ``cka`` uses ('auto': unbiased when N < 100 d; both are returned).
    ``max_samples``: rows used (a subsample seeded by ``seed`` when the store has more; None: all).
    ``block_rows``: rows per block (default: sized so a Gram tile is about ``tile_mib``).
    """
    if hsic not in HSIC_CHOICES:
        raise ValueError(f"hsic must be one of {', '.join(HSIC_CHOICES)}, not {hsic!r}")
    group = open_store(store_path)
    resid = group["resid"]
    keep = analysed_sublayers(group, sublayers)
    names = [group.attrs["sublayers"][i] for i in keep]
    n_rows, _, d = resid.shape
    s = len(keep)
    path = str(store_path)
    index = _sample_rows(n_rows, max_samples, seed)
    target = block_rows or max(1, int(np.sqrt(tile_mib * 2**20 / (8 * s))))
    # Whole chunks per block when every row is read, unless one chunk is already larger than the
    # target (the tile, not the read, bounds a task's memory); a subsample has no alignment.
    chunk = resid.chunks[0] if len(index) == n_rows and resid.chunks[0] <= target else 1
    blocks = row_blocks(len(index), chunk, target)

    used, mean, active = _first_pass(path, index, blocks, keep)
    n = int(used.sum())
    if n < 4:
        raise ValueError(f"{store_path}: {n} samples with finite values; at least 4 are needed")
    if n < len(index):
        log.warning(
            "%d of %d samples have non-finite values and are left out", len(index) - n, len(index)
        )
    tile = dask.delayed(_tile, pure=True, nout=4)
    mean_once = dask.delayed(mean)
    tiles = {}
    for i, (a0, a1) in enumerate(blocks):
        for b0, b1 in blocks[i:]:
            tiles[(a0, b0)] = tile(
                path,
                index[a0:a1],
                index[b0:b1],
                a0 == b0,
                keep,
                mean_once,
                used[a0:a1],
                used[b0:b1],
                active[:, a0:a1],
                active[:, b0:b1],
            )
    (cross,), computed = dask.compute(
        tree_sum([(t[0],) for t in tiles.values()]),
        {key: (t[1], t[2], t[3]) for key, t in tiles.items()},
    )
    q = np.concatenate([computed[(a0, a0)][0] for a0, _ in blocks], axis=1)
    candidates = {a0: [] for a0, _ in blocks}
    for (a0, b0), (_, near_a, near_b) in computed.items():
        candidates[a0].append(near_a)
        if near_b is not None:
            candidates[b0].append(near_b)
    nearest = np.concatenate(
        [two_smallest(np.concatenate(candidates[a0], axis=-1)) for a0, _ in blocks], axis=1
    )

    trace = q.sum(axis=1)  # (S,): tr K_s = (n - 1) tr C_s
    diag_products = q @ q.T
    biased = cross / (n - 1) ** 2
    unbiased = (
        cross
        - diag_products
        + np.outer(trace, trace) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * diag_products
    ) / (n * (n - 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        cka_biased = biased / np.sqrt(np.outer(np.diag(biased), np.diag(biased)))
        cka_unbiased = unbiased / np.sqrt(np.outer(np.diag(unbiased), np.diag(unbiased)))
        ratio = trace**2 / np.diag(cross)
        ratio_debiased = (trace / (n - 1)) ** 2 / np.diag(unbiased)
    chosen = (
        hsic
        if hsic != "auto"
        else ("unbiased" if n < UNBIASED_BELOW_SAMPLES_PER_UNIT * d else "biased")
    )

    dims = {key: np.empty(s) for key in ("fit", "mle")}
    counts = {
        key: np.empty(s, dtype=np.int64) for key in ("n_points", "n_duplicates", "n_zero_distance")
    }
    for j in range(s):
        summary = _two_nn_summary(
            nearest[j, active[j]], n, trace[j] / n, discard_fraction, zero_distance_tol
        )
        for key, store in {**dims, **counts}.items():
            store[j] = summary[key]
    if counts["n_zero_distance"].any():
        log.warning(
            "TwoNN: %d distinct points have a numerically zero nearest distance and are left out",
            int(counts["n_zero_distance"].sum()),
        )

    pair = ("sublayer", "sublayer_b")
    sampling = (
        "all rows"
        if len(index) == n_rows
        else f"seeded subsample of {len(index)} of {n_rows} rows (seed {seed})"
    )
    return xr.Dataset(
        {
            "cka": (pair, cka_unbiased if chosen == "unbiased" else cka_biased),
            "cka_biased": (pair, cka_biased),
            "cka_unbiased": (pair, cka_unbiased),
            "intrinsic_dimension": (("sublayer",), dims["fit"]),
            "intrinsic_dimension_mle": (("sublayer",), dims["mle"]),
            "twonn_points": (("sublayer",), counts["n_points"]),
            "n_duplicates": (("sublayer",), counts["n_duplicates"]),
            "n_zero_distance": (("sublayer",), counts["n_zero_distance"]),
            "participation_ratio": (("sublayer",), ratio),
            "participation_ratio_debiased": (("sublayer",), ratio_debiased),
            "total_variance": (("sublayer",), trace / (n - 1)),
            "row": (("sample",), index[used]),
        },
        coords={"sublayer": names, "sublayer_b": names, "sample": np.arange(n)},
        attrs={
            "model": group.attrs.get("model"),
            "dataset": group.attrs.get("dataset"),
            "n_samples": n,
            "n_rows": int(n_rows),
            "sampling": sampling,
            "seed": int(seed),
            "cka_estimator": f"{chosen} HSIC",
            "cka_rule": f"hsic={hsic!r}: unbiased HSIC (Song et al. 2012) when N < "
            f"{UNBIASED_BELOW_SAMPLES_PER_UNIT} d, else biased (Kornblith et al. 2019)",
            "intrinsic_dimension_estimator": "TwoNN (Facco et al. 2017): fit through the origin "
            f"of -log(1 - F(mu)) on log(mu), largest {discard_fraction:g} of mu discarded",
            "intrinsic_dimension_mle_estimator": "TwoNN maximum likelihood (n - 1) / sum log mu",
            "duplicates": "identical rows are one point; a point with a squared nearest distance "
            f"below {zero_distance_tol:g} x mean squared distance to the centroid is left out",
            "participation_ratio_estimator": "(sum lambda)^2 / sum lambda^2 of the sample "
            "covariance; _debiased: denominator from the unbiased HSIC of the sublayer with itself",
        },
    )

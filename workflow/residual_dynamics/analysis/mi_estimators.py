"""Mutual information between a unit's activations at consecutive sublayers (Figure 1G/1H).

The paper estimates MI per unit and transition from a Gaussian-kernel density estimate evaluated
on a grid: ``MI = sum p(x, y) log(p(x, y) / (p(x) p(y)))`` with 1e-10 added, in nats.

- :func:`mi_kde_reference` is that estimator written plainly, one pair at a time:
  :class:`scipy.stats.gaussian_kde` (Scott's rule by default) evaluated at every node of a
  ``grid x grid`` lattice spanning ``[min, max]`` of x and of y (optionally padded), normalised to
  a probability mass per cell. It is the definition, and costs about 0.03-0.1 s per pair at grid
  64 and N = 1000 (N x grid^2 kernel evaluations). With ``grid="auto"`` it computes, just as
  plainly, the value that estimate tends to as the grid is refined (below).
- :func:`mi_kde` computes the same quantities for many pairs at once with torch (CPU or CUDA).
- :func:`mi_copula_kde` (the KDE on rank-Gaussianised margins), :func:`mi_gcmi` (Gaussian-copula
  MI, Ince et al. 2017), :func:`mi_gaussian` (from Pearson r) and :func:`mi_ksg` (Kraskov et
  al.) are the robust and cross-check estimators; :func:`max_robust_z` scores outliers.

This module is the front: :func:`mi_kde` and its dispatch, the scipy references, the fixed-grid
fast path (below) and :func:`mi_copula_kde`. The rest lives in modules of its own and is
re-exported here, so every estimator is imported from this module:

- :mod:`residual_dynamics.analysis.mi_kde_auto`: the grid-free evaluation (``grid="auto"``);
- :mod:`residual_dynamics.analysis.mi_rank_estimators`: :func:`mi_gaussian`,
  :func:`copula_normal`, :func:`mi_gcmi`, :func:`gcmi_bias`, :func:`max_robust_z`, :func:`mi_ksg`;
- :mod:`residual_dynamics.analysis.mi_common`: what they share (column-pair input, torch
  batching, FFT lengths, constants).

Why the default is ``grid="auto"``
----------------------------------
A mass on g x g cells has MI at most ln g: 4.16 nats at g = 64, below the paper's 4.35 at the
first transition, and long before the ceiling the grid under-resolves the kernel (for rho =
0.9999 it is 0.0045 sd wide across the diagonal, a 64-point grid cell 0.1 sd), so a Gaussian pair
with rho = 0.9999 (4.26 nats) reads 3.5-3.8. A min-max grid is also wrecked by one outlier,
which leaves the bulk of the data in a few cells. ``grid="auto"`` drops the grid from the
estimate: it returns the MI of the KDE density itself, ``H(X) + H(Y) - H(X, Y)``, which is what
the grid sum converges to as g grows. Each differential entropy is a sum over a lattice laid out
from the kernel, about ``_AUTO_OVERSAMPLE`` cells per kernel sd, covering the data plus
``_AUTO_TAIL`` kernel sds: the joint in sheared coordinates ``(x, v = y - b x)`` (below), where
the kernel is axis-aligned and the shear's Jacobian is 1, so ``H(X, Y) = H(X, V)``; the x margin
from that lattice, the y margin on its own. The lattice follows the kernel, not the range, so
rho does not limit it; an outlier only lengthens the lattice (capped at ``_AUTO_MAX_CELLS`` per
axis: past that the cells widen, and a pair whose kernel falls below one cell is returned as not
resolved, flagged by the rule). Per pair: linear binning onto the lattice, one 2-D FFT
convolution with the Gaussian's exact periodic spectrum (the lattice is padded so nothing wraps
onto the data), ``sum p log p``. Against the plain reference (Riemann sums of scipy's density):
|difference| <= 1.3e-3 nats on the test pairs; on Gaussian pairs the estimate sits +0.011 nats
above the sample's own Gaussian MI at every rho from 0 to 0.9999 (tests/test_mutual_information.py).
The ``_AUTO_*`` constants and the computation are in :mod:`residual_dynamics.analysis.mi_kde_auto`.

How :func:`mi_kde` gets the reference's density cheaply on a fixed grid
---------------------------------------------------------------------
The kernel is a full-covariance Gaussian, ``H = f^2 * cov(x, y)``. Binning the points onto the
evaluation grid and convolving there (the textbook fast KDE) fails whenever the kernel is narrow
against the grid spacing, and here it routinely is: consecutive residual-stream sublayers are
strongly correlated, and across the diagonal the kernel is ``f * sd * sqrt(1 - rho^2)`` wide,
which for rho = 0.99 and N = 1000 (f = 0.316) is under half a grid-64 cell, so the binned
estimate smears mass the reference does not. Instead the fast path works in sheared coordinates
``(x, v)``, ``v = y - b x`` with ``b = H_xy / H_xx``, where the kernel factorises exactly::

    K(dx, dy) = N(dx; 0, H_xx) * N(dv; 0, H_yy - H_xy^2 / H_xx)

Each factor gets its own fine grid, about ``1 / _OVERSAMPLE`` of that factor's kernel width apart,
so the discretisation error does not depend on rho. Per pair:

1. linear binning of the N points onto the fine ``(x, v)`` grid (which covers just the data);
2. x: the exact kernel from the fine x nodes to the evaluation x nodes, contracted by a batched
   matmul (no interpolation in x: the kernel is evaluated at the evaluation nodes themselves);
3. v: FFT convolution (``torch.fft``) with the sampled 1-D kernel, out to ``_TAIL`` kernel widths
   past the data;
4. evaluation node ``(x_i, y_j)`` lies at ``v = y_j - b x_i``; the v spacing divides the y grid
   spacing, so the nodes of row i sit a whole number of fine cells apart at one common fraction,
   and cubic (Keys) interpolation with per-row weights reads the density there. Nodes beyond the
   tail of every point get 0 (the reference has < exp(-_TAIL^2 / 2) of a peak there).

Linear binning at spacing h acts, averaged over the points, like an extra Gaussian blur of
variance h^2 / 6 along that axis; the kernel variances used on the fine grids are reduced by
exactly that, which cancels the leading error term. Measured against the reference (grids 32
and 64, Scott / Silverman / fixed factors, pad 0 and 0.1; Gaussian pairs with rho up to 0.99999,
lognormal, bimodal, Student-t, Cauchy and nonlinear pairs; N from 5 to 10,000): |difference|
typically 1e-4 nats, at most 1e-3 (tests/test_mutual_information.py). The correction assumes the
points' offsets within fine cells are spread out; data on a lattice as coarse as the fine grid
(heavily rounded values) lose that and can differ by a few 1e-3 nats.

Columns are planned in numpy (statistics, fine-grid sizes), ordered by fine-grid size so that a
heavy-tailed column does not pad a whole batch, and batched with a cap on cells per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import special

if TYPE_CHECKING:  # scipy.stats takes ~1 s to import; only the plain references use it
    from scipy.stats import gaussian_kde

from residual_dynamics.analysis.mi_common import (
    COMPUTE_DTYPE,
    MAX_BATCH_CELLS,
    as_columns,
    column_moments,
    fft_size,
    run_batches,
)
from residual_dynamics.analysis.mi_kde_auto import mi_kde_auto
from residual_dynamics.analysis.mi_rank_estimators import (
    copula_normal,
    gcmi_bias,
    max_robust_z,
    mi_gaussian,
    mi_gcmi,
    mi_ksg,
)

__all__ = [
    "EPS",
    "copula_normal",
    "gcmi_bias",
    "max_robust_z",
    "mi_copula_kde",
    "mi_gaussian",
    "mi_gcmi",
    "mi_kde",
    "mi_kde_reference",
    "mi_ksg",
]

# The paper's floor inside the logarithm.
EPS = 1e-10

# Fine-grid cells per kernel standard deviation (at least; v rounds to divide the y spacing, so
# it lands between _OVERSAMPLE and 2 * _OVERSAMPLE). After the h^2/6 correction the error left is
# higher order. Worst |difference| from the reference on the test pairs: 1.6e-3 nats at 2, 5.3e-4
# at 3, 2.5e-4 at 4 (which costs 25% more time than 3).
_OVERSAMPLE = 3
# Kernel truncation in kernel standard deviations: exp(-6^2/2) ~ 1.5e-8 of one point's peak, so
# what is dropped is < 1e-11 of the probability mass per cell, under the paper's 1e-10 floor.
_TAIL = 6.0
# Longest fine grid per axis. Any sample has range / sd <= sqrt(2 N), so uncapped lengths are at
# most ~sqrt(2 N) * N^(1/6) * 2 * _OVERSAMPLE (~850 at N = 1000, for the most outlying columns
# possible; Gaussian columns need ~60-130). Beyond the cap the spacing grows and accuracy degrades
# gradually rather than memory blowing up.
_MAX_FINE = 1024


def _bandwidth_factor(bandwidth: str | float, n: int) -> float:
    """gaussian_kde's kernel scale factor for 2-D data with n equally weighted points.

    In 2-D Scott's (n^(-1/6)) and Silverman's ((n (d + 2) / 4)^(-1/6)) rules coincide.
    """
    d = 2
    if isinstance(bandwidth, str):
        if bandwidth == "scott":
            return n ** (-1.0 / (d + 4))
        if bandwidth == "silverman":
            return (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
        raise ValueError(f"bandwidth must be 'scott', 'silverman' or a number, not {bandwidth!r}")
    factor = float(bandwidth)
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"bandwidth factor must be a positive number, not {bandwidth!r}")
    return factor


def _mi_from_mass(p: np.ndarray) -> float:
    """The paper's MI from a (grid x grid) probability mass, x along rows and y along columns."""
    px = p.sum(axis=1)
    py = p.sum(axis=0)
    return float(np.sum(p * np.log((p + EPS) / (px[:, None] * py[None, :] + EPS))))


def mi_kde_reference(
    x: np.ndarray,
    y: np.ndarray,
    grid: int | str = 64,
    bandwidth: str | float = "scott",
    pad: float = 0.0,
) -> float:
    """KDE mutual information (nats) of one pair, written plainly with scipy's gaussian_kde.

    ``bandwidth`` is gaussian_kde's ``bw_method``: "scott", "silverman" or a float factor.

    - ``grid`` an integer g (the paper's estimator): the density evaluated at every node of
      ``linspace(min - pad*range, max + pad*range, g)`` per axis, normalised to a probability
      mass over the grid, MI of that mass with the paper's 1e-10 floor.
    - ``grid="auto"``: the MI of the KDE density itself, ``H(X) + H(Y) - H(X, Y)``, each
      differential entropy a Riemann sum of ``-f log f`` over a lattice of 2 nodes per kernel sd
      reaching 6 kernel sds past the data: the margins from their own 1-D gaussian_kde (the
      joint's margins exactly), the joint on a lattice in ``(x, v = y - b x)`` with ``b`` the
      kernel's regression slope, where the kernel is axis-aligned (the shear has Jacobian 1).
      Sums over such lattices of Gaussian mixtures are accurate far below 1e-4 nats.

    NaN where the KDE is undefined: a non-finite value, constant x or y, fewer than 3 points, or
    a singular covariance.
    """
    auto = _check_grid(grid)
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    _bandwidth_factor(bandwidth, max(len(x), 1))  # validate the argument up front
    if len(x) < 3 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    from scipy.stats import gaussian_kde

    try:
        kde = gaussian_kde(np.vstack([x, y]), bw_method=bandwidth)
    except np.linalg.LinAlgError:
        return float("nan")
    if auto:
        return _mi_continuous_reference(x, y, kde)
    xs = np.linspace(x.min() - pad * np.ptp(x), x.max() + pad * np.ptp(x), grid)
    ys = np.linspace(y.min() - pad * np.ptp(y), y.max() + pad * np.ptp(y), grid)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    density = kde(np.vstack([gx.ravel(), gy.ravel()])).reshape(grid, grid)
    return _mi_from_mass(density / density.sum())


def _mi_continuous_reference(x: np.ndarray, y: np.ndarray, kde: gaussian_kde) -> float:
    cov = kde.covariance
    shear = cov[0, 1] / cov[0, 0]
    sd = {"x": cov[0, 0] ** 0.5, "y": cov[1, 1] ** 0.5, "v": (cov[1, 1] - shear * cov[0, 1]) ** 0.5}

    def lattice(values: np.ndarray, width: float) -> tuple[np.ndarray, float]:
        step = width / 2  # Riemann sums of Gaussian mixtures: error ~exp(-8 pi^2)
        return np.arange(values.min() - 6 * width, values.max() + 6 * width + step, step), step

    def entropy(density: np.ndarray, cell: float) -> float:
        mass = density * cell
        return float(-np.sum(special.xlogy(mass, density)) / mass.sum())

    from scipy.stats import gaussian_kde

    h = 0.0
    for values, axis in ((x, "x"), (y, "y")):
        nodes, step = lattice(values, sd[axis])
        h += entropy(gaussian_kde(values, bw_method=kde.factor)(nodes), step)
    xs, step_x = lattice(x, sd["x"])
    vs, step_v = lattice(y - shear * x, sd["v"])
    gx, gv = np.meshgrid(xs, vs, indexing="ij")
    joint = kde(np.vstack([gx.ravel(), (gv + shear * gx).ravel()]))
    return h - entropy(joint, step_x * step_v)


@dataclass
class _Plan:
    """Per-pair parameters of the fast path, float64 arrays of shape (P,), in numpy."""

    usable: np.ndarray  # bool: finite, non-constant, non-singular
    xlo: np.ndarray
    xhi: np.ndarray
    ylo: np.ndarray
    yhi: np.ndarray
    shear: np.ndarray  # b in v = y - b x
    vlo: np.ndarray
    vhi: np.ndarray
    hx: np.ndarray  # fine x spacing
    hv: np.ndarray  # fine v spacing = hy / m
    m: np.ndarray  # evaluation y spacing in fine v cells
    nx: np.ndarray  # fine x nodes
    nv: np.ndarray  # fine v nodes
    var_x: np.ndarray  # kernel variances after the binning correction
    var_v: np.ndarray
    tail: np.ndarray  # fine v cells the convolution extends past the data (incl. guard cells)


def _plan(x: np.ndarray, y: np.ndarray, grid: int, factor: float, pad: float) -> _Plan:
    usable, cxx, cyy, cxy, xlo, xhi, ylo, yhi = column_moments(x, y)
    with np.errstate(all="ignore"):
        f2 = factor * factor
        shear = cxy / cxx
        var_x = f2 * cxx  # kernel variance along x
        var_v = f2 * (cyy - cxy * cxy / cxx)  # kernel variance of v = y - b x given x
        v = y - shear * x
        vlo = np.where(usable, v.min(axis=0), 0.0)
        vhi = np.where(usable, v.max(axis=0), 1.0)
        del v
    span_x, span_v = xhi - xlo, vhi - vlo
    hx = np.maximum(np.sqrt(var_x) / _OVERSAMPLE, span_x / (_MAX_FINE - 2))
    # hv divides the evaluation y spacing, so every row's nodes share one interpolation fraction.
    hy = (yhi - ylo) * (1 + 2 * pad) / (grid - 1)
    m = np.ceil(_OVERSAMPLE * hy / np.sqrt(var_v))
    m = np.maximum(np.minimum(m, np.floor(hy * (_MAX_FINE - 2) / span_v)), 1.0)
    hv = hy / m
    nx = np.floor(span_x / hx) + 2
    nv = np.floor(span_v / hv) + 2
    # Binning blurs by h^2/6 per axis on average; take it out of the kernel so the result matches
    # the unbinned kernel to second order. h <= width / _OVERSAMPLE unless the cap widened it, so
    # the clamp only engages for pathological columns.
    var_x_eff = np.maximum(var_x - hx * hx / 6, 0.25 * var_x)
    var_v_eff = np.maximum(var_v - hv * hv / 6, 0.25 * var_v)
    # +4: guard cells for the cubic stencil, zeroed (see _mi_kde_batch).
    tail = np.ceil(_TAIL * np.sqrt(var_v_eff) / hv) + 4
    return _Plan(
        usable, xlo, xhi, ylo, yhi, shear, vlo, vhi, hx, hv, m, nx, nv, var_x_eff, var_v_eff, tail
    )


def _keys_weights(s: torch.Tensor) -> list[torch.Tensor]:
    """Keys (a = -0.5) cubic-convolution weights for nodes -1, 0, 1, 2 at fraction s in [0, 1).

    Third-order accurate (it reproduces quadratics), so unlike linear interpolation it adds no
    h^2 smoothing that would need correcting.
    """
    s2 = s * s
    s3 = s2 * s
    return [
        -0.5 * s3 + s2 - 0.5 * s,
        1.5 * s3 - 2.5 * s2 + 1.0,
        -1.5 * s3 + 2.0 * s2 + 0.5 * s,
        0.5 * s3 - 0.5 * s2,
    ]


def _mi_kde_batch(
    x: np.ndarray, y: np.ndarray, plan: dict[str, np.ndarray], grid: int, pad: float, device
) -> np.ndarray:
    """MI for a batch of usable pairs; x, y are (B, N) float64, one pair per row."""
    f64, f32 = torch.float64, COMPUTE_DTYPE
    P = {k: torch.as_tensor(v, dtype=f64, device=device) for k, v in plan.items()}
    X = torch.as_tensor(x, dtype=f64, device=device)
    Y = torch.as_tensor(y, dtype=f64, device=device)
    B = X.shape[0]
    nx, nv = int(plan["nx"].max()), int(plan["nv"].max())
    tail = int(plan["tail"].max())
    col = {k: v[:, None] for k, v in P.items()}

    # 1. Linear binning in (x, v). Positions are offsets from the pair's own minimum, in float64,
    #    so units whose mean dwarfs their spread keep their precision; the clamp guards the top
    #    node against the last ulp (floor of the largest offset is n - 2 by construction).
    gx = (X - col["xlo"]) / col["hx"]
    gv = (Y - col["shear"] * X - col["vlo"]) / col["hv"]
    del X, Y
    ix = torch.minimum(gx.floor(), col["nx"] - 2).clamp_(min=0)
    iv = torch.minimum(gv.floor(), col["nv"] - 2).clamp_(min=0)
    fx = (gx - ix).to(f32)
    fv = (gv - iv).to(f32)
    first = torch.arange(B, dtype=f64, device=device)[:, None] * (nx * nv)
    base = (ix * nv + iv + first).long().ravel()
    del gx, gv, ix, iv, first
    w01 = (1 - fx) * fv
    w00 = (1 - fx) - w01
    w11 = fx * fv
    w10 = fx - w11
    counts = torch.zeros(B * nx * nv, dtype=f32, device=device)
    counts.index_add_(0, base, w00.ravel())
    counts.index_add_(0, base + 1, w01.ravel())
    counts.index_add_(0, base + nv, w10.ravel())
    counts.index_add_(0, base + (nv + 1), w11.ravel())
    counts = counts.view(B, nx, nv)
    del base, fx, fv, w00, w01, w10, w11

    # 2. x: exact kernel from the fine x nodes to the evaluation x nodes, then a batched matmul.
    #    Distances are in fine cells, split into whole and fraction so float32 keeps them exact.
    k = torch.arange(grid, dtype=f64, device=device) / (grid - 1)
    span_x = P["xhi"] - P["xlo"]
    xs = (P["xlo"] - pad * span_x)[:, None] + (span_x * (1 + 2 * pad))[:, None] * k
    u = (xs - col["xlo"]) / col["hx"]
    whole = u.floor()
    nodes = torch.arange(nx, dtype=f32, device=device)
    arg = (whole.to(f32)[:, :, None] - nodes).add_((u - whole).to(f32)[:, :, None])
    arg.square_().mul_((-0.5 * P["hx"] ** 2 / P["var_x"]).to(f32)[:, None, None])
    # Truncate at _TAIL widths like the v kernel. Clamping first also matters for speed: exp() of
    # far-negative arguments takes a slow underflow path (~10x slower on CPU).
    floor_arg = -0.5 * _TAIL**2
    arg.clamp_(min=floor_arg)
    kx = torch.exp(arg).masked_fill_(arg == floor_arg, 0.0)
    del arg
    rows = torch.bmm(kx, counts)  # (B, grid, nv): row i is the v-profile at x_i, unsmoothed in v
    del kx, counts

    # 3. v: FFT convolution with the sampled kernel; output node o is at vlo + (o - tail) hv.
    lags = torch.arange(-tail, tail + 1, dtype=f64, device=device) * col["hv"]
    kv = torch.exp((-0.5 * lags * lags / col["var_v"]).clamp_(min=floor_arg))
    kv = torch.where(lags.abs() <= _TAIL * col["var_v"].sqrt(), kv, 0.0).to(f32)
    n_out = nv + 2 * tail
    n_fft = fft_size(n_out)
    spec = torch.fft.rfft(rows, n=n_fft, dim=-1)
    del rows
    spec *= torch.fft.rfft(kv, n=n_fft, dim=-1)[:, None, :]
    smooth = torch.fft.irfft(spec, n=n_fft, dim=-1)[..., :n_out]
    del spec
    # The outermost four nodes lie beyond every point's tail (only FFT round-off there); zeroed,
    # they are where stencils that fall off the fine grid are clamped to, and read 0.
    smooth[..., :4] = 0
    smooth[..., n_out - 4 :] = 0

    # 4. Node (x_i, y_j) lies at v = y_j - b x_i, fine position tau_i + j m: cubic interpolation
    #    with row-wise weights.
    y0 = P["ylo"] - pad * (P["yhi"] - P["ylo"])
    tau = (y0[:, None] - col["shear"] * xs - col["vlo"]) / col["hv"] + tail
    start = tau.floor()
    weights = _keys_weights((tau - start).to(f32)[:, :, None])
    step = torch.arange(grid, dtype=f64, device=device) * col["m"]
    index = (start[:, :, None] - 1 + step[:, None, :]).clamp_(0, n_out - 4).long()
    density = weights[0] * torch.gather(smooth, 2, index)
    for d in (1, 2, 3):
        density.addcmul_(weights[d], torch.gather(smooth[..., d:], 2, index))
    del index, smooth
    density.clamp_(min=0)  # cubic overshoot beside steep flanks

    # 5. The paper's normalisation and MI: float32 cells, each row summed in float32 (pairwise,
    #    so ~1e-7 relative), rows accumulated in float64. (sum(dtype=float64) over the cells would
    #    copy the whole array to float64 first.)
    p = density.div_(density.sum(2).to(f64).sum(1).to(f32)[:, None, None])
    q = p.sum(2, keepdim=True) * p.sum(1, keepdim=True) + EPS
    terms = torch.log((p + EPS).div_(q)).mul_(p)
    return terms.sum(2).to(f64).sum(1).cpu().numpy()


def _mi_kde_grid(
    x: np.ndarray, y: np.ndarray, grid: int, factor: float, pad: float, batch_size: int, device
) -> np.ndarray:
    """The paper's fixed ``grid x grid`` lattice over each pair's range (see the module docstring)."""
    out = np.full(x.shape[1], np.nan)
    plan = _plan(x, y, grid, factor, pad)
    # Largest first, by cells per pair, so each batch pads to similar sizes.
    cells = np.maximum(plan.nx * plan.nv, grid * (plan.nv + 2 * plan.tail))
    todo = np.flatnonzero(plan.usable)
    todo = todo[np.argsort(-cells[todo], kind="stable")]
    fields = {k: v for k, v in vars(plan).items() if k != "usable"}
    dev = torch.device(device)
    budget = MAX_BATCH_CELLS * (16 if dev.type == "cuda" else 1)
    batches = []
    start = 0
    while start < len(todo):
        # The first pair of a batch is its largest: size the batch to the cell budget.
        fit = max(1, int(budget // (2 * cells[todo[start]])))
        batches.append(todo[start : start + min(batch_size, fit)])
        start += len(batches[-1])

    def run(cols: np.ndarray) -> None:
        with torch.inference_mode():
            sub = {k: v[cols] for k, v in fields.items()}
            out[cols] = _mi_kde_batch(x[:, cols].T, y[:, cols].T, sub, grid, pad, dev)

    run_batches(run, batches, dev)
    return out


def mi_kde(
    x: np.ndarray,
    y: np.ndarray,
    grid: int | str = "auto",
    bandwidth: str | float = "scott",
    pad: float = 0.0,
    batch_size: int = 256,
    device: str = "cpu",
    return_resolved: bool = False,
):
    """Gaussian-KDE mutual information (nats) for every column pair of x and y, batched in torch.

    x, y: (N, P), one unit-transition pair per column (1-D inputs are one pair). The density is
    scipy's gaussian_kde (full-covariance kernel, ``bandwidth`` its ``bw_method``).

    - ``grid`` an integer g: the paper's estimator, the density evaluated on a g x g lattice over
      each pair's [min, max] (``pad``-widened), normalised to a mass, MI of that mass; the same
      as :func:`mi_kde_reference` to ~1e-4 nats. It cannot exceed ln g, and a lattice spanning
      an outlier leaves the bulk of the data in a few cells.
    - ``grid="auto"``: the MI of the KDE density itself, ``H(X) + H(Y) - H(X, Y)`` integrated on
      lattices of about ``_AUTO_OVERSAMPLE`` cells per kernel sd (see the module docstring;
      computed in :mod:`residual_dynamics.analysis.mi_kde_auto`):
      the value the g x g estimate tends to as g grows, with no ceiling. ``pad`` is unused.

    ``batch_size`` pairs go through torch at once (fewer when their lattices are large);
    ``device`` is any torch device. Returns (P,) float64; NaN for a column with a non-finite
    value, constant x or y, N < 3, or a numerically singular covariance (1 - r^2 <= 1e-12, where
    gaussian_kde raises). With ``return_resolved``, also (P,) bool: False where the lattice was
    capped at ``_AUTO_MAX_CELLS`` and the kernel is narrower than a cell (the estimate then
    loses resolution; only with ``grid="auto"``; a fixed grid returns all True).
    """
    x, y = as_columns(x, y)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    auto = _check_grid(grid)
    factor = _bandwidth_factor(bandwidth, max(x.shape[0], 1))
    resolved = np.ones(x.shape[1], dtype=bool)
    if x.shape[0] < 3 or x.shape[1] == 0:  # gaussian_kde needs more points than dimensions
        out = np.full(x.shape[1], np.nan)
    elif auto:
        out, resolved = mi_kde_auto(x, y, factor, batch_size, device)
    else:
        out = _mi_kde_grid(x, y, int(grid), factor, pad, batch_size, device)
    return (out, resolved) if return_resolved else out


def _check_grid(grid) -> bool:
    """True for "auto"; raises unless ``grid`` is "auto" or an integer >= 2."""
    if isinstance(grid, str):
        if grid != "auto":
            raise ValueError(f"grid must be 'auto' or an integer, not {grid!r}")
        return True
    if int(grid) != grid or grid < 2:
        raise ValueError(f"grid must be 'auto' or an integer >= 2, got {grid!r}")
    return False


def mi_copula_kde(x: np.ndarray, y: np.ndarray, **kde_options):
    """:func:`mi_kde` of the rank-Gaussianised pairs (:func:`copula_normal`): robust to
    outliers and heavy tails, and it sees any monotone dependence as the Gaussian one it
    becomes. Same options and returns as :func:`mi_kde`."""
    x, y = as_columns(x, y)
    return mi_kde(copula_normal(x), copula_normal(y), **kde_options)

"""The grid-free evaluation of :func:`~residual_dynamics.analysis.mi_estimators.mi_kde`
(``grid="auto"``): the MI of the KDE density itself, ``H(X) + H(Y) - H(X, Y)``, with no ln(grid)
ceiling.

The method and its accuracy are described in the docstring of
:mod:`residual_dynamics.analysis.mi_estimators` ("Why the default is grid="auto""). Here:
the lattice constants (:data:`_AUTO_OVERSAMPLE`, :data:`_AUTO_TAIL`, :data:`_AUTO_MAX_CELLS`),
the per-pair lattice plan (:class:`_AutoAxis`, :class:`_AutoPlan`, :func:`_auto_plan`), the
batched binning + FFT-convolution entropies of the joint and the margins, and
:func:`mi_kde_auto`, which :func:`mi_kde` calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from residual_dynamics.analysis.mi_common import (
    COMPUTE_DTYPE,
    MAX_BATCH_CELLS,
    column_moments,
    fft_size,
    run_batches,
)

__all__ = ["mi_kde_auto"]

# grid="auto": lattice cells per kernel sd, padding per side in kernel sds, and the longest
# lattice per axis (beyond it the cells widen and the estimate is flagged unresolved).
_AUTO_OVERSAMPLE = 1.5
_AUTO_TAIL = 4.0
_AUTO_MAX_CELLS = 512


@dataclass
class _AutoAxis:
    """One axis of the fine lattice, per pair (float64 arrays of shape (P,), in numpy)."""

    lo: np.ndarray  # data minimum
    h: np.ndarray  # cell width
    offset: np.ndarray  # cells between the lattice start and lo (padding before the data)
    size: np.ndarray  # lattice length (FFT size)
    width: np.ndarray  # kernel sd in cells, after the binning correction


def _auto_axis(lo: np.ndarray, hi: np.ndarray, var: np.ndarray) -> _AutoAxis:
    span = hi - lo
    sd = np.sqrt(var)
    # Cells per kernel sd, unless the data would need more than _AUTO_MAX_CELLS of them.
    room = _AUTO_MAX_CELLS - 2 - 2 * math.ceil(_AUTO_TAIL * _AUTO_OVERSAMPLE) - 2
    h = np.maximum(sd / _AUTO_OVERSAMPLE, span / room)
    nodes = np.floor(span / h) + 2
    # Binning blurs by h^2/6 on average: taken out of the kernel (as in the fixed-grid path).
    width = np.sqrt(np.maximum(var - h * h / 6, 0.25 * var)) / h
    needed = nodes + 2 * np.ceil(_AUTO_TAIL * width) + 2
    size = np.array([fft_size(int(n)) for n in needed], dtype=np.float64)
    offset = np.floor((size - nodes) / 2)
    return _AutoAxis(lo, h, offset, size, width)


@dataclass
class _AutoPlan:
    usable: np.ndarray  # bool (P,)
    shear: np.ndarray  # b in v = y - b x
    x: _AutoAxis
    v: _AutoAxis
    y: _AutoAxis

    @property
    def resolved(self) -> np.ndarray:
        """Whether the kernel spans at least one fine cell along every axis (else capped)."""
        return (self.x.width >= 1) & (self.v.width >= 1) & (self.y.width >= 1)


def _auto_plan(x: np.ndarray, y: np.ndarray, factor: float) -> _AutoPlan:
    usable, cxx, cyy, cxy, xlo, xhi, ylo, yhi = column_moments(x, y)
    f2 = factor * factor
    shear = cxy / cxx
    with np.errstate(all="ignore"):
        v = y - shear * x
        vlo = np.where(usable, v.min(axis=0), 0.0)
        vhi = np.where(usable, v.max(axis=0), 1.0)
    del v
    return _AutoPlan(
        usable,
        shear,
        _auto_axis(xlo, xhi, f2 * cxx),
        _auto_axis(vlo, vhi, f2 * (cyy - cxy * cxy / cxx)),
        _auto_axis(ylo, yhi, f2 * cyy),
    )


def _gaussian_spectrum(width: torch.Tensor, size: int, onesided: bool) -> torch.Tensor:
    """DFT (B, size or size // 2 + 1) of a unit-mass Gaussian of sd ``width`` cells, periodic
    on ``size`` cells: exactly exp(-2 pi^2 width^2 k^2 / size^2) (the aliased copies it leaves
    out are below exp(-2 pi^2 width^2), < 1e-17 for width >= 1.4)."""
    freq = (torch.fft.rfftfreq if onesided else torch.fft.fftfreq)(
        size, dtype=torch.float64, device=width.device
    )
    return torch.exp(-2 * math.pi**2 * (width[:, None] * freq) ** 2).to(COMPUTE_DTYPE)


def _linear_bins(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower node (int64) and the weight of the upper one (float32) of positions g (cells)."""
    low = g.floor()
    return low.long(), (g - low).to(COMPUTE_DTYPE)


def _entropy_rows(density: torch.Tensor) -> torch.Tensor:
    """Discrete entropy (nats, float64) of each row of a non-negative (B, M) array, normalised."""
    density = density.clamp_(min=0)  # FFT round-off
    total = density.sum(1).to(torch.float64)
    plogp = torch.xlogy(density, density).sum(1).to(torch.float64)
    return torch.log(total) - plogp / total


def _auto_joint_batch(x, y, plan: dict, fx: int, fv: int, device) -> tuple[np.ndarray, np.ndarray]:
    """Discrete entropies of the (x, v) lattice mass and of its x margin, for pairs sharing one
    lattice shape (fx, fv). x, y: (B, N) float64 numpy."""
    f64 = torch.float64
    P = {k: torch.as_tensor(v, dtype=f64, device=device)[:, None] for k, v in plan.items()}
    X = torch.as_tensor(x, dtype=f64, device=device)
    Y = torch.as_tensor(y, dtype=f64, device=device)
    B = X.shape[0]
    gx = (X - P["xlo"]) / P["xh"] + P["xoff"]
    gv = (Y - P["shear"] * X - P["vlo"]) / P["vh"] + P["voff"]
    del X, Y
    ix, wx = _linear_bins(gx)
    iv, wv = _linear_bins(gv)
    del gx, gv
    base = (ix * fv + iv + torch.arange(B, device=device)[:, None] * (fx * fv)).ravel()
    del ix, iv
    w11 = wx * wv
    w10 = wx - w11
    w01 = wv - w11
    w00 = 1 - wx - w01
    counts = torch.zeros(B * fx * fv, dtype=COMPUTE_DTYPE, device=device)
    for shift, w in ((0, w00), (1, w01), (fv, w10), (fv + 1, w11)):
        counts.index_add_(0, base + shift, w.ravel())
    del base, w00, w01, w10, w11, wx, wv
    spec = torch.fft.rfft2(counts.view(B, fx, fv))
    del counts
    kx = _gaussian_spectrum(P["xwidth"][:, 0], fx, onesided=False)
    kv = _gaussian_spectrum(P["vwidth"][:, 0], fv, onesided=True)
    spec *= kx[:, :, None]
    spec *= kv[:, None, :]
    density = torch.fft.irfft2(spec, s=(fx, fv))
    del spec
    density.clamp_(min=0)
    h_x = _entropy_rows(density.sum(2))
    h_xv = _entropy_rows(density.view(B, -1))
    return h_xv.cpu().numpy(), h_x.cpu().numpy()


def _auto_margin_batch(y, plan: dict, fy: int, device) -> np.ndarray:
    """Discrete entropy of the y margin's lattice mass, for pairs sharing one length fy."""
    f64 = torch.float64
    P = {k: torch.as_tensor(v, dtype=f64, device=device)[:, None] for k, v in plan.items()}
    Y = torch.as_tensor(y, dtype=f64, device=device)
    B = Y.shape[0]
    iy, wy = _linear_bins((Y - P["ylo"]) / P["yh"] + P["yoff"])
    del Y
    base = (iy + torch.arange(B, device=device)[:, None] * fy).ravel()
    counts = torch.zeros(B * fy, dtype=COMPUTE_DTYPE, device=device)
    counts.index_add_(0, base, (1 - wy).ravel())
    counts.index_add_(0, base + 1, wy.ravel())
    spec = torch.fft.rfft(counts.view(B, fy))
    spec *= _gaussian_spectrum(P["ywidth"][:, 0], fy, onesided=True)
    return _entropy_rows(torch.fft.irfft(spec, n=fy)).cpu().numpy()


def mi_kde_auto(
    x: np.ndarray, y: np.ndarray, factor: float, batch_size: int, device
) -> tuple[np.ndarray, np.ndarray]:
    """MI of the KDE density itself (no grid ceiling) and whether each pair's kernel was
    resolved; see :func:`mi_kde`."""
    out = np.full(x.shape[1], np.nan)
    plan = _auto_plan(x, y, factor)
    resolved = plan.resolved | ~plan.usable
    todo = np.flatnonzero(plan.usable)
    if not len(todo):
        return out, resolved
    fields = {
        "shear": plan.shear,
        **{f"{a}{k}": getattr(getattr(plan, a), k) for a in "xvy" for k in ("lo", "h")},
        **{f"{a}off": getattr(plan, a).offset for a in "xvy"},
        **{f"{a}width": getattr(plan, a).width for a in "xvy"},
    }
    joint_keys = ("shear", "xlo", "xh", "xoff", "xwidth", "vlo", "vh", "voff", "vwidth")
    margin_keys = ("ylo", "yh", "yoff", "ywidth")
    dev = torch.device(device)
    budget = MAX_BATCH_CELLS * (16 if dev.type == "cuda" else 1)
    h_xv = np.full(x.shape[1], np.nan)
    h_x = np.full(x.shape[1], np.nan)
    h_y = np.full(x.shape[1], np.nan)

    # Pairs are grouped by their exact lattice shape, so a pair's result never depends on which
    # other pairs it was computed with (no padding to a batch's largest).
    def groups(shape: np.ndarray, cells: np.ndarray) -> list[np.ndarray]:
        batches = []
        for key in np.unique(shape[todo], axis=0):
            members = todo[(shape[todo] == key).all(axis=1)]
            per = max(1, min(batch_size, int(budget // (2 * cells[members[0]]))))
            batches += [members[i : i + per] for i in range(0, len(members), per)]
        return batches

    joint_shape = np.column_stack([plan.x.size, plan.v.size]).astype(np.int64)
    margin_shape = plan.y.size.astype(np.int64)[:, None]

    def run_joint(cols: np.ndarray) -> None:
        fx, fv = (int(s) for s in joint_shape[cols[0]])
        sub = {k: fields[k][cols] for k in joint_keys}
        with torch.inference_mode():
            h_xv[cols], h_x[cols] = _auto_joint_batch(x[:, cols].T, y[:, cols].T, sub, fx, fv, dev)

    def run_margin(cols: np.ndarray) -> None:
        sub = {k: fields[k][cols] for k in margin_keys}
        with torch.inference_mode():
            h_y[cols] = _auto_margin_batch(y[:, cols].T, sub, int(margin_shape[cols[0], 0]), dev)

    run_batches(run_joint, groups(joint_shape, joint_shape.prod(axis=1)), dev)
    run_batches(run_margin, groups(margin_shape, 4 * margin_shape[:, 0]), dev)
    # Differential entropies are the discrete ones plus log(cell size); the x cell cancels.
    out[todo] = (h_x + h_y - h_xv + np.log(plan.y.h / plan.v.h))[todo]
    return out, resolved

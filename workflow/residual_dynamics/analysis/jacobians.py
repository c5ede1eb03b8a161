"""Jacobians of maps from R^d to R^d, applied without being formed, and what their spectra say.

Everything here works on any map, so it is tested on linear maps with known answers; the model's
sublayer maps (``analysis.local_dynamics``) are one more kind of map.

- :class:`Linearisation` is J = df/dx at a point, for a callable ``f``: ``apply`` (J V) runs
  ``torch.func.jvp`` and ``apply_t`` (J^T U) ``torch.func.vjp``, on blocks of vectors at once
  (the point is repeated along the batch, one vector per row), so J itself is never stored.
  :class:`MatrixMap` is the same interface over a dense matrix.
- Only while d <= ``FULL_MAX_D`` (1024) is J formed: 8 MiB in float64, built from d
  Jacobian-vector products, and its eigen-decomposition takes about a second. At
  d = 4096 (Llama 3.1 8B) a J would cost 4096 products and an O(d^3) non-symmetric eigensolve per
  map, so the spectra there are matrix-free: the top k and bottom k singular values by block
  Lanczos (full re-orthogonalisation, thick restarts) on the Gram operator J^T J (the bottom ones
  resolved only down to about sqrt(tol) * sigma_max, see ``extreme_singular_values``), and the
  Frobenius ratios by Hutchinson's estimator. Memory is then O(d * m): a Lanczos basis and its
  image of m <= max(10 (k + 4), 200) vectors (13 MiB at d = 4096), never O(d^2); the map itself
  holds ``batch`` copies of one evaluation.
- The measures of one J (``dense_measures`` / ``estimated_measures``): singular values
  (expansion above 1, contraction below); eigenvalues where J is formed (spectral radius, the
  complex-conjugate pairs and their rotation angles arg(lambda)); non-normality
  ||J J^T - J^T J||_F / ||J||_F^2 (0 exactly for normal maps); the share of the antisymmetric
  part ||(J - J^T)/2||_F^2 / ||J||_F^2 (0 for symmetric maps, 1 for skew ones). A residual map's J
  is I plus the update's Jacobian, and I dominates both ratios, so each is also given for J - I
  (the ``*_update`` entries).
- Finite-time Lyapunov exponents (:func:`finite_time_lyapunov`): the QR method. A k-frame is
  pushed through J_1, J_2, ..., J_T and re-orthonormalised after every step; exponent i is
  (1/T) sum_t log|R_t[i, i]| (per transition). From a random frame the exponents of a short
  trajectory depend on the frame; started from the top right singular vectors of the product
  J_T ... J_1 (``frame="product"``: block Lanczos on the product, then orthogonal iteration)
  they are (1/T) log sigma_i(J_T ... J_1), the finite-time exponents proper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

# Largest d for which J (d x d) is formed; above it every spectrum is matrix-free.
FULL_MAX_D = 1024
WORK_DTYPE = torch.float64  # the linear algebra on top of the maps


def default_tolerance(dtype: torch.dtype) -> float:
    """Lanczos residual tolerance (relative to the largest eigenvalue) the map's dtype can meet:
    1.5e-10 for float64, 3.5e-6 for float32, 8.8e-4 for bfloat16."""
    return 0.01 * math.sqrt(torch.finfo(dtype).eps)


class Linearisation:
    """J = df/dx at ``x`` for a map f: R^d -> R^d, applied to blocks of column vectors (d, m).

    ``batched=True``: ``fn`` maps (B, d) to (B, d) row by row (rows independent, as the model's
    sublayer maps on B copies of a text); otherwise ``fn`` maps (d,) to (d,) and is vmapped.
    ``batch`` rows go through ``fn`` at a time (memory: ``batch`` copies of one evaluation).
    The products run in ``x``'s dtype; inputs and results are float64 on ``x``'s device.
    """

    def __init__(self, fn: Callable, x: torch.Tensor, *, batched: bool = False, batch: int = 64):
        self.fn = fn if batched else torch.func.vmap(fn)
        self.x = x.detach()
        self.d = int(x.shape[-1])
        self.dtype = x.dtype
        self.device = x.device
        self.batch = max(1, int(batch))
        self._vjp: tuple[int, Callable] | None = None

    def _points(self, rows: int) -> torch.Tensor:
        return self.x.reshape(1, self.d).repeat(rows, 1)

    def _chunks(self, block: torch.Tensor):
        for start in range(0, block.shape[1], self.batch):
            yield block[:, start : start + self.batch].T.to(self.dtype).contiguous()

    def apply(self, block: torch.Tensor) -> torch.Tensor:
        """J @ block for a (d, m) block, by forward-mode products (torch.func.jvp)."""
        out = []
        for tangents in self._chunks(block):
            # no_grad: the model's parameters need no graph; torch.func's own levels ignore it.
            with torch.no_grad():
                _, product = torch.func.jvp(self.fn, (self._points(len(tangents)),), (tangents,))
            out.append(product.detach().to(WORK_DTYPE).T)
        return torch.cat(out, dim=1)

    def apply_t(self, block: torch.Tensor, keep: bool = True) -> torch.Tensor:
        """J^T @ block for a (d, m) block, by reverse-mode products (torch.func.vjp). With ``keep``
        the evaluation's graph is kept for the next call (Lanczos calls it many times); else it is
        dropped after this call (bounded memory along a long trajectory)."""
        rows = min(self.batch, block.shape[1])
        if self._vjp is None or self._vjp[0] < rows:
            with torch.no_grad():
                self._vjp = (rows, torch.func.vjp(self.fn, self._points(rows))[1])
        size, vjp_fn = self._vjp
        out = []
        for cotangents in self._chunks(block):
            n = len(cotangents)
            padded = torch.cat([cotangents, cotangents.new_zeros(size - n, self.d)])
            with torch.no_grad():
                out.append(vjp_fn(padded)[0][:n].detach().to(WORK_DTYPE).T)
        if not keep:
            self.release()
        return torch.cat(out, dim=1)

    def release(self) -> None:
        """Drop the kept reverse-mode graph."""
        self._vjp = None

    def matrix(self) -> torch.Tensor:
        """J as a (d, d) float64 matrix (only for small d: d products)."""
        return self.apply(torch.eye(self.d, dtype=WORK_DTYPE, device=self.device))


class MatrixMap:
    """The Linearisation interface over a dense matrix (a linear map's Jacobian is itself)."""

    def __init__(self, matrix):
        self.a = torch.as_tensor(np.asarray(matrix) if not torch.is_tensor(matrix) else matrix)
        self.a = self.a.to(WORK_DTYPE)
        self.d = int(self.a.shape[0])
        self.dtype = WORK_DTYPE
        self.device = self.a.device

    def apply(self, block: torch.Tensor) -> torch.Tensor:
        return self.a @ block

    def apply_t(self, block: torch.Tensor, keep: bool = True) -> torch.Tensor:
        return self.a.T @ block

    def release(self) -> None:
        pass

    def matrix(self) -> torch.Tensor:
        return self.a


def as_operator(obj):
    """A Linearisation/MatrixMap as is; a matrix (tensor or array) as a MatrixMap."""
    return obj if hasattr(obj, "apply_t") else MatrixMap(obj)


def orthonormal(block: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(block).Q


def random_frame(d: int, k: int, seed: int, device=None) -> torch.Tensor:
    """A seeded (d, k) orthonormal frame (Gaussian, then QR)."""
    generator = torch.Generator().manual_seed(int(seed))
    return orthonormal(torch.randn(d, k, generator=generator, dtype=WORK_DTYPE)).to(device)


@dataclass
class Eigenpairs:
    values: torch.Tensor  # (k,) descending
    vectors: torch.Tensor  # (d, k)
    residual: float  # largest ||G y - theta y|| / theta_max reached
    applies: int  # operator applications (blocks)


def top_eigenpairs_psd(
    apply: Callable[[torch.Tensor], torch.Tensor],
    d: int,
    k: int,
    *,
    tol: float = 1e-10,
    block: int | None = None,
    max_basis: int | None = None,
    max_applies: int = 300,
    stall: int = 25,
    seed: int = 0,
    device=None,
) -> Eigenpairs:
    """The k largest eigenvalues of a symmetric positive semi-definite operator given only its
    action on (d, m) blocks: block Lanczos with full re-orthogonalisation (each step adds the
    residuals G y - theta y of the leading Ritz pairs, which spans the same Krylov space) and
    thick restarts. Stops when every residual of the k pairs is below ``tol * theta_max`` (then
    |theta - lambda| <= that residual, and typically <= residual^2 / gap), or when the residual
    has not halved over ``stall`` applications once below sqrt(tol) (the operator's rounding
    floor); a warning says where it stopped short of ``tol``."""
    k = min(k, d)
    block = min(d, block or k + max(4, k // 2))
    max_basis = min(d, max_basis or max(10 * block, 200))
    basis = random_frame(d, block, seed, device)
    images = apply(basis)
    applies, history = 1, []
    while True:
        gram = basis.T @ images
        theta, rotation = torch.linalg.eigh((gram + gram.T) / 2)
        theta, rotation = theta.flip(0), rotation.flip(1)
        lead = min(block, basis.shape[1])
        ritz = basis @ rotation[:, :lead]
        resid = images @ rotation[:, :lead] - ritz * theta[:lead]
        scale = max(float(theta[0].abs()), torch.finfo(WORK_DTYPE).tiny)
        residual = float(resid[:, :k].norm(dim=0).max()) / scale
        values, vectors = theta[:k], ritz[:, :k]
        history.append(residual)
        # Stalled, already small: the operator's own rounding floor (e.g. float32 norms in a
        # float64 model) is reached. Larger residuals may plateau before Lanczos converges.
        stalled = (
            len(history) > stall
            and residual < math.sqrt(tol)
            and residual > 0.5 * history[-stall - 1]
        )
        if residual <= tol or basis.shape[1] >= d or applies >= max_applies or stalled:
            break
        if basis.shape[1] + block > max_basis:  # thick restart on the leading Ritz vectors
            keep = max(lead, max_basis - block)
            basis, images = basis @ rotation[:, :keep], images @ rotation[:, :keep]
        new = resid - basis @ (basis.T @ resid)
        new = new - basis @ (basis.T @ new)
        # Directions already in the basis (to rounding) would only add noise.
        fresh = new.norm(dim=0) > 1e-10 * resid.norm(dim=0).clamp(min=torch.finfo(WORK_DTYPE).tiny)
        q, r = torch.linalg.qr(new[:, fresh] / new[:, fresh].norm(dim=0))
        q = q[:, r.diagonal().abs() > 1e-8][:, : d - basis.shape[1]]
        if q.shape[1] == 0:
            break
        basis, images = torch.cat([basis, q], 1), torch.cat([images, apply(q)], 1)
        applies += 1
    if residual > tol and basis.shape[1] < d:  # a basis of all R^d is exact whatever the residual
        log.warning(
            "block Lanczos stopped at relative residual %.2e above its tolerance %.2e after %d "
            "applications (d = %d, k = %d)",
            residual,
            tol,
            applies,
            d,
            k,
        )
    return Eigenpairs(values, vectors, residual, applies)


@dataclass
class SingularValues:
    top: torch.Tensor  # (k,) descending
    bottom: torch.Tensor  # (k,) ascending
    bottom_bound: float  # worst-case absolute error of ``bottom``
    residual: float  # the larger of the two Lanczos runs' relative residuals


def extreme_singular_values(
    op, k: int, *, tol: float | None = None, seed: int = 0, **lanczos
) -> SingularValues:
    """The top k and bottom k singular values of J, matrix-free.

    Top: block Lanczos on J^T J (relative accuracy about tol, typically far better). Bottom:
    the same on c I - J^T J with c just above sigma_max^2 (its top eigenvalues are
    c - sigma_min^2), so no inverse is needed. Squaring costs resolution there: the absolute
    error of a bottom value is at most sqrt(residual * c), about sqrt(tol) * sigma_max
    (``bottom_bound``); a float32 map cannot resolve values far below 1e-3 sigma_max."""
    op = as_operator(op)
    tol = default_tolerance(op.dtype) if tol is None else tol

    def gram(block):
        return op.apply_t(op.apply(block))

    common = dict(tol=tol, seed=seed, device=op.device, **lanczos)
    top = top_eigenpairs_psd(gram, op.d, k, **common)
    shift = float(top.values[0]) * 1.01 + torch.finfo(WORK_DTYPE).tiny
    bottom = top_eigenpairs_psd(lambda b: shift * b - gram(b), op.d, k, **common)
    return SingularValues(
        top=top.values.clamp(min=0).sqrt(),
        bottom=(shift - bottom.values).clamp(min=0).sqrt(),
        bottom_bound=math.sqrt(bottom.residual * shift),
        residual=max(top.residual, bottom.residual),
    )


def frobenius_ratios(j: torch.Tensor) -> dict[str, float]:
    """Non-normality ||J J^T - J^T J||_F / ||J||_F^2 and the antisymmetric share
    ||(J - J^T)/2||_F^2 / ||J||_F^2 of a dense J."""
    norm2 = float((j * j).sum())
    commutator = j @ j.T - j.T @ j
    return {
        "non_normality": float(commutator.norm()) / norm2,
        "antisymmetric_share": float((((j - j.T) / 2) ** 2).sum()) / norm2,
    }


def rotation_angles(eigenvalues: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """The rotation angles arg(lambda) in (0, pi) of the complex-conjugate pairs, one per pair
    (the member with positive imaginary part), in order of decreasing modulus."""
    eigenvalues = torch.as_tensor(eigenvalues)
    scale = max(float(eigenvalues.abs().max()), 1.0) if eigenvalues.numel() else 1.0
    upper = eigenvalues[eigenvalues.imag > tol * scale]
    upper = upper[torch.argsort(upper.abs(), descending=True)]
    return torch.angle(upper)


def eigen_measures(j: torch.Tensor, k: int, tol: float = 1e-9) -> dict:
    """Eigenvalue measures of a dense J: spectral radius, the k largest |lambda| and their
    arg(lambda), the share of eigenvalues in complex pairs and the pairs' mean and largest angle."""
    eigenvalues = torch.linalg.eigvals(j)
    order = torch.argsort(eigenvalues.abs(), descending=True)
    top = eigenvalues[order][:k]
    angles = rotation_angles(eigenvalues, tol)
    return {
        "spectral_radius": float(eigenvalues.abs().max()),
        "eig_modulus": top.abs().numpy(force=True),
        "eig_angle": torch.angle(top).numpy(force=True),
        "complex_share": 2 * len(angles) / len(eigenvalues),
        "rotation_angle_mean": float(angles.mean()) if len(angles) else 0.0,
        "rotation_angle_max": float(angles.max()) if len(angles) else 0.0,
    }


def dense_measures(j: torch.Tensor, k: int) -> dict:
    """Every measure of one formed J (see the module docstring), singular values exact."""
    sigma = torch.linalg.svdvals(j)
    identity = torch.eye(j.shape[0], dtype=j.dtype, device=j.device)
    out = {
        "sigma_top": sigma[:k].numpy(force=True),
        "sigma_bottom": sigma.flip(0)[:k].numpy(force=True),
        "sigma_bottom_bound": 0.0,
        "lanczos_residual": 0.0,
    }
    out |= frobenius_ratios(j) | eigen_measures(j, k)
    out |= {f"{name}_update": v for name, v in frobenius_ratios(j - identity).items()}
    return out


def estimated_frobenius_ratios(op, probes: int = 32, seed: int = 0) -> dict[str, float]:
    """The Frobenius ratios of ``frobenius_ratios`` (and of J - I), matrix-free: Hutchinson's
    estimator ||A||_F^2 ~ mean ||A z||^2 over Gaussian probes z, with A = J, J J^T - J^T J and
    (J - J^T)/2. Four products per probe block; relative error about sqrt(2 / probes) at worst
    and far smaller when J has many comparable singular values."""
    op = as_operator(op)
    generator = torch.Generator().manual_seed(int(seed))
    z = torch.randn(op.d, probes, generator=generator, dtype=WORK_DTYPE).to(op.device)
    jz, jtz = op.apply(z), op.apply_t(z)
    commutator = op.apply(jtz) - op.apply_t(jz)

    def sq(a):
        return float((a * a).sum()) / probes

    # For J - I: (J-I)(J-I)^T - (J-I)^T(J-I) = J J^T - J^T J, and the antisymmetric part is J's.
    norm2, norm2_update = sq(jz), sq(jz - z)
    anti = sq((jz - jtz) / 2)
    return {
        "non_normality": math.sqrt(sq(commutator)) / norm2,
        "antisymmetric_share": anti / norm2,
        "non_normality_update": math.sqrt(sq(commutator)) / norm2_update,
        "antisymmetric_share_update": anti / norm2_update,
    }


def estimated_measures(op, k: int, *, probes: int = 32, seed: int = 0, **lanczos) -> dict:
    """The matrix-free measures of one J: extreme singular values and the Frobenius ratios.
    Eigenvalue measures are NaN (they need J formed), and so is any bottom singular value not
    above its error bound (``sigma_bottom_bound`` is then an upper limit for it)."""
    sigma = extreme_singular_values(op, k, seed=seed, **lanczos)
    bottom = sigma.bottom.numpy(force=True)
    nan_k = np.full(min(k, op.d), np.nan)
    out = {
        "sigma_top": sigma.top.numpy(force=True),
        "sigma_bottom": np.where(bottom > sigma.bottom_bound, bottom, np.nan),
        "sigma_bottom_bound": sigma.bottom_bound,
        "lanczos_residual": sigma.residual,
        "spectral_radius": np.nan,
        "eig_modulus": nan_k,
        "eig_angle": nan_k,
        "complex_share": np.nan,
        "rotation_angle_mean": np.nan,
        "rotation_angle_max": np.nan,
    }
    return out | estimated_frobenius_ratios(op, probes, seed)


def local_measures(op, k: int, *, full_max_d: int = FULL_MAX_D, **matrix_free) -> dict:
    """``dense_measures`` where d <= full_max_d, else ``estimated_measures``."""
    op = as_operator(op)
    if op.d <= full_max_d:
        return dense_measures(op.matrix(), k)
    return estimated_measures(op, k, **matrix_free)


@dataclass
class Lyapunov:
    exponents: np.ndarray  # (k,) per transition
    stretch: np.ndarray  # (T, k) log|R_t[i, i]| at each step


class ProductMap:
    """P = J_T ... J_1 (times ``scale`` per step, against overflow) as an operator."""

    def __init__(self, ops: Sequence, scale: float = 1.0):
        self.ops, self.scale = ops, scale
        self.d, self.dtype, self.device = ops[0].d, ops[0].dtype, ops[0].device

    def apply(self, block: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            block = op.apply(block) * self.scale
        return block

    def apply_t(self, block: torch.Tensor, keep: bool = False) -> torch.Tensor:
        for op in reversed(self.ops):
            block = op.apply_t(block, keep=False) * self.scale
        return block


def qr_pass(ops: Sequence, frame: torch.Tensor) -> torch.Tensor:
    """Push a frame through the ops with QR after each step; (T, k) log|R_t[i, i]|."""
    stretch = []
    for op in ops:
        frame, r = torch.linalg.qr(op.apply(frame))
        stretch.append(r.diagonal().abs().log())
    return torch.stack(stretch)


def product_frame(
    ops: Sequence, k: int, *, seed: int = 0, refine: int = 2, tol: float | None = None
) -> torch.Tensor:
    """The top k right singular vectors of P = J_T ... J_1, in order, as a (d, k) frame.

    Block Lanczos on P^T P finds them fast where P's singular values are close (short products
    of near-identity maps); ``refine`` rounds of orthogonal iteration (forward with J, back with
    J^T, QR after every step) then settle directions whose values lie too far below the top for
    P^T P to resolve in floating point (long products), where that iteration is fast. P is
    rescaled so that its top singular value is about 1."""
    d = ops[0].d
    frame = random_frame(d, k, seed, ops[0].device)
    growth = float(qr_pass(ops, frame[:, :1])[:, 0].sum())
    product = ProductMap(ops, math.exp(-growth / len(ops)))
    tol = default_tolerance(ops[0].dtype) if tol is None else tol
    frame = top_eigenpairs_psd(
        lambda b: product.apply_t(product.apply(b)), d, k, tol=tol, seed=seed, device=frame.device
    ).vectors
    for _ in range(refine):
        for op in ops:
            frame = orthonormal(op.apply(frame))
        for op in reversed(ops):
            frame = orthonormal(op.apply_t(frame, keep=False))
    return frame


def finite_time_lyapunov(
    ops: Sequence,
    k: int,
    *,
    frame: str | torch.Tensor = "random",
    seed: int = 0,
    refine: int = 2,
    tol: float | None = None,
) -> Lyapunov:
    """The top k finite-time Lyapunov exponents of a trajectory's Jacobians J_1..J_T (operators
    or matrices) by the QR method: exponent i = (1/T) sum_t log|R_t[i, i]|.

    ``frame="random"``: the classic method from a seeded random frame; on a long trajectory the
    exponents converge to the Lyapunov spectrum, with an O(1/T) transient. ``frame="product"``:
    from the top right singular vectors of the product (``product_frame``), so the exponents are
    (1/T) log sigma_i(J_T ... J_1) for any T (the finite-time exponents proper, independent of
    any seed). Or a (d, k) orthonormal frame of one's own."""
    ops = [as_operator(op) for op in ops]
    k = min(k, ops[0].d)
    if isinstance(frame, str):
        if frame == "product":
            frame = product_frame(ops, k, seed=seed, refine=refine, tol=tol)
        elif frame == "random":
            frame = random_frame(ops[0].d, k, seed, ops[0].device)
        else:
            raise ValueError(f"frame: {frame!r}; use 'random', 'product' or a (d, k) frame")
    stretch = qr_pass(ops, frame).numpy(force=True)
    return Lyapunov(stretch.mean(axis=0), stretch)

"""What the mutual-information estimators share: column-pair input, the torch batching of the
KDE paths, and their constants.

- :func:`as_columns`: x and y as matching (N, P) float64 arrays, one pair per column;
- :func:`fft_size` and :func:`run_batches`: FFT lengths and the thread-spread batch loop used by
  both the fixed-grid (:mod:`residual_dynamics.analysis.mi_estimators`) and the grid-free
  (:mod:`residual_dynamics.analysis.mi_kde_auto`) evaluations of :func:`mi_kde`;
- :func:`column_moments`: per-pair covariance entries, ranges and usability (both KDE paths).
- :data:`MAX_BATCH_CELLS`, :data:`SINGULAR`, :data:`COMPUTE_DTYPE`: the batch cell cap, the
  singular-covariance threshold and the dtype of the heavy arrays.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = [
    "COMPUTE_DTYPE",
    "MAX_BATCH_CELLS",
    "SINGULAR",
    "as_columns",
    "column_moments",
    "fft_size",
    "run_batches",
]

# Largest float32 working array per batch (cells) on CPU: bounds memory whatever batch_size says,
# and keeps a batch's arrays cache-sized (~8 MB; 2^21 measured fastest of 2^18..2^24, with up to
# 1.5x between them). On CUDA, where launch overhead rather than cache dominates, 16x that.
MAX_BATCH_CELLS = 1 << 21
# 1 - r^2 at or below this makes the kernel covariance numerically singular (gaussian_kde raises).
SINGULAR = 1e-12
# Heavy arrays (bins, kernel matmul, FFT, density) are float32: against float64 the MI moves by
# < 1e-5 nats, and float64 is 2.2x slower. Statistics and positions are always float64.
COMPUTE_DTYPE = torch.float32


def as_columns(x, y) -> tuple[np.ndarray, np.ndarray]:
    """x and y as (N, P) float64 arrays of one shape, one pair per column (1-D: one pair)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if y.ndim == 1:
        y = y[:, None]
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must both be (N, P); got {x.shape} and {y.shape}")
    return x, y


def fft_size(n: int) -> int:
    """Smallest 2^k or 3 * 2^k >= n: lengths pocketfft and cuFFT handle fastest."""
    p2 = 1 << max(0, (n - 1).bit_length())
    return 3 * p2 // 4 if 3 * p2 // 4 >= n else p2


def run_batches(run, batches: list, dev: torch.device) -> None:
    """Call ``run(batch)`` for every batch, spread over Python threads on a multi-core CPU."""
    threads = torch.get_num_threads() if dev.type == "cpu" else 1
    if threads > 1 and len(batches) > 1:
        # Many small tensor ops per batch scale poorly inside torch; whole batches on separate
        # Python threads (torch releases the GIL) with one torch thread each scale better
        # (measured: 2 cores, 1.15x over torch's own 2 threads).
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run, batches))
        finally:
            torch.set_num_threads(threads)
    else:
        for cols in batches:
            run(cols)


def column_moments(x: np.ndarray, y: np.ndarray):
    """Per column pair: (usable, cxx, cyy, cxy, xlo, xhi, ylo, yhi), the unbiased (ddof = 1)
    covariance entries (as gaussian_kde builds its kernel) and ranges. Unusable pairs (non-finite,
    constant or near-singular) are parked on harmless values so nothing downstream warns."""
    n = x.shape[0]
    with np.errstate(all="ignore"):
        xc = x - x.mean(axis=0)
        yc = y - y.mean(axis=0)
        cxx = np.einsum("ij,ij->j", xc, xc) / (n - 1)
        cyy = np.einsum("ij,ij->j", yc, yc) / (n - 1)
        cxy = np.einsum("ij,ij->j", xc, yc) / (n - 1)
        del xc, yc
        xlo, xhi = x.min(axis=0), x.max(axis=0)
        ylo, yhi = y.min(axis=0), y.max(axis=0)
        usable = np.isfinite(cxx + cyy + cxy + xlo + xhi + ylo + yhi)
        usable &= (xhi > xlo) & (yhi > ylo) & (cxx > 0) & (cyy > 0)
        usable &= 1.0 - cxy * cxy / (cxx * cyy) > SINGULAR
    park = lambda a, b: np.where(usable, a, b)  # noqa: E731 (harmless values for unusable pairs)
    return (
        usable,
        park(cxx, 1.0),
        park(cyy, 1.0),
        park(cxy, 0.0),
        park(xlo, 0.0),
        park(xhi, 1.0),
        park(ylo, 0.0),
        park(yhi, 1.0),
    )

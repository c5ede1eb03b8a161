"""The seeded bootstrap over texts that every curve and claim value carries.

One resampling plan per (number of texts, replicates, seed): multinomial counts, replicate by
replicate, so that two recordings of the same texts (a model and its untrained twin, a recording
and its matched random walk) are resampled identically and their contrast is a paired bootstrap.
Curves are weighted means over texts (a replicate's counts are its weights); correlations come
from weighted moments, so no replicate re-reads the store.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def text_weights(n: int, replicates: int, seed: int = 0) -> np.ndarray:
    """Counts (replicates, n): row b is how often each text is drawn in replicate b (sums to n)."""
    if replicates <= 0 or n <= 0:
        return np.zeros((0, max(n, 0)), np.uint16)
    rng = np.random.default_rng([seed, n])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.uint16)


def resample_indices(n: int, replicates: int, seed: int = 0) -> np.ndarray:
    """Indices (replicates, n) drawn with replacement: the same plan as text_weights's counts."""
    weights = text_weights(n, replicates, seed)
    return (
        np.stack([np.repeat(np.arange(n), row) for row in weights])
        if len(weights)
        else (np.zeros((0, n), np.int64))
    )


def weighted_curves(per_sample: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Replicates (B, T) of the mean over texts of per-sample values (n, T); NaN rows left out."""
    values = np.asarray(per_sample, np.float64)
    finite = np.isfinite(values)
    w = np.asarray(weights, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ np.where(finite, values, 0.0)) / (w @ finite)


def interval(replicates, level: float = LEVEL, axis: int = 0):
    """Percentile interval (low, high) of bootstrap replicates along ``axis`` (NaN left out);
    None where fewer than 10 finite replicates."""
    reps = np.asarray(replicates, np.float64)
    if reps.ndim == 1:
        finite = reps[np.isfinite(reps)]
        if finite.size < 10:
            return None
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(finite, [tail, 100 - tail])
        return [float(low), float(high)]
    moved = np.moveaxis(reps, axis, 0)
    tail = 100 * (1 - level) / 2
    enough = np.isfinite(moved).sum(axis=0) >= 10
    with np.errstate(invalid="ignore"), _quiet():
        low = np.nanpercentile(moved, tail, axis=0)
        high = np.nanpercentile(moved, 100 - tail, axis=0)
    low = np.where(enough, low, np.nan)
    high = np.where(enough, high, np.nan)
    return low, high


def correlation_from_moments(
    count: np.ndarray, s1: np.ndarray, s2: np.ndarray, cross: np.ndarray
) -> np.ndarray:
    """Per-unit correlations between consecutive sublayers from weighted moments.

    count (..., units), s1 and s2 (..., S, units) the weighted sums of y and y², cross
    (..., S - 1, units) of y_s y_{s+1} (y shifted per unit: correlations do not change).
    Returns (..., S - 1, units); NaN where a unit is constant in a replicate."""
    with np.errstate(invalid="ignore", divide="ignore"):
        c = count[..., None, :]
        mean = s1 / c
        var = s2 / c - mean**2
        cov = cross / c - mean[..., :-1, :] * mean[..., 1:, :]
        scale = np.abs(mean) ** 2 + var
        var = np.where(var > 1e-12 * np.maximum(scale, 1e-300), var, np.nan)
        r = cov / np.sqrt(var[..., :-1, :] * var[..., 1:, :])
    return np.clip(r, -1.0, 1.0)


class _quiet:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)

"""Rotation counts of unit phase portraits (the paper's Figure 2) against honest null models.

For every unit the paper plots x = its mean activation per sublayer against y = dx/dl
(``np.gradient`` over sublayers) and counts how often the curve turns:

1. centre x and y at their first point;
2. take the tangent vectors between consecutive points and their angles ``atan2(dy, dx)``;
3. wrap the differences of consecutive angles to (-pi, pi] and sum them; R = sum / (2 pi).

R is the total turning of the tangent from the first segment to the last, signed
(counter-clockwise positive). A curve that closes with its last segment parallel to its first
gives an integer, its turning number.

The paper's null permutes the order of the (x, y) point pairs and reports a mean of about 0. That
null is signed and symmetric by construction (reversing a sequence negates R, and a permutation and
its reverse are equally likely), so it says nothing about |R|. Worse, any noisy sequence plotted
against its own derivative turns a lot: a 64-step Gaussian random walk gives |R| of about 11, the
paper's headline value, and it turns clockwise (where y > 0, x grows, so the curve moves right
above the axis and left below it). The surrogate nulls here keep each unit's autocorrelation
(a random walk with the unit's step size, a fitted AR(1), a phase-randomised copy with the same
power spectrum) and ask whether a unit turns more than sequences like it.

A claim that units rotate more than such sequences must pass every one of these nulls
(``rotation_power.every_null_rule``: an exact one-sided binomial test of the fraction of units
beyond each null's 95th percentile, Bonferroni over the nulls, and the fraction's 95 % interval
above 5 %). The power study (``benchmarks/rotation_power.py``) shows what that can register: R
counts, roughly, half the local extrema of a sequence, so a smooth orbit turns LESS than its noisy
surrogates, and a phase-randomised copy of a stationary oscillation on the DFT grid is the
oscillation again. ``rotation_testable`` plants the recipe's best case at a recording's own size
and says whether the recipe registers it.

All random draws come from ``np.random.default_rng(seed)`` and are made unit by unit in a fixed
order, so results depend on the seed only, not on how units are chunked to bound memory.
"""

from __future__ import annotations

import math

import numpy as np

from residual_dynamics.analysis.rotation_power import (
    CALIBRATION,
    CALIBRATION_MAX_UNITS,
    MIN_POWER,
    REQUIRED_NULLS,
    beyond_test,
    describe_planted,
    every_null_rule,
    planted_units,
)

SURROGATE_KINDS = ("random_walk", "ar1", "phase")

# Elements in one chunk's largest array (8 MiB of float64). Measured: chunks this small run about
# twice as fast as 128 MiB ones (they stay in cache and malloc reuses them), and bound memory.
_CHUNK_ELEMENTS = 1 << 20

Seed = int | np.random.SeedSequence | None


def _check_means(means: np.ndarray) -> np.ndarray:
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2:
        raise ValueError(f"means must be (n_sublayers, n_units), got shape {means.shape}")
    if means.shape[0] < 3:
        # Two turning angles need at least three points.
        raise ValueError(f"need at least 3 sublayers, got {means.shape[0]}")
    return means


def phase_portrait(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phase portrait per unit: x = mean activation per sublayer, y = its gradient over sublayers.

    ``means`` is (n_sublayers, n_units); x and y have the same shape.
    """
    x = _check_means(means)
    return x.copy(), np.gradient(x, axis=0)


def _winding(theta: np.ndarray) -> np.ndarray:
    """Sum of the wrapped differences of consecutive angles (last axis), divided by 2 pi.

    Each difference of two atan2 outputs lies in [-2 pi, 2 pi]; wrapping it to (-pi, pi] adds
    -2 pi (above pi) or +2 pi (at or below -pi). The raw differences telescope, so the sum is the
    last angle minus the first plus 2 pi per wrap: the same number as summing wrapped differences,
    about twice as fast on the null's arrays (measured).
    """
    d = np.diff(theta, axis=-1)
    wraps = np.count_nonzero(d <= -np.pi, axis=-1) - np.count_nonzero(d > np.pi, axis=-1)
    return (theta[..., -1] - theta[..., 0]) / (2.0 * np.pi) + wraps


def _turning_last(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """R along the LAST axis (sequence axis last, contiguous, is the fast layout for chunks)."""
    # Centring is a translation, which the differences remove; kept to follow the paper's recipe.
    dx = np.diff(x - x[..., :1], axis=-1)
    dy = np.diff(y - y[..., :1], axis=-1)
    theta = np.arctan2(dy, dx, out=dx)
    del dy
    return _winding(theta)


def rotation_count(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed rotation count R (counter-clockwise positive) of each unit's (x, y) curve.

    x, y: (..., n_sublayers, n_units); returns (..., n_units). Zero-length steps get the angle
    atan2(0, 0) = 0, as in the paper's recipe.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y shapes differ: {x.shape} vs {y.shape}")
    if x.ndim < 2 or x.shape[-2] < 3:
        raise ValueError(f"need (..., n_sublayers >= 3, n_units), got shape {x.shape}")
    return _turning_last(np.moveaxis(x, -2, -1), np.moveaxis(y, -2, -1))


def _chunks(n_units: int, size: int | None, per_unit: int):
    """Slices of units; ``size`` None picks about _CHUNK_ELEMENTS values per array."""
    if size is None:
        size = _CHUNK_ELEMENTS // max(1, per_unit)
    size = max(1, int(size))
    for start in range(0, n_units, size):
        yield slice(start, min(start + size, n_units))


def _random_permutations(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> np.ndarray:
    """Uniform random permutations of range(n) along the last axis of an array of ``shape``.

    Sorting random keys gives a uniform permutation; packing the index into the low bits of a
    random 64-bit key lets one in-place integer sort (SIMD in numpy) replace ``argsort``, and
    makes ties impossible. Keys agree in their random high bits with probability about
    n**2 / 2**(63 - bits), negligible, and only then is the order the index order.
    """
    bits = max(1, (n - 1).bit_length())
    keys = rng.integers(0, 1 << (63 - bits), size=(*shape, n), dtype=np.int64)
    keys <<= bits
    keys |= np.arange(n, dtype=np.int64)
    keys.sort(axis=-1)
    keys &= (1 << bits) - 1
    return keys


def pair_shuffle_null(
    x: np.ndarray,
    y: np.ndarray,
    n_perm: int = 1000,
    seed: Seed = 0,
    chunk_units: int | None = None,
) -> np.ndarray:
    """The paper's null: R after permuting the order of each unit's (x, y) point pairs.

    x and y are permuted together (the gradient is not recomputed), independently per unit and
    permutation. x, y: (n_sublayers, n_units); returns signed R, (n_perm, n_units). Peak memory
    is about four arrays of n_perm * n_sublayers * chunk_units 8-byte values; None picks about
    2**20 values per array (16 units at 1000 permutations of 64 sublayers, 8 MiB; 256 units would
    be 128 MiB and slower). The result does not depend on chunk_units.
    """
    x = _check_means(x)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y shapes differ: {x.shape} vs {y.shape}")
    n_sub, n_units = x.shape
    rng = np.random.default_rng(seed)
    out = np.empty((n_perm, n_units))
    for sl in _chunks(n_units, chunk_units, n_perm * n_sub):
        cu = sl.stop - sl.start
        # Every tangent of a shuffled curve joins two of the unit's own points, so tabulate the
        # angles of all n_sub**2 point pairs once; each permutation then costs one gather
        # instead of two gathers, two differences and an arctan2 over n_perm times more values.
        xc = x[:, sl].T - x[None, 0, sl].T  # centred, (cu, n_sub), as in the paper's recipe
        yc = y[:, sl].T - y[None, 0, sl].T
        table = np.arctan2(
            yc[:, None, :] - yc[:, :, None], xc[:, None, :] - xc[:, :, None]
        ).ravel()  # table[u, i, j]: angle of the step from point i to point j
        # Unit-major layout: the generator's stream is consumed unit after unit, so the result
        # does not depend on chunk_units.
        perm = _random_permutations(rng, (cu, n_perm), n_sub)
        idx = perm[..., :-1] * n_sub
        idx += perm[..., 1:]
        del perm
        idx += (np.arange(cu, dtype=np.int64) * (n_sub * n_sub))[:, None, None]
        theta = table[idx]
        del idx
        out[:, sl] = _winding(theta).T
    return out


def _surrogates_last(xt: np.ndarray, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Surrogates for units xt (n_units, n_sublayers); returns (n_units, n, n_sublayers)."""
    cu, n_sub = xt.shape
    x0 = xt[:, :1, None]  # (cu, 1, 1)
    if kind == "random_walk":
        step_sd = np.std(np.diff(xt, axis=-1), axis=-1, ddof=1)
        steps = rng.standard_normal((cu, n, n_sub - 1)) * step_sd[:, None, None]
        out = np.empty((cu, n, n_sub))
        out[..., 0] = 0.0
        np.cumsum(steps, axis=-1, out=out[..., 1:])
        out += x0
        return out
    if kind == "ar1":
        mean = xt.mean(axis=-1, keepdims=True)
        xc = xt - mean
        denom = np.sum(xc * xc, axis=-1)
        num = np.sum(xc[:, 1:] * xc[:, :-1], axis=-1)
        # Lag-1 autocorrelation; |phi| <= 1 by Cauchy-Schwarz. A constant unit gets phi = 0.
        phi = np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)
        resid = xc[:, 1:] - phi[:, None] * xc[:, :-1]
        innov_sd = np.std(resid, axis=-1, ddof=1)
        eps = rng.standard_normal((cu, n, n_sub - 1)) * innov_sd[:, None, None]
        # Build in (n_sub, cu, n) so each recursion step writes one contiguous slab.
        z = np.empty((n_sub, cu, n))
        z[0] = xc[:, :1]  # start from the unit's own first point, as the random walk does
        phi_b = phi[:, None]
        for t in range(1, n_sub):
            np.multiply(z[t - 1], phi_b, out=z[t])
            z[t] += eps[..., t - 1]
        return np.ascontiguousarray(z.transpose(1, 2, 0)) + mean[:, :, None]
    if kind == "phase":
        spec = np.fft.rfft(xt, axis=-1)  # (cu, n_freq)
        n_freq = spec.shape[-1]
        phases = rng.random((cu, n, n_freq)) * (2.0 * np.pi)
        sur = np.abs(spec)[:, None, :] * np.exp(1j * phases)
        # DC (the mean) and, for even length, the Nyquist term must stay real for a real output;
        # keep them as they are.
        sur[..., 0] = spec[:, None, 0].real
        if n_sub % 2 == 0:
            sur[..., -1] = spec[:, None, -1].real
        return np.fft.irfft(sur, n=n_sub, axis=-1)
    raise ValueError(f"unknown surrogate kind {kind!r}; expected one of {SURROGATE_KINDS}")


def surrogate_sequences(means: np.ndarray, kind: str, n: int, seed: Seed = 0) -> np.ndarray:
    """n surrogate sequences per unit that keep the unit's autocorrelation structure.

    kind:
      * "random_walk": Gaussian steps with the unit's step std (std of diff, ddof=1), from x[0];
      * "ar1": AR(1) fitted to the demeaned unit (phi = lag-1 autocorrelation, innovation std =
        the fit's residual std), from x[0], around the unit's mean;
      * "phase": phase-randomised copy (same amplitude spectrum, DC and Nyquist terms kept). It is
        circular: a trending unit's surrogates lose the trend but keep its spectrum.

    means: (n_sublayers, n_units); returns (n, n_sublayers, n_units).
    """
    means = _check_means(means)
    if kind not in SURROGATE_KINDS:
        raise ValueError(f"unknown surrogate kind {kind!r}; expected one of {SURROGATE_KINDS}")
    rng = np.random.default_rng(seed)
    return _surrogates_last(means.T, kind, n, rng).transpose(1, 2, 0)


def surrogate_null(
    means: np.ndarray, kind: str, n: int = 200, seed: Seed = 0, chunk_units: int | None = None
) -> np.ndarray:
    """Signed R of each unit's surrogates, with y = np.gradient; returns (n, n_units).

    Equal to ``rotation_count`` of ``phase_portrait`` of ``surrogate_sequences`` with the same
    seed, computed in unit chunks so memory stays bounded.
    """
    means = _check_means(means)
    if kind not in SURROGATE_KINDS:
        raise ValueError(f"unknown surrogate kind {kind!r}; expected one of {SURROGATE_KINDS}")
    n_sub, n_units = means.shape
    rng = np.random.default_rng(seed)
    xt = means.T
    out = np.empty((n, n_units))
    for sl in _chunks(n_units, chunk_units, n * n_sub):
        seq = _surrogates_last(xt[sl], kind, n, rng)
        out[:, sl] = _turning_last(seq, np.gradient(seq, axis=-1)).T
    return out


def _json_float(v) -> float | None:
    """A plain float, or None for NaN/inf (JSON has no NaN)."""
    v = float(v)
    return v if math.isfinite(v) else None


def compare_to_null(r_units: np.ndarray, r_null: np.ndarray) -> dict:
    """Compare each unit's |R| with its null distribution of |R|.

    r_units: (n_units,) signed R. r_null: (n_null, n_units) per-unit null draws, or (n_null,)
    one null shared by all units. Returns per-unit arrays ``z`` ((|R| - mean) / std of the null's
    |R|; NaN where the null has no spread), ``percentile`` (100 x the fraction of null |R| below
    |R|, ties counted half), ``beyond95`` (|R| above the null's 95th percentile), ``null_mean_abs``,
    ``null_std_abs``, ``null_p95_abs``, and ``summary``, a JSON-ready dict of floats.

    ``binom_p_beyond95`` is the exact one-sided binomial p-value (``scipy.stats.binomtest``,
    alternative "greater") of ``n_beyond95``, the count beyond the 95th percentile, against 5 %;
    ``frac_beyond95_ci95`` is the fraction's two-sided 95 % Clopper-Pearson interval. Both treat
    units as independent (they are not quite; read them as a guide).
    """
    r_units = np.asarray(r_units, dtype=np.float64)
    r_null = np.asarray(r_null, dtype=np.float64)
    if r_units.ndim != 1:
        raise ValueError(f"r_units must be 1-D, got shape {r_units.shape}")
    if r_null.ndim == 1:
        r_null = r_null[:, None]
    if r_null.ndim != 2 or r_null.shape[1] not in (1, r_units.size):
        raise ValueError(f"r_null shape {r_null.shape} does not match {r_units.size} units")
    a = np.abs(r_units)
    a_null = np.abs(r_null)
    null_mean = a_null.mean(axis=0)
    null_std = a_null.std(axis=0, ddof=1) if a_null.shape[0] > 1 else np.zeros(a_null.shape[1])
    null_p95 = np.quantile(a_null, 0.95, axis=0)
    diff = a - null_mean
    z = np.divide(
        diff, null_std, out=np.full(np.broadcast(diff, null_std).shape, np.nan), where=null_std > 0
    )
    below = (a_null < a).mean(axis=0)
    ties = (a_null == a).mean(axis=0)
    percentile = 100.0 * (below + 0.5 * ties)
    beyond = a > null_p95
    n_units = a.size
    k = int(beyond.sum())
    test = beyond_test(k, n_units)
    summary = {
        "n_units": n_units,
        "n_null": int(r_null.shape[0]),
        "mean_r": _json_float(r_units.mean()),
        "mean_abs_r": _json_float(a.mean()),
        "null_mean_r": _json_float(r_null.mean()),
        "null_mean_abs_r": _json_float(a_null.mean()),
        "null_std_abs_r": _json_float(a_null.std(ddof=1) if a_null.size > 1 else 0.0),
        "n_beyond95": k,
        "frac_beyond95": test["frac_beyond95"],
        "frac_beyond95_ci95": test["frac_beyond95_ci95"],
        "expected_frac_beyond95": 0.05,
        "binom_p_beyond95": test["binom_p_beyond95"] if n_units else 1.0,
        "mean_z": _json_float(np.nanmean(z)) if np.isfinite(z).any() else None,
        "median_z": _json_float(np.nanmedian(z)) if np.isfinite(z).any() else None,
        "mean_percentile": _json_float(percentile.mean()),
    }
    return {
        "z": z,
        "percentile": percentile,
        "beyond95": beyond,
        "null_mean_abs": np.broadcast_to(null_mean, a.shape).copy(),
        "null_std_abs": np.broadcast_to(null_std, a.shape).copy(),
        "null_p95_abs": np.broadcast_to(null_p95, a.shape).copy(),
        "summary": summary,
    }


def _null_summaries(stat: np.ndarray, draws: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """compare_to_null for each null: (per-unit arrays by null, JSON summaries by null)."""
    per_unit, summaries = {}, {}
    for name, null in draws.items():
        cmp = compare_to_null(stat, null)
        summaries[name] = cmp.pop("summary")
        per_unit[name] = cmp
    return per_unit, summaries


def rotation_testable(
    n_sublayers: int,
    n_units: int,
    n_surrogates: int = 200,
    seed: Seed = 0,
    planted: dict | None = None,
    max_units: int = CALIBRATION_MAX_UNITS,
    min_power: float = MIN_POWER,
) -> dict:
    """Can the paper's recipe register a planted orbit, at this many sublayers, beyond its nulls?

    Plants ``min(n_units, max_units)`` units of ``planted`` (default ``CALIBRATION``: the power
    study's best case for R, fast damped spirals with observation noise at SNR 10; a dict with
    ``kind`` and ``planted_units`` parameters) over ``n_sublayers``, runs R against the random-walk,
    AR(1) and phase-randomised surrogate nulls with ``n_surrogates`` draws, and applies
    ``every_null_rule``. ``value`` is True only when every null is passed AND the power (the
    fraction of planted units beyond the strictest null) is at least ``min_power``; when False,
    the claim is "not comparable: not testable with the paper's measure at L sublayers" rather
    than "not reproduced". JSON-ready; depends on the seed, the sizes and ``planted`` only.
    """
    spec = dict(CALIBRATION if planted is None else planted)
    description = describe_planted(spec)
    kind = spec.pop("kind")
    n_sub, n = int(n_sublayers), min(int(n_units), int(max_units))
    if n < 1:
        raise ValueError(f"need at least one unit, got n_units={n_units}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    # Children built by key rather than ss.spawn, which would advance ss between calls.
    plant_ss, *null_ss = (
        np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, i))
        for i in range(1 + len(REQUIRED_NULLS))
    )
    means = planted_units(kind, n_sub, n, np.random.default_rng(plant_ss), **spec)
    r = rotation_count(*phase_portrait(means))
    draws = {
        k: surrogate_null(means, k, n=n_surrogates, seed=s)
        for k, s in zip(REQUIRED_NULLS, null_ss, strict=True)
    }
    rule = every_null_rule(_null_summaries(r, draws)[1])
    power = rule["frac_beyond95"]
    value = bool(rule["passes_every_null"] and power is not None and power >= min_power)
    where = f"{power:.0%} of {n} planted units beyond the strictest null ({rule['null']})"
    if value:
        reason = f"the paper's measure registers the planted orbits at {n_sub} sublayers: {where}"
    else:
        why = []
        if power is None or power < min_power:
            why.append(f"power below {min_power:.0%}")
        failed = [k for k, ok in rule["passes"].items() if not ok]
        if failed:
            why.append("the every-null rule fails (" + ", ".join(failed) + ")")
        reason = (
            f"not testable with the paper's measure at {n_sub} sublayers: {where}; "
            + "; ".join(why)
        )
    return {
        "value": value,
        "reason": reason,
        "power": power,
        "power_ci95": rule["frac_beyond95_ci95"],
        "planted": description,
        "n_units": n,
        "n_sublayers": n_sub,
        "n_surrogates": int(n_surrogates),
        "min_power": float(min_power),
        "strictest_null": rule["null"],
        "passes": rule["passes"],
        "passes_every_null": rule["passes_every_null"],
    }


def rotation_summary(
    means: np.ndarray,
    n_perm: int = 1000,
    n_surrogates: int = 200,
    seed: int = 0,
    calibrate: bool = True,
) -> dict:
    """Figure 2 in one call: per-unit R, the paper's pair-shuffle null and the surrogate nulls.

    Returns ``summary`` (JSON-ready), ``r`` (n_units,) signed, ``per_unit`` (per null: z,
    percentile, beyond95, null_mean_abs, null_std_abs, null_p95_abs) and ``r_null`` (per null:
    signed R draws, (n_draws, n_units), for the Figure 2B histograms).

    ``summary`` holds sizes, the units' R statistics and:

    * ``nulls``: each null's ``compare_to_null`` summary (count, fraction, exact one-sided
      binomial p and 95 % Clopper-Pearson interval of the units beyond its 95th percentile);
    * ``strictest``: ``every_null_rule`` over the random-walk, AR(1) and phase nulls: the null
      with the smallest fraction and ``passes_every_null`` (repeated at the top level);
    * ``testable``: ``rotation_testable`` at this recording's sublayers and units (None when
      ``calibrate`` is False).

    Each null draws from its own child of ``np.random.SeedSequence(seed)``, so adding a null or
    the calibration does not change the others.
    """
    means = _check_means(means)
    n_sub, n_units = means.shape
    x, y = phase_portrait(means)
    r = rotation_count(x, y)
    seeds = np.random.SeedSequence(seed).spawn(2 + len(SURROGATE_KINDS))
    r_null = {"pair_shuffle": pair_shuffle_null(x, y, n_perm=n_perm, seed=seeds[0])}
    for kind, ss in zip(SURROGATE_KINDS, seeds[1:-1], strict=True):
        r_null[kind] = surrogate_null(means, kind, n=n_surrogates, seed=ss)
    per_unit, null_summaries = _null_summaries(r, r_null)
    strictest = {"statistic": "abs_rotation_count", **every_null_rule(null_summaries)}
    summary = {
        "n_sublayers": int(n_sub),
        "n_units": int(n_units),
        "n_perm": int(n_perm),
        "n_surrogates": int(n_surrogates),
        "seed": int(seed),
        "mean_r": _json_float(r.mean()),
        "std_r": _json_float(r.std(ddof=1)) if n_units > 1 else None,
        "mean_abs_r": _json_float(np.abs(r).mean()),
        "median_abs_r": _json_float(np.median(np.abs(r))),
        "frac_clockwise": _json_float((r < 0).mean()),
        "nulls": null_summaries,
        "strictest": strictest,
        "passes_every_null": strictest["passes_every_null"],  # the claim's rule, at the top
        "testable": rotation_testable(n_sub, n_units, n_surrogates, seeds[-1])
        if calibrate
        else None,
    }
    return {"summary": summary, "r": r, "per_unit": per_unit, "r_null": r_null}

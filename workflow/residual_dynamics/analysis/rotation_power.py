"""Planted orbits and the every-null decision rule for the rotation claim (the paper's Figure 2).

Two things the rotation analysis needs besides the recipe itself (``rotations``):

* the decision rule: a fraction of units beyond a null's 95th percentile, its exact one-sided
  binomial test against the 5 % expected, its Clopper-Pearson interval, and ``every_null_rule``,
  which asks every autocorrelation-keeping null to be passed and names the strictest;
* planted trajectories with a known answer (``planted_units``): orbits (sinusoids, noisy
  sinusoids, units locked to a shared noisy oscillator, damped 2-D spirals) and negatives (white
  noise, Gaussian random walks with constant or growing steps, AR(1)). The power study
  (``benchmarks/rotation_power.py``) and the runtime power check (``rotations.rotation_testable``)
  plant them.

What the power study found (numbers in ``benchmarks/README.md``): the rotation count R counts,
roughly, half the local extrema of a unit's sequence, so any noisy surrogate turns more than a
smooth orbit, and a phase-randomised surrogate of a stationary oscillation on the DFT grid with a
random phase is, in distribution, the oscillation itself. The only planted orbits R separates from
all three surrogate nulls are nearly noiseless fast rotations (90-170 degrees per sublayer at 64
sublayers, 120-170 at 12; best at 150-170); observation noise at SNR 10 leaves 10-20 % of units
beyond the strictest null. ``CALIBRATION`` below is that best case, with that noise.

This module imports nothing from ``rotations`` (which imports it).
"""

from __future__ import annotations

import math

import numpy as np

# The surrogate nulls that keep a unit's autocorrelation; the claim must pass every one of them.
REQUIRED_NULLS = ("random_walk", "ar1", "phase")
ALPHA = 0.05
EXPECTED_FRAC = 0.05  # the fraction of units beyond a null's 95th percentile when the null holds

PLANTED_KINDS = (
    "sinusoid",
    "locked",
    "damped_spiral",
    "white",
    "random_walk",
    "ar1",
)

# The runtime power check's planted set: the recipe's best case in the power study (damped 2-D
# spirals turning 150-170 degrees per sublayer, one angle per unit), with observation noise at
# SNR 10 (noise variance a tenth of the signal's): recorded means are estimates, and a measure
# whose power vanishes at that noise cannot register a recorded orbit.
CALIBRATION = {
    "kind": "damped_spiral",
    "degrees": (150.0, 170.0),
    "decay": 0.2,
    "process_sd": 0.0,
    "snr": 10.0,
}
CALIBRATION_MAX_UNITS = 200
MIN_POWER = 0.5


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson (exact) interval for a binomial proportion k / n.

    Equal to ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method="exact")``; written
    out with beta quantiles: low = Beta(a/2; k, n - k + 1), high = Beta(1 - a/2; k + 1, n - k),
    with low 0 at k = 0 and high 1 at k = n. Its coverage is at least ``confidence`` for every
    true proportion.
    """
    from scipy import stats  # here: importing scipy.stats takes longer than a figure job's work

    k, n = int(k), int(n)
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = 1.0 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


def beyond_test(k: int, n: int, expected: float = EXPECTED_FRAC) -> dict:
    """Count, fraction, exact one-sided binomial p against ``expected`` and 95 % interval."""
    k, n = int(k), int(n)
    if n <= 0:
        return {
            "n_beyond95": k,
            "frac_beyond95": None,
            "frac_beyond95_ci95": None,
            "binom_p_beyond95": None,
        }
    from scipy import stats

    p = stats.binomtest(k, n, expected, alternative="greater").pvalue
    return {
        "n_beyond95": k,
        "frac_beyond95": k / n,
        "frac_beyond95_ci95": list(binomial_interval(k, n)),
        "binom_p_beyond95": float(p),
    }


def every_null_rule(nulls: dict, required=REQUIRED_NULLS, alpha: float = ALPHA) -> dict:
    """The strictest of the required nulls and whether every one of them is passed.

    ``nulls[name]`` holds ``n_units``, ``n_beyond95``, ``frac_beyond95``, ``frac_beyond95_ci95``
    and ``binom_p_beyond95`` (``compare_to_null``'s summary). A null is passed when its exact
    one-sided binomial p is below alpha / len(required) (Bonferroni over the nulls) AND the lower
    end of its 95 % interval is above the 5 % expected. The strictest null is the required one
    with the smallest fraction (ties: the larger p). A missing or empty null fails.
    """
    per_null = alpha / len(required)
    passes, rows = {}, []
    for name in required:
        s = nulls.get(name) or {}
        frac, p, ci = s.get("frac_beyond95"), s.get("binom_p_beyond95"), s.get("frac_beyond95_ci95")
        ok = frac is not None and p is not None and ci is not None
        passes[name] = bool(ok and p < per_null and ci[0] > EXPECTED_FRAC)
        if ok:
            rows.append((frac, -p, name))
    block = {
        "nulls_required": list(required),
        "alpha": alpha,
        "alpha_per_null": per_null,
        "expected_frac": EXPECTED_FRAC,
        "null": None,
        "n_units": None,
        "n_beyond95": None,
        "frac_beyond95": None,
        "frac_beyond95_ci95": None,
        "binom_p_beyond95": None,
        "passes": passes,
        "passes_every_null": bool(all(passes.values())),
    }
    if rows:
        name = min(rows)[2]
        s = nulls[name]
        block["null"] = name
        for key in ("n_units", "n_beyond95", "frac_beyond95", "frac_beyond95_ci95"):
            block[key] = s.get(key)
        block["binom_p_beyond95"] = s.get("binom_p_beyond95")
    return block


# --- planted trajectories --------------------------------------------------------------------


def _observe(signal: np.ndarray, snr: float | None, rng: np.random.Generator) -> np.ndarray:
    """Add white observation noise with variance var(signal over sublayers) / snr per unit."""
    if snr is None:
        return signal
    sd = np.sqrt(signal.var(axis=0) / float(snr))
    return signal + sd * rng.standard_normal(signal.shape)


def _rotate(
    angle: np.ndarray, rho: float, start: np.ndarray, sd: float, n_sub: int, rng
) -> np.ndarray:
    """z_{l+1} = rho R(angle) z_l + sd eps for each column; returns the states, (n_sub, 2, n)."""
    c, s = rho * np.cos(angle), rho * np.sin(angle)
    z = np.empty((n_sub, 2, start.shape[1]))
    z[0] = start
    for t in range(1, n_sub):
        z[t, 0] = c * z[t - 1, 0] - s * z[t - 1, 1]
        z[t, 1] = s * z[t - 1, 0] + c * z[t - 1, 1]
        if sd > 0:
            z[t] += sd * rng.standard_normal(z[t].shape)
    return z


def planted_units(
    kind: str, n_sublayers: int, n_units: int, rng: np.random.Generator, **params
) -> np.ndarray:
    """Per-unit trajectories with a known answer, (n_sublayers, n_units).

    Every unit gets a random scale (log-normal, sigma 0.5) and a random offset (N(0, 3^2)), which
    the recipe and its nulls ignore up to rounding. ``kind`` and its ``params``:

    * "sinusoid": sin(2 pi cycles l / L + phase), a random phase per unit; ``cycles`` (float,
      default 3) or ``degrees`` (turn per sublayer, overrides cycles); ``snr`` (None: clean).
    * "locked": units phase-locked to one shared noisy oscillator: a 2-D rotation by
      2 pi cycles / L per sublayer driven by noise of sd ``latent_sd`` (default 0.3, radius 1),
      each unit a random projection of it (a random phase and amplitude), plus its own
      observation noise at ``snr`` (default 3).
    * "damped_spiral": each unit the first coordinate of its own 2-D system
      z_{l+1} = rho R(theta) z_l + process_sd eps, started on the unit circle at a random angle,
      rho = decay ** (1 / L) (``decay`` default 0.2: the radius falls to a fifth over the L
      sublayers); theta from ``cycles`` (default 3) or ``degrees`` (a number, or a (low, high)
      range drawn uniformly per unit); ``process_sd`` default 0.05; ``snr`` default None.
    * "white": i.i.d. N(0, 1).
    * "random_walk": Gaussian steps with sd rising linearly from 1 to ``growth`` (default 1:
      constant steps) over the transitions.
    * "ar1": stationary AR(1) with coefficient ``phi`` (default 0.9).
    """
    n_sub, n = int(n_sublayers), int(n_units)
    if n_sub < 3 or n < 1:
        raise ValueError(f"need n_sublayers >= 3 and n_units >= 1, got {n_sub}, {n}")
    p = dict(params)
    snr = p.pop("snr", None)
    layers = np.arange(n_sub, dtype=np.float64)[:, None]

    def angle(default_cycles: float = 3.0):
        deg = p.pop("degrees", None)
        cycles = p.pop("cycles", default_cycles)
        if deg is None:
            return np.full(n, 2.0 * np.pi * float(cycles) / n_sub)
        if np.ndim(deg) == 0:
            return np.full(n, math.radians(float(deg)))
        lo, hi = deg
        return np.radians(rng.uniform(float(lo), float(hi), n))

    if kind == "sinusoid":
        w = angle()
        x = _observe(np.sin(w * layers + rng.uniform(0.0, 2.0 * np.pi, n)), snr, rng)
    elif kind == "locked":
        w = angle()[:1]
        latent_sd = float(p.pop("latent_sd", 0.3))
        start = np.array([[1.0], [0.0]])
        z = _rotate(w, 1.0, start, latent_sd, n_sub, rng)[:, :, 0]  # (n_sub, 2)
        phase = rng.uniform(0.0, 2.0 * np.pi, n)
        x = _observe(z @ np.stack([np.cos(phase), np.sin(phase)]), 3.0 if snr is None else snr, rng)
    elif kind == "damped_spiral":
        w = angle()
        rho = float(p.pop("decay", 0.2)) ** (1.0 / n_sub)
        sd = float(p.pop("process_sd", 0.05))
        a0 = rng.uniform(0.0, 2.0 * np.pi, n)
        z = _rotate(w, rho, np.stack([np.cos(a0), np.sin(a0)]), sd, n_sub, rng)
        x = _observe(z[:, 0, :], snr, rng)
    elif kind == "white":
        x = rng.standard_normal((n_sub, n))
    elif kind == "random_walk":
        growth = float(p.pop("growth", 1.0))
        sd = np.linspace(1.0, growth, n_sub - 1)[:, None]
        x = np.zeros((n_sub, n))
        np.cumsum(rng.standard_normal((n_sub - 1, n)) * sd, axis=0, out=x[1:])
    elif kind == "ar1":
        phi = float(p.pop("phi", 0.9))
        if not -1.0 < phi < 1.0:
            raise ValueError(f"phi must be in (-1, 1), got {phi}")
        eps = rng.standard_normal((n_sub, n))
        x = np.empty((n_sub, n))
        x[0] = eps[0] / math.sqrt(1.0 - phi * phi)
        for t in range(1, n_sub):
            x[t] = phi * x[t - 1] + eps[t]
    else:
        raise ValueError(f"unknown planted kind {kind!r}; expected one of {PLANTED_KINDS}")
    if p:
        raise TypeError(f"unused parameters for {kind!r}: {sorted(p)}")
    return x * rng.lognormal(0.0, 0.5, n) + rng.normal(0.0, 3.0, n)


def describe_planted(spec: dict) -> str:
    """A one-line description of a planted set's parameters, for reports."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "damped_spiral":
        deg = spec.get("degrees")
        turn = (
            f"{deg[0]:g}-{deg[1]:g} degrees per sublayer (uniform per unit)"
            if deg is not None and np.ndim(deg) == 1
            else f"{deg:g} degrees per sublayer"
            if deg is not None
            else f"{spec.get('cycles', 3):g} cycles"
        )
        snr = spec.get("snr")
        return (
            f"damped 2-D spirals turning {turn}, radius falling to {spec.get('decay', 0.2):g} "
            f"over the sublayers, process noise sd {spec.get('process_sd', 0.05):g}, "
            + ("no observation noise" if snr is None else f"observation noise at SNR {snr:g}")
        )
    return f"{kind} " + ", ".join(f"{k}={v}" for k, v in sorted(spec.items()))

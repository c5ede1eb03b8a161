"""Power study for the rotation claim (Figure 2): which planted orbits does R separate from its nulls?

For every planted condition (``rotation_power.planted_units``) at 12 and at 64 sublayers, 200
units, 200 surrogates per unit and null, seeded:

* the paper's statistic |R| against the random-walk, AR(1) and phase-randomised surrogate nulls:
  the fraction of units beyond each null's 95th percentile and the verdict of the every-null rule
  (``rotation_power.every_null_rule``: exact one-sided binomial p < 0.05 / 3 and the fraction's
  95 % interval above 5 %, for each null);
* a candidate extra statistic, the spectral peak (the largest share of a unit's variance at one
  frequency), against the same surrogate draws, with the same rule and with the rule over the
  random-walk and AR(1) nulls only (the phase null keeps the periodogram: a tie by construction);
* a population statistic, explored here only: the winding number of the population's trajectory
  in its top two principal components (units detrended and scaled to unit norm), tested against
  populations in which every unit is replaced by its own surrogate (p = (1 + #null >= observed)
  / (1 + draws)); the 200 units are split into 4 populations of 50, and its power is the share of
  the 4 that pass p < 0.05 / 3 for every null.

Then ``rotations.rotation_testable`` (the runtime power check) over several numbers of sublayers,
with the default planted set (SNR 10) and without observation noise, and the cost of the check
inside ``rotation_summary`` at 384 units x 13 sublayers.

    python benchmarks/rotation_power.py            # about a minute on 2 idle cores
    python benchmarks/rotation_power.py --out benchmarks/out/rotation_power.json

Writes the JSON and prints the Markdown tables recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

# Thousands of 64 x 64 eigendecompositions: threaded BLAS on matrices this small is several times
# slower than one thread (measured: 3.4 s against 0.6 s for 800 of them on 2 cores).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from residual_dynamics.analysis.rotation_power import (  # noqa: E402
    ALPHA,
    CALIBRATION,
    REQUIRED_NULLS,
    every_null_rule,
    planted_units,
)
from residual_dynamics.analysis.rotations import (  # noqa: E402
    compare_to_null,
    phase_portrait,
    rotation_count,
    rotation_summary,
    rotation_testable,
    surrogate_sequences,
)

# The paper's |R| = 10.74 over 64 sublayers is about 60 degrees of turning per sublayer.
PAPER_DEGREES = 10.74 * 360.0 / 64

CONDITIONS: list[tuple[str, str, str, dict]] = [
    # (name, side, kind, params)
    *[(f"sine {c} cyc", "orbit", "sinusoid", {"cycles": c}) for c in (1, 2, 3, 4, 5, 6)],
    ("sine at paper's rate", "orbit", "sinusoid", {"degrees": PAPER_DEGREES}),
    ("sine 3 cyc SNR 10", "orbit", "sinusoid", {"cycles": 3, "snr": 10.0}),
    ("sine 3 cyc SNR 3", "orbit", "sinusoid", {"cycles": 3, "snr": 3.0}),
    ("sine 3 cyc SNR 1", "orbit", "sinusoid", {"cycles": 3, "snr": 1.0}),
    ("locked 3 cyc SNR 3", "orbit", "locked", {"cycles": 3}),
    ("locked 3.5 cyc SNR 3", "orbit", "locked", {"cycles": 3.5}),
    ("spiral 3 cyc", "orbit", "damped_spiral", {"cycles": 3}),
    *[
        (f"spiral {lo}-{hi} deg", "orbit", "damped_spiral", {"degrees": (lo, hi), "process_sd": 0})
        for lo, hi in ((30, 60), (60, 90), (90, 120), (120, 150), (150, 170))
    ],
    (
        "calibration (150-170 deg, SNR 10)",
        "orbit",
        CALIBRATION["kind"],
        {k: v for k, v in CALIBRATION.items() if k != "kind"},
    ),
    ("white noise", "negative", "white", {}),
    ("random walk", "negative", "random_walk", {}),
    ("random walk, growing steps", "negative", "random_walk", {"growth": 4.0}),
    ("AR(1) 0.9", "negative", "ar1", {"phi": 0.9}),
    ("AR(1) -0.5", "negative", "ar1", {"phi": -0.5}),
]


def spectral_peak(means: np.ndarray) -> np.ndarray:
    """Per unit (columns of (n_sublayers, n_units)): the largest share of its variance at one
    frequency (periodogram at 1 .. L // 2 of the mean-removed sequence), rounded to 9 decimals so
    that a phase-randomised surrogate (the same periodogram up to float rounding) ties exactly."""
    x = means - means.mean(axis=0, keepdims=True)
    power = np.abs(np.fft.rfft(x, axis=0)[1:]) ** 2
    total = power.sum(axis=0)
    frac = np.divide(power.max(axis=0), total, out=np.zeros_like(total), where=total > 1e-300)
    return np.round(frac, 9)


def population_winding(seq: np.ndarray) -> np.ndarray:
    """|winding| of the top-2 PC trajectory of populations seq (..., n_units, n_sublayers)."""
    n_sub = seq.shape[-1]
    t = np.arange(n_sub) - (n_sub - 1) / 2.0
    t = t / np.sqrt(t @ t)
    x = seq - seq.mean(axis=-1, keepdims=True)
    x = x - (x @ t)[..., None] * t
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-300)
    gram = np.swapaxes(x, -1, -2) @ x
    w, v = np.linalg.eigh(gram)
    scores = v[..., -2:] * np.sqrt(np.maximum(w[..., None, -2:], 0.0))
    theta = np.arctan2(scores[..., 1], scores[..., 0])
    d = np.diff(theta, axis=-1)
    d = (d + np.pi) % (2.0 * np.pi) - np.pi
    return np.abs(d.sum(axis=-1)) / (2.0 * np.pi)


def study_condition(means: np.ndarray, n_sur: int, seed: int, n_pops: int) -> dict:
    n_sub, n_units = means.shape
    r = rotation_count(*phase_portrait(means))
    peak = spectral_peak(means)
    pops = means.T.reshape(n_pops, n_units // n_pops, n_sub)
    pop_obs = population_winding(pops)
    r_nulls, peak_nulls, pop_p = {}, {}, {}
    seeds = np.random.SeedSequence(seed).spawn(len(REQUIRED_NULLS))
    for kind, ss in zip(REQUIRED_NULLS, seeds, strict=True):
        sur = surrogate_sequences(means, kind, n_sur, seed=ss)  # (n_sur, n_sub, n_units)
        r_null = rotation_count(sur, np.gradient(sur, axis=1))
        peak_null = spectral_peak(sur.transpose(1, 0, 2).reshape(n_sub, -1)).reshape(n_sur, -1)
        r_nulls[kind] = compare_to_null(r, r_null)["summary"]
        peak_nulls[kind] = compare_to_null(peak, peak_null)["summary"]
        sur_pops = sur.transpose(0, 2, 1).reshape(n_sur, n_pops, n_units // n_pops, n_sub)
        null_w = population_winding(sur_pops)  # (n_sur, n_pops)
        pop_p[kind] = ((1 + (null_w >= pop_obs).sum(axis=0)) / (1 + n_sur)).tolist()
    pop_pass = [
        all(pop_p[k][i] < ALPHA / len(REQUIRED_NULLS) for k in REQUIRED_NULLS)
        for i in range(n_pops)
    ]

    def brief(s: dict) -> dict:
        keys = ("frac_beyond95", "frac_beyond95_ci95", "binom_p_beyond95", "n_beyond95")
        return {k: s[k] for k in keys}

    r_rule, peak_rule = every_null_rule(r_nulls), every_null_rule(peak_nulls)
    peak_rule_2 = every_null_rule(peak_nulls, required=("random_walk", "ar1"))
    return {
        "mean_abs_r": float(np.abs(r).mean()),
        "r": {k: brief(v) for k, v in r_nulls.items()},
        "r_rule": r_rule,
        "spectral_peak": {k: brief(v) for k, v in peak_nulls.items()},
        "spectral_peak_rule": peak_rule,
        "spectral_peak_rule_without_phase": peak_rule_2,
        "population_winding": {
            "observed": pop_obs.tolist(),
            "p": pop_p,
            "passes": pop_pass,
            "power": float(np.mean(pop_pass)),
        },
    }


def timing(repeats: int) -> dict:
    """rotation_summary at 384 units x 13 sublayers with and without the calibration, interleaved."""
    means = np.cumsum(np.random.default_rng(0).standard_normal((13, 384)), axis=0)
    runs = {"without_check": [], "with_check": [], "check_alone": []}
    for _ in range(repeats):
        for name in runs:
            t0 = time.perf_counter()
            if name == "check_alone":
                rotation_testable(13, 384, 200, 0)
            else:
                rotation_summary(means, 1000, 200, 0, calibrate=name == "with_check")
            runs[name].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    rotation_testable(64, 4096, 200, 0)
    paper = time.perf_counter() - t0
    out = {k: {"median_s": float(np.median(v)), "min_s": float(np.min(v))} for k, v in runs.items()}
    out["check_alone_64x4096_s"] = paper
    out["added_fraction_median"] = (
        out["with_check"]["median_s"] / out["without_check"]["median_s"] - 1.0
    )
    return out


def _f(v) -> str:
    return "" if v is None else f"{v:.2f}"


def markdown(study: dict, calibration: list) -> str:
    lines = []
    for n_sub, rows in study.items():
        lines += [
            f"**{n_sub} sublayers** (200 units; fraction of units beyond each null's 95th "
            "percentile: random walk / AR(1) / phase; rule = every-null rule)",
            "",
            "| planted | side | mean abs R | R: rw / ar1 / phase | R rule | spectral peak: "
            "rw / ar1 / phase | peak rule: all 3 / rw + ar1 | pop. winding power |",
            "|---|---|---:|---|---|---|---|---:|",
        ]
        for name, row in rows.items():
            rf = " / ".join(_f(row["r"][k]["frac_beyond95"]) for k in REQUIRED_NULLS)
            pf = " / ".join(_f(row["spectral_peak"][k]["frac_beyond95"]) for k in REQUIRED_NULLS)
            rr = "**pass**" if row["r_rule"]["passes_every_null"] else "fail"
            pr = " / ".join(
                "**pass**" if row[key]["passes_every_null"] else "fail"
                for key in ("spectral_peak_rule", "spectral_peak_rule_without_phase")
            )
            lines.append(
                f"| {name} | {row['side']} | {row['mean_abs_r']:.1f} | {rf} | {rr} | {pf} | {pr} "
                f"| {row['population_winding']['power']:.2f} |"
            )
        lines.append("")
    lines += [
        "| sublayers | power, SNR 10 (default) | testable | power, no noise | testable |",
        "|---:|---:|---|---:|---|",
    ]
    for row in calibration:
        lines.append(
            f"| {row['n_sublayers']} | {row['snr10']['power']:.2f} | {row['snr10']['value']} "
            f"| {row['clean']['power']:.2f} | {row['clean']['value']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=200)
    ap.add_argument("--surrogates", type=int, default=200)
    ap.add_argument("--populations", type=int, default=4)
    ap.add_argument("--sublayers", type=int, nargs="+", default=[12, 64])
    ap.add_argument(
        "--calibration-sublayers", type=int, nargs="+", default=[8, 12, 13, 16, 24, 32, 48, 64]
    )
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/rotation_power.json"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    study: dict = {}
    for n_sub in args.sublayers:
        study[n_sub] = {}
        for i, (name, side, kind, params) in enumerate(CONDITIONS):
            rng = np.random.default_rng([args.seed, n_sub, i])
            means = planted_units(kind, n_sub, args.units, rng, **params)
            row = study_condition(means, args.surrogates, args.seed + 1000 * i, args.populations)
            study[n_sub][name] = {"side": side, "kind": kind, "params": params, **row}
            print(
                f"{n_sub:3d} {name:34s} R rule {row['r_rule']['passes_every_null']!s:5s} "
                f"strictest {row['r_rule']['frac_beyond95']:.2f} "
                f"({time.perf_counter() - t_start:.0f} s)",
                flush=True,
            )
    calibration = []
    for n_sub in args.calibration_sublayers:
        calibration.append(
            {
                "n_sublayers": n_sub,
                "snr10": rotation_testable(n_sub, args.units, args.surrogates, args.seed),
                "clean": rotation_testable(
                    n_sub,
                    args.units,
                    args.surrogates,
                    args.seed,
                    planted={**CALIBRATION, "snr": None},
                ),
            }
        )
    timings = timing(args.repeats)
    out = {
        "meta": {
            "units": args.units,
            "surrogates": args.surrogates,
            "populations": args.populations,
            "seed": args.seed,
            "paper_degrees_per_sublayer": PAPER_DEGREES,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "wall_s": time.perf_counter() - t_start,
        },
        "study": {str(k): v for k, v in study.items()},
        "calibration": calibration,
        "timing": timings,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=float))
    print(markdown(study, calibration))
    print(json.dumps(timings, indent=1))
    print(f"wall {out['meta']['wall_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()

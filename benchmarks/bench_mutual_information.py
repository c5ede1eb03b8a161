"""Throughput of the batched KDE mutual information against the plain scipy reference.

Both run on the SAME synthetic unit-transition pairs (N samples each). The baseline is the
paper's estimator written plainly, ``mi_kde_reference`` at grid 64 (scipy's gaussian_kde at every
node of a 64 x 64 grid, one pair at a time), on a subset of ``--n-ref`` pairs, extrapolated per
pair; ``mi_kde`` runs on all ``--n-pairs`` at each of ``--grids`` ("auto", the default, and
fixed grids). The baseline is timed in slices interleaved with the ``mi_kde`` repeats, so drift
in machine load (this machine is shared) hits both. Reported: pairs/s each, the speed ratio
against the grid-64 baseline (target >= 200x), the largest |difference| from the reference of
the same estimator (for "auto", ``mi_kde_reference(grid="auto")`` on ``--n-ref-auto`` pairs, a
slower plain evaluation, also timed), and the projected time for the paper's scale, 4096 units
x 63 transitions = 258,048 pairs. ``--rule-units`` (default 4096) also times one transition of
what the rule computes for every unit (raw and copula KDE, GCMI, Pearson, the rank transform
and robust z of a sublayer, KSG on 64 units), projected to 63 transitions.

The pairs mimic consecutive residual-stream sublayers: mostly Gaussian pairs with correlation
drawn up to 0.999, plus skewed (lognormal) and bimodal ones. ``mi_kde`` runs with
``torch.set_num_threads(--threads)`` (2 by default, the target machine); ``--extra-threads``
times it again at other thread counts (the reference is single-threaded C either way).

Run from the repository root: ``python benchmarks/bench_mutual_information.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy
import torch

from residual_dynamics.analysis.mi_estimators import (
    copula_normal,
    max_robust_z,
    mi_gaussian,
    mi_kde,
    mi_kde_reference,
    mi_ksg,
)

PAPER_PAIRS = 4096 * 63
TARGET_RATIO = 200.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per pair")
    parser.add_argument("--n-pairs", type=int, default=2048, help="pairs timed with mi_kde")
    parser.add_argument("--n-ref", type=int, default=20, help="pairs timed with the reference")
    parser.add_argument(
        "--n-ref-auto", type=int, default=6, help='pairs for mi_kde_reference(grid="auto")'
    )
    parser.add_argument("--grids", type=_grid, nargs="+", default=["auto", 64])
    parser.add_argument("--rule-units", type=int, default=4096, help="0: skip the rule's step")
    parser.add_argument("--bandwidth", default="scott")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--extra-threads", type=int, nargs="*", default=[1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/mutual_information.json"))
    return parser.parse_args(argv)


def _grid(text: str) -> int | str:
    return text if text == "auto" else int(text)


def make_pairs(n: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(n, n_pairs) x and y: 70% Gaussian (rho up to 0.999), 15% lognormal, 15% bimodal."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, n_pairs))
    y = np.empty((n, n_pairs))
    kinds = []
    for p in range(n_pairs):
        u = rng.uniform()
        rho = rng.uniform(0.0, 0.999)
        a = rng.standard_normal(n)
        e = rng.standard_normal(n)
        b = rho * a + np.sqrt(1 - rho**2) * e
        if u < 0.70:
            kinds.append("gaussian")
            x[:, p], y[:, p] = a, b
        elif u < 0.85:
            kinds.append("lognormal")
            x[:, p], y[:, p] = np.exp(0.8 * a), np.exp(0.8 * b)
        else:
            kinds.append("bimodal")
            mode = 3.0 * rng.integers(0, 2, n)
            x[:, p], y[:, p] = a + mode, b + mode
    return x, y, kinds


def time_fast(x, y, grid, args, threads: int) -> list[float]:
    """Seconds per mi_kde call over all pairs, one per repeat (after a warm-up)."""
    torch.set_num_threads(threads)
    mi_kde(x[:, :64], y[:, :64], grid=grid, bandwidth=args.bandwidth, batch_size=args.batch_size)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        mi_kde(x, y, grid=grid, bandwidth=args.bandwidth, batch_size=args.batch_size)
        times.append(time.perf_counter() - t0)
    return times


BASELINE_GRID = 64


def bench_grid(x, y, grid: int | str, args) -> dict:
    ref_idx = np.arange(args.n_ref)
    slices = np.array_split(ref_idx, args.repeats)
    ref_values = np.empty(args.n_ref)
    ref_time = 0.0
    fast_times = []
    torch.set_num_threads(args.threads)
    mi_kde(x[:, :64], y[:, :64], grid=grid, bandwidth=args.bandwidth, batch_size=args.batch_size)
    for rep in range(args.repeats):
        # One slice of the baseline, then one full mi_kde run: interleaved against load drift.
        t0 = time.perf_counter()
        for p in slices[rep]:
            ref_values[p] = mi_kde_reference(
                x[:, p], y[:, p], grid=BASELINE_GRID, bandwidth=args.bandwidth
            )
        ref_time += time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = mi_kde(x, y, grid=grid, bandwidth=args.bandwidth, batch_size=args.batch_size)
        fast_times.append(time.perf_counter() - t0)
    ref_rate = args.n_ref / ref_time
    if grid == BASELINE_GRID:
        own = {"pairs": args.n_ref, "pairs_per_s": ref_rate}
        diff = np.abs(fast[ref_idx] - ref_values)
    else:  # agreement with the plain reference of the same estimator
        own_idx = np.arange(args.n_ref_auto if grid == "auto" else args.n_ref)
        t0 = time.perf_counter()
        own_values = np.array(
            [
                mi_kde_reference(x[:, p], y[:, p], grid=grid, bandwidth=args.bandwidth)
                for p in own_idx
            ]
        )
        own = {"pairs": len(own_idx), "pairs_per_s": len(own_idx) / (time.perf_counter() - t0)}
        diff = np.abs(fast[own_idx] - own_values)

    def summary(times: list[float]) -> dict:
        best_rate = x.shape[1] / min(times)
        median_rate = x.shape[1] / statistics.median(times)
        return {
            "seconds": times,
            "pairs_per_s_best": best_rate,
            "pairs_per_s_median": median_rate,
            "ratio_best": best_rate / ref_rate,
            "ratio_median": median_rate / ref_rate,
            "projected_paper_s_median": PAPER_PAIRS / median_rate,
        }

    result = {
        "grid": grid,
        "reference": {
            "grid": BASELINE_GRID,
            "pairs": args.n_ref,
            "seconds": ref_time,
            "pairs_per_s": ref_rate,
            "seconds_per_pair": 1 / ref_rate,
            "projected_paper_s": PAPER_PAIRS / ref_rate,
        },
        "own_reference": own,
        "mi_kde": {args.threads: summary(fast_times)},
        "max_abs_diff_nats": float(diff.max()),
        "mean_abs_diff_nats": float(diff.mean()),
    }
    for threads in args.extra_threads:
        if threads != args.threads:
            result["mi_kde"][threads] = summary(time_fast(x, y, grid, args, threads))
    torch.set_num_threads(args.threads)
    return result


def bench_rule_step(args) -> dict:
    """One transition of everything the mutual_information rule computes, for --rule-units units
    (the rule ranks and robust-z-scores each sublayer once, so one sublayer's worth here)."""
    x, y, _ = make_pairs(args.n, args.rule_units, args.seed + 1)
    ksg_cols = np.arange(min(64, args.rule_units))
    torch.set_num_threads(args.threads)
    zx = copula_normal(x)

    def step() -> dict:
        parts = {}
        t0 = time.perf_counter()
        zy = copula_normal(y)
        max_robust_z(y)
        parts["rank transform + robust z"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mi_kde(x, y, bandwidth=args.bandwidth, return_resolved=True)
        parts["kde"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mi_kde(zx, zy, bandwidth=args.bandwidth, return_resolved=True)
        parts["copula kde"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mi_gaussian(zx, zy)
        mi_gaussian(x, y)
        parts["gcmi + pearson"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mi_ksg(x[:, ksg_cols], y[:, ksg_cols])
        parts["ksg (64 units)"] = time.perf_counter() - t0
        return parts

    step()  # warm-up
    runs = [step() for _ in range(max(1, args.repeats // 2))]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    total = sum(median.values())
    # every part but KSG (always 64 units) scales with the number of units
    per_unit = total - median["ksg (64 units)"]
    return {
        "units": args.rule_units,
        "seconds_per_transition": median,
        "total_per_transition_s": total,
        "projected_63_transitions_s": 63
        * (per_unit * 4096 / args.rule_units + median["ksg (64 units)"]),
    }


def cpu_pressure() -> str | None:
    """Linux PSI line for CPU ("some avg10=..."): the share of time runnable tasks waited."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


def fmt_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.n_ref > args.n_pairs:
        raise SystemExit("--n-ref must not exceed --n-pairs")
    x, y, kinds = make_pairs(args.n, args.n_pairs, args.seed)
    # The machine may be shared: record how contended it was. OpenMP threads meet at a barrier
    # after every parallel op, so 2-thread timings suffer far more from other processes than
    # 1-thread ones (or the single-threaded reference).
    load_before, pressure_before = os.getloadavg(), cpu_pressure()
    results = [bench_grid(x, y, grid, args) for grid in args.grids]
    rule = bench_rule_step(args) if args.rule_units else None
    load_after, pressure_after = os.getloadavg(), cpu_pressure()

    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15_before": load_before,
            "load_average_1_5_15_after": load_after,
            "cpu_pressure_before": pressure_before,
            "cpu_pressure_after": pressure_after,
            "python": platform.python_version(),
            "versions": {
                "torch": torch.__version__,
                "numpy": np.__version__,
                "scipy": scipy.__version__,
            },
        },
        "setup": {
            "n_samples": args.n,
            "n_pairs": args.n_pairs,
            "n_ref_pairs": args.n_ref,
            "kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
            "bandwidth": args.bandwidth,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "repeats": args.repeats,
            "paper_pairs": PAPER_PAIRS,
            "target_ratio": TARGET_RATIO,
        },
        "results": results,
        "rule_step": rule,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    print(f"N = {args.n}; {args.n_pairs} pairs for mi_kde, {args.n_ref} for the reference")
    print(f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f}")
    print(f"cpu pressure before/after: {pressure_before} / {pressure_after}")
    for r in results:
        ref = r["reference"]
        print(
            f"grid {r['grid']}: baseline (scipy, grid {ref['grid']}) {ref['pairs_per_s']:.2f} "
            f"pairs/s ({ref['seconds_per_pair'] * 1e3:.0f} ms/pair; paper scale "
            f"{fmt_duration(ref['projected_paper_s'])}); max |diff| from the same estimator's "
            f"reference ({r['own_reference']['pairs_per_s']:.2f} pairs/s) "
            f"{r['max_abs_diff_nats']:.1e} nats"
        )
        for threads, s in r["mi_kde"].items():
            print(
                f"  mi_kde, {threads} thread(s): {s['pairs_per_s_median']:.0f} pairs/s median "
                f"({s['pairs_per_s_best']:.0f} best); ratio {s['ratio_median']:.0f}x median "
                f"({s['ratio_best']:.0f}x best); paper scale "
                f"{fmt_duration(s['projected_paper_s_median'])}"
            )
    if rule:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in rule["seconds_per_transition"].items())
        print(
            f"the rule, one transition of {rule['units']} units: {parts}; total "
            f"{rule['total_per_transition_s']:.2f} s; 63 transitions of 4096 units: "
            f"{fmt_duration(rule['projected_63_transitions_s'])}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

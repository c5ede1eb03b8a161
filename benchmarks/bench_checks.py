"""What the reliability checks cost, against the work they ride on (same run, ratios).

- the finiteness check extraction runs on every batch, ``isfinite(rows.sum(-1))``, against the naive
  ``isfinite(rows).all(-1)`` and against copying the batch to host memory (the step it precedes);
- the aligned C-order copies that make Dask tasks bit-reproducible (``transitions.task_array``),
  against the projection task they feed (``reduction._project`` on one block).

Run: python benchmarks/bench_checks.py [--rows 32 --sublayers 65 --units 4096 --repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--sublayers", type=int, default=65)
    parser.add_argument("--units", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/out/checks.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from residual_dynamics.analysis.transitions import task_array

    rows = torch.randn(args.rows, args.sublayers, args.units)
    out = {"shape": list(rows.shape), "threads": args.threads}
    out["check_sum_s"] = timed(lambda: torch.isfinite(rows.sum(dim=-1)), args.repeats)
    out["check_naive_s"] = timed(lambda: torch.isfinite(rows).all(dim=-1), args.repeats)
    out["host_copy_s"] = timed(lambda: rows.numpy().copy(), args.repeats)
    out["naive_over_check"] = out["check_naive_s"] / out["check_sum_s"]
    out["check_over_copy"] = out["check_sum_s"] / out["host_copy_s"]

    # task_array against the projection task it protects: one block of --rows samples, every
    # sublayer, projected onto 100 components at the paper's width.
    rng = np.random.default_rng(0)
    block = rng.standard_normal((args.rows * args.sublayers, args.units)).astype(np.float32)
    basis = np.asfortranarray(rng.standard_normal((args.units, 100)))
    mean = rng.standard_normal(args.units)
    out["task_array_s"] = timed(lambda: (task_array(basis), task_array(mean)), args.repeats)
    out["projection_s"] = timed(
        lambda: (block.astype(np.float64) - mean) @ task_array(basis), args.repeats
    )
    out["task_array_over_projection"] = out["task_array_s"] / out["projection_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

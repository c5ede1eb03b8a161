"""Out-of-core statistics: a synthetic store several times larger than the Dask worker's memory
limit goes through the Figure 1 statistics, and the worker's peak memory is recorded.

The store has the paper's layout (sample, sublayer, unit); by default 64 sublayers x 4096 units
(Llama 3.1 8B's shape) x 1536 samples = 1.5 GiB of float32, against a 1 GiB worker limit. The
baseline the rates are compared with is reading the same store once with no computation.

    python benchmarks/bench_out_of_core.py [--samples 1536] [--units 4096] [--memory-limit 1GiB]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from residual_dynamics.analysis.cluster import dask_client
from residual_dynamics.analysis.transitions import transition_statistics
from residual_dynamics.io.store import create_store, finalise, open_store, temporary_path

OUT = Path(__file__).resolve().parent / "out"


def synthetic_store(path: Path, samples: int, sublayers: int, units: int, chunk_rows: int) -> Path:
    """A drifting residual stream written chunk block by chunk block (never whole in memory)."""
    if path.exists():
        return path
    names = [f"{kind}{layer}" for layer in range(sublayers // 2) for kind in ("attn", "mlp")]
    tmp = temporary_path(path)
    group = create_store(tmp, samples, names, units, "float32", chunk_rows, {"model": "synthetic"})
    rng = np.random.default_rng(0)
    scale = np.linspace(0.2, 2.0, sublayers, dtype=np.float32)[None, :, None]
    for start in range(0, samples, chunk_rows):
        stop = min(samples, start + chunk_rows)
        steps = rng.standard_normal((stop - start, sublayers, units), dtype=np.float32) * scale
        group["resid"][start:stop] = np.cumsum(steps, axis=1)
    finalise(tmp, path)
    return path


def read_once(path: Path) -> float:
    resid = open_store(path)["resid"]
    t0 = time.perf_counter()
    for start in range(0, resid.shape[0], resid.chunks[0]):
        np.asarray(resid[start : start + resid.chunks[0]])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1536)
    parser.add_argument("--sublayers", type=int, default=64)
    parser.add_argument("--units", type=int, default=4096)
    parser.add_argument("--chunk-rows", type=int, default=64)
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    path = OUT / f"synthetic_{args.samples}x{args.sublayers}x{args.units}.zarr"
    synthetic_store(path, args.samples, args.sublayers, args.units, args.chunk_rows)
    size = args.samples * args.sublayers * args.units * 4
    baseline = read_once(path)
    with dask_client(threads=args.threads, memory_limit=args.memory_limit) as client:
        t0 = time.perf_counter()
        stats = transition_statistics(path, sublayers="all", block_rows=args.chunk_rows)
        elapsed = time.perf_counter() - t0
        worker = next(iter(client.scheduler_info()["workers"].values()))
        limit = worker["memory_limit"]
    result = {
        "store_gib": size / 2**30,
        "worker_memory_limit_gib": limit / 2**30,
        "store_to_limit": size / limit,
        "samples": args.samples,
        "sublayers": args.sublayers,
        "units": args.units,
        "read_once_s": baseline,
        "transition_statistics_s": elapsed,
        "ratio_to_read_once": elapsed / baseline,
        "samples_per_s": args.samples / elapsed,
        "finite_r": float(np.isfinite(stats["r"].values).mean()),
        # Projection: the pass is linear in samples; 1000 Llama samples (the paper's N).
        "projected_paper_n1000_s": elapsed
        * 1000
        / args.samples
        * (4096 * 64)
        / (args.units * args.sublayers),
    }
    (OUT / "out_of_core.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

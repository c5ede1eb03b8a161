"""Reduction and perturbation benchmarks, each against a named baseline in the same run.

1. Teleports re-entering the model from the cached state at layer l (``Reentry.run``) against
   the same perturbations run through every block (``reuse_cache=False``), on a random
   Llama-shaped model; the saving should approach L / (L - l) per layer.
2. Out-of-core global PCA (``pca_fit``: Dask tasks per block of samples, D x D covariance,
   eigendecomposition) against scikit-learn's in-memory ``PCA(svd_solver="full")`` on the same
   (N S, D) rows, same components.

Run from the repository root: ``python benchmarks/bench_reduction.py`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_teleport(layers: int, d: int, grid: int, repeats: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from residual_dynamics.analysis.perturbation import Reentry, perturbation_layers

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=d,
        intermediate_size=int(3.5 * d),
        num_hidden_layers=layers,
        num_attention_heads=max(1, d // 64),
        num_key_value_heads=max(1, d // 256),
        vocab_size=4096,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 4096, (14,)).tolist()  # the control prompt's length in Llama 3's tokens
    reentry = Reentry(model, ids)
    vectors = torch.randn(grid * grid, d)
    out = {}
    for layer in perturbation_layers(layers):
        cached = _median_time(lambda layer=layer: reentry.run(layer, vectors), repeats)
        full = _median_time(
            lambda layer=layer: reentry.run(layer, vectors, reuse_cache=False), repeats
        )
        out[layer] = {
            "cached_s": cached,
            "full_s": full,
            "speedup": full / cached,
            "ideal": layers / (layers - layer),
        }
    total_cached = sum(v["cached_s"] for v in out.values())
    total_full = sum(v["full_s"] for v in out.values())
    return {
        "model": f"random Llama, {layers} layers, d = {d}",
        "grid_points": grid * grid,
        "per_layer": out,
        "all_layers_speedup": total_full / total_cached,
    }


def bench_pca(n: int, s: int, d: int, repeats: int) -> dict:
    from sklearn.decomposition import PCA

    from residual_dynamics.analysis.pca import pca_fit
    from residual_dynamics.io.store import create_store, finalise, temporary_path

    rng = np.random.default_rng(0)
    names = [f"{k}{i}" for i in range(s // 2) for k in ("attn", "mlp")]
    resid = (np.cumsum(rng.normal(size=(n, s, d)), axis=1) + rng.normal(size=d)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        part = temporary_path(path)
        group = create_store(part, n, names, d, "float32", max(1, 2**22 // (4 * d)), {})
        group["resid"][:] = resid
        finalise(part, path)
        ours = _median_time(lambda: pca_fit(path, n_components=100, per_sublayer=False), repeats)
        rows = resid.reshape(-1, d)

        def sklearn_full():
            PCA(n_components=100, svd_solver="full").fit(rows)

        theirs = _median_time(sklearn_full, repeats)
    return {
        "shape": [n, s, d],
        "pca_fit_s": ours,
        "sklearn_full_s": theirs,
        "speedup_vs_sklearn": theirs / ours,
        "rows_in_memory_MiB": rows.nbytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--grid", type=int, default=10)
    parser.add_argument("--pca-shape", type=int, nargs=3, default=[2000, 64, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/reduction.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
        "teleport": bench_teleport(args.layers, args.d, args.grid, args.repeats),
        "pca": bench_pca(*args.pca_shape, args.repeats),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

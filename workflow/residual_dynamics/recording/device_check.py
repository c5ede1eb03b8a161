"""One-command check of the GPU path (``benchmarks/gpu_check.py``): every step that runs on an
accelerator, on it, against the CPU or the bare model, as a table of rows with a status each.

Rows (``check`` names):
- ``extraction_throughput``: ``extract_to_store`` (hooks, host copy, finiteness check, Zarr
  write) against a bare forward over the same length-sorted batches, in the model's dtype. Target
  >= 0.9x; enforced on CUDA at the ``llama8b`` shape only (a tiny model's forwards take
  microseconds, so the store's fixed cost dominates and the ratio means nothing).
- ``rows_bf16_vs_cpu_f32``: a tiny Llama's rows in bf16 on the device against float32 on the CPU,
  norm-wise relative error per row and recording point k within ``2 * 2^-8 * k`` (CPU bf16, see
  tests/test_precision.py) or ``4 * 2^-8 * k`` on CUDA, whose bf16 GEMMs may reduce split-K
  partial sums in bf16 (``allow_bf16_reduced_precision_reduction``), one more rounding per matmul.
- ``mi_kde``: ``mi_kde`` on the device against the CPU on the same pairs (float64 lattices, float32
  counts): max |difference| <= 1e-4 nats; pairs/s on both.
- ``cae_epoch``: one CAE epoch on the device against the CPU from the same seed: relative
  difference of the epoch's training loss <= 1e-3 (float32; kernels sum in other orders); seconds.
- ``perturbation_layer``: one layer of teleports re-entering the model on the device, reusing the
  cached earlier blocks against running every block: relative row error within the dtype's bound.
- ``device_map_split``: the model spread over GPU and CPU (accelerate, ``max_memory`` so that about
  half the layers stay on the GPU) against the whole model on one device, float32: relative
  error <= 1e-4 (CPU and GPU kernels sum in other orders). On a CPU-only machine every part is
  mapped to the CPU: the dispatch hooks run, but nothing is split.

A row's status is ``ok``, ``FAIL`` or ``info`` (measured, no target applies here).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from residual_dynamics.recording.extract import Extractor, extract_to_store, plan_blocks

log = logging.getLogger(__name__)

U_BF16 = 2.0**-8
SHAPES = {
    # Llama 3.1 8B (config.json of meta-llama/Llama-3.1-8B), randomly initialised.
    "llama8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=128,
    ),
}
TINY_CHECK = SHAPES["tiny"] | {"num_hidden_layers": 4}
# Work per shape: texts and their token lengths for extraction; MI pairs and samples.
WORK = {
    "llama8b": dict(n_texts=128, min_len=64, max_len=512, batch_size=16, mi_pairs=4096, mi_n=2000),
    "tiny": dict(n_texts=48, min_len=4, max_len=32, batch_size=8, mi_pairs=16, mi_n=300),
}


@dataclass
class Row:
    check: str
    device: str
    value: float
    target: str
    status: str
    detail: str = ""
    numbers: dict = field(default_factory=dict)


def _status(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_llama(shape: dict, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A randomly initialised base Llama (no LM head, as extraction loads it) of ``shape``,
    built directly on ``device`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(**shape, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaModel(config).to(dtype)
    return model.eval()


def token_batches(n_texts: int, min_len: int, max_len: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n_texts)
    return [rng.integers(3, vocab, size=int(n)).tolist() for n in lengths]


def _padded(seqs, pad_id: int, device: torch.device) -> dict:
    """Inputs exactly as ``Extractor.run_batch`` pads them (right padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1)}


def relative_errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """(rows, points): norm-wise relative error over the units."""
    return np.linalg.norm(got - want, axis=-1) / np.maximum(np.linalg.norm(want, axis=-1), 1e-30)


def bf16_bound(n_points: int, device: torch.device) -> np.ndarray:
    return (4 if device.type == "cuda" else 2) * U_BF16 * np.arange(1, n_points + 1)


# ------------------------------------------------------------------------------------------
# rows


def check_extraction(shape_name: str, device: torch.device, dtype, workdir: Path, repeats=3):
    work = WORK[shape_name]
    model = build_llama(SHAPES[shape_name], dtype, device)
    seqs = token_batches(work["n_texts"], work["min_len"], work["max_len"], model.config.vocab_size)
    extractor = Extractor(model, pad_id=0)
    n_sub, d = len(extractor.sublayers), model.config.hidden_size
    chunk_rows = max(1, int(4 * 2**20 // (d * 4)))
    blocks = plan_blocks(
        [len(s) for s in seqs],
        [[len(s) - 1] for s in seqs],
        chunk_rows,
        work["batch_size"],
        1 << 30,
    )
    inputs = [_padded([seqs[i] for i in b], 0, device) for _, _, bs in blocks for b in bs]
    meta = {
        "text_id": np.arange(len(seqs)),
        "text_index": np.arange(len(seqs)),
        "truncated": np.zeros(len(seqs), bool),
    }

    def bare():
        with torch.inference_mode():
            for kw in inputs:
                model(**kw, use_cache=False)
        _sync(device)

    def extract(i=[0]):  # noqa: B006 - a counter for fresh store names
        i[0] += 1
        extract_to_store(
            extractor,
            seqs,
            meta,
            "last",
            workdir / f"x{i[0]}.zarr",
            attrs={},
            chunk_rows=chunk_rows,
            batch_size=work["batch_size"],
            max_batch_tokens=1 << 30,
            progress=False,
        )
        _sync(device)

    bare(), extract()  # warm-up (kernels, allocator, Zarr)
    times = {"bare": [], "extract": []}
    for r in range(repeats):
        for name in ("bare", "extract") if r % 2 == 0 else ("extract", "bare"):
            started = time.perf_counter()
            (bare if name == "bare" else extract)()
            times[name].append(time.perf_counter() - started)
    ratio = float(np.median(times["bare"]) / np.median(times["extract"]))
    tokens = sum(len(s) for s in seqs)
    enforced = device.type == "cuda" and shape_name == "llama8b"
    return Row(
        "extraction_throughput",
        str(device),
        ratio,
        ">= 0.9x bare" + ("" if enforced else " (n/a)"),
        _status(ratio >= 0.9) if enforced else "info",
        f"{n_sub} points x {d} units, {len(seqs)} texts, {tokens} tokens; median s bare "
        f"{np.median(times['bare']):.3f}, extract {np.median(times['extract']):.3f}",
        {"times_s": times, "tokens": tokens},
    )


def _tiny_rows(model, seqs) -> np.ndarray:
    return Extractor(model, pad_id=0).run_batch(seqs, [[len(s) - 1] for s in seqs]).numpy()


def check_bf16_rows(device: torch.device):
    cpu = build_llama(TINY_CHECK, torch.float32, torch.device("cpu"))
    seqs = token_batches(24, 4, 40, TINY_CHECK["vocab_size"], seed=1)
    want = _tiny_rows(cpu, seqs)
    half = build_llama(TINY_CHECK, torch.bfloat16, device)
    half.load_state_dict({k: v.to(torch.bfloat16) for k, v in cpu.state_dict().items()})
    got = _tiny_rows(half, seqs)
    error = relative_errors(got, want)
    bound = bf16_bound(error.shape[1], device)
    worst = float((error.max(0) / bound).max())
    return Row(
        "rows_bf16_vs_cpu_f32",
        str(device),
        worst,
        "<= 1 (of 2^-8 x k bound)",
        _status(worst <= 1),
        f"max rel error per point / 2^-8: {np.array2string(error.max(0) / U_BF16, precision=2)}",
        {"max_relative_error": error.max(0).tolist(), "bound": bound.tolist()},
    )


def check_mi(shape_name: str, device: torch.device):
    from residual_dynamics.analysis.mi_estimators import mi_kde

    work = WORK[shape_name]
    rng = np.random.default_rng(2)
    n, p = work["mi_n"], work["mi_pairs"]
    x = rng.normal(size=(n, p))
    y = 0.6 * x + 0.8 * rng.normal(size=(n, p))
    p_cpu = min(p, 256)
    mi_kde(x[:, :2], y[:, :2], device=str(device))  # warm-up
    started = time.perf_counter()
    on_device = mi_kde(x, y, device=str(device))
    _sync(device)
    t_dev = time.perf_counter() - started
    started = time.perf_counter()
    on_cpu = mi_kde(x[:, :p_cpu], y[:, :p_cpu], device="cpu")
    t_cpu = time.perf_counter() - started
    diff = float(np.abs(np.asarray(on_device)[:p_cpu] - np.asarray(on_cpu)).max())
    return Row(
        "mi_kde",
        str(device),
        diff,
        "<= 1e-4 nats",
        _status(diff <= 1e-4),
        f"N {n}; pairs/s {device.type} {p / t_dev:.0f} ({p} pairs), cpu {p_cpu / t_cpu:.0f} "
        f"({p_cpu} pairs); MI ~{float(np.mean(on_cpu)):.3f} nats",
        {"pairs_per_s": {str(device): p / t_dev, "cpu": p_cpu / t_cpu}},
    )


def check_cae(store: Path, device: torch.device):
    from residual_dynamics.analysis.cae import CaeSettings, train_cae

    losses, seconds = {}, {}
    for where in dict.fromkeys(["cpu", str(device)]):
        settings = CaeSettings(max_epochs=1, batch_size=64, device=where, memory_gib=1.0)
        started = time.perf_counter()
        trained = train_cae(store, settings, progress=False)
        _sync(torch.device(where))
        seconds[where] = time.perf_counter() - started
        losses[where] = trained.history["train_loss"][0]
    diff = abs(losses[str(device)] - losses["cpu"]) / abs(losses["cpu"])
    ok = diff <= 1e-3 and math.isfinite(losses[str(device)])
    return Row(
        "cae_epoch",
        str(device),
        diff,
        "rel. loss diff <= 1e-3",
        _status(ok),
        f"1 epoch: {seconds[str(device)]:.2f} s on {device}, {seconds['cpu']:.2f} s on cpu; "
        f"train loss {losses[str(device)]:.5f}",
        {"seconds": seconds, "loss": losses},
    )


def check_perturbation(shape_name: str, device: torch.device, dtype):
    from residual_dynamics.analysis.perturbation import Reentry

    shape = SHAPES[shape_name]
    model = build_llama(shape, dtype, device)
    seq = token_batches(1, 32, 32, shape["vocab_size"], seed=3)[0]
    reentry = Reentry(model, seq)
    layer = shape["num_hidden_layers"] // 2
    base = reentry.control.rows[reentry.sublayer_index(layer)]
    vectors = base[None] + 0.1 * base.norm() * torch.randn(64, base.shape[0], device=base.device)
    vectors = vectors / math.sqrt(base.shape[0])
    started = time.perf_counter()
    cached, _ = reentry.run(layer, vectors)
    _sync(device)
    seconds = time.perf_counter() - started
    full, _ = reentry.run(layer, vectors, reuse_cache=False)
    error = relative_errors(cached.cpu().numpy(), full.cpu().numpy())
    first = reentry.sublayer_index(layer)
    bound = bf16_bound(error.shape[1], device) if dtype == torch.bfloat16 else None
    worst = float(error[:, first:].max())
    ok = worst <= (bound[-1] if bound is not None else 1e-5)
    del model, reentry
    return Row(
        "perturbation_layer",
        str(device),
        worst,
        "<= bf16 bound" if bound is not None else "<= 1e-5",
        _status(ok),
        f"layer {layer}: 64 vectors in {seconds:.3f} s (cached earlier blocks vs all blocks)",
        {"seconds": seconds},
    )


def check_device_map(shape_name: str, device: torch.device):
    from accelerate import dispatch_model, infer_auto_device_map

    shape = (
        SHAPES["tiny"] | {"num_hidden_layers": 4}
        if shape_name == "tiny"
        else (SHAPES["llama8b"] | {"num_hidden_layers": 4})
    )
    one = build_llama(shape, torch.float32, device)
    seqs = token_batches(8, 8, 64, shape["vocab_size"], seed=4)
    want = _tiny_rows(one, seqs)
    state = {k: v.cpu() for k, v in one.state_dict().items()}
    del one
    split = build_llama(shape, torch.float32, torch.device("cpu"))
    split.load_state_dict(state)
    if device.type == "cuda":
        layer_bytes = sum(p.numel() * 4 for p in split.layers[0].parameters())
        embed = split.embed_tokens.weight.numel() * 4
        max_memory = {device.index or 0: embed + 2.5 * layer_bytes, "cpu": 2**40}
        device_map = infer_auto_device_map(
            split, max_memory=max_memory, no_split_module_classes=["LlamaDecoderLayer"]
        )
    else:
        device_map = {"embed_tokens": "cpu", "layers": "cpu", "norm": "cpu", "rotary_emb": "cpu"}
    split = dispatch_model(split, device_map=device_map)
    got = _tiny_rows(split, seqs)
    worst = float(relative_errors(got, want).max())
    places = sorted({str(v) for v in device_map.values()})
    return Row(
        "device_map_split",
        str(device),
        worst,
        "<= 1e-4",
        _status(worst <= 1e-4),
        f"{shape['num_hidden_layers']} layers of d {shape['hidden_size']} over {places}"
        + ("" if device.type == "cuda" else " (CPU only: dispatch hooks run, nothing split)"),
        {"device_map": {k: str(v) for k, v in device_map.items()}},
    )


def run_checks(device: str = "cuda", shape: str = "llama8b", only=None) -> list[Row]:
    """Every row (or those named in ``only``), in order; a row that raises is a FAIL row."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked but torch sees no CUDA device")
    dtype = torch.bfloat16
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        steps = {
            "extraction_throughput": lambda: check_extraction(shape, dev, dtype, work),
            "rows_bf16_vs_cpu_f32": lambda: check_bf16_rows(dev),
            "mi_kde": lambda: check_mi(shape, dev),
            "cae_epoch": lambda: check_cae(cae_store(shape, dev, work), dev),
            "perturbation_layer": lambda: check_perturbation(shape, dev, dtype),
            "device_map_split": lambda: check_device_map(shape, dev),
        }
        for name, step in steps.items():
            if only and name not in only:
                continue
            started = time.perf_counter()
            try:
                row = step()
            except Exception as error:  # the table still comes out, with the error in it
                log.exception("check %s failed", name)
                row = Row(
                    name, device, float("nan"), "", "FAIL", f"{type(error).__name__}: {error}"
                )
            row.numbers["check_seconds"] = time.perf_counter() - started
            rows.append(row)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def cae_store(shape: str, device: torch.device, workdir: Path) -> Path:
    """The store the extraction row wrote (its first), or a fresh one from a tiny model."""
    stores = sorted(workdir.glob("x*.zarr"))
    if stores:
        return stores[0]
    model = build_llama(SHAPES["tiny"], torch.float32, torch.device("cpu"))
    seqs = token_batches(64, 4, 24, 200, seed=5)
    meta = {"text_id": np.arange(64), "text_index": np.arange(64), "truncated": np.zeros(64, bool)}
    return extract_to_store(
        Extractor(model, 0), seqs, meta, "last", workdir / "cae.zarr", attrs={}, progress=False
    )


def format_table(rows: list[Row]) -> str:
    head = ("check", "device", "value", "target", "status", "detail")
    body = [(r.check, r.device, f"{r.value:.3g}", r.target, r.status, r.detail) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        " | ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True))
        for line in (head, *body)
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)

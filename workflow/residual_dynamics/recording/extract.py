"""Recording the residual stream of a model over a dataset into an activation store.

Order of work, chosen for throughput with bounded memory:
- texts are tokenised up front (cheap), and the rows to record are laid out (one per text for
  ``last``; several for ``all`` or a list of positions);
- texts are processed in blocks that fill whole store chunks; inside a block they are sorted by
  length so batches carry little padding, and the block is written once, in dataset order,
  by a background thread while the next block runs;
- hooks gather only the recorded positions, on the device, so (batch, seq, d) tensors are never
  copied out;
- on a GPU the gathered rows go to pinned host memory on a side CUDA stream while the next batch's
  forward runs (:class:`HostCopy`); on the CPU they are host memory already and nothing changes;
- every batch is checked for NaN/inf on the device before its copy (one flag per row and
  sublayer); a non-finite row stops the extraction with the model, sublayers, texts and fix named,
  and the store is never completed;
- a model larger than one GPU is spread over the visible GPUs (and, at worst, host memory) with
  ``device_map="auto"`` (:func:`choose_device_map`); hooks then gather on each layer's own device.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from residual_dynamics.inputs import datasets as ds
from residual_dynamics.io.store import (
    chunk_rows_for,
    create_store,
    finalise,
    package_versions,
    temporary_path,
)
from residual_dynamics.recording.hooks import ResidualRecorder, architecture_attrs
from residual_dynamics.recording.placement import choose_device_map

log = logging.getLogger(__name__)


class ExtractionError(ValueError):
    """Bad input to an extraction; the message says what and how to fix it."""


@dataclass
class Tokenised:
    ids: list[list[int]]
    n_original: list[int]  # length before truncation
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def resolve_add_bos(tokenizer, add_bos: str | bool) -> bool:
    """Whether to prepend BOS ourselves: 'auto' does so when the tokenizer does not add a special
    token at the start but has a BOS token (GPT-2's <|endoftext|>, as the paper's setup needs)."""
    if isinstance(add_bos, bool):
        return add_bos
    if tokenizer.bos_token_id is None:
        return False
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return not (probe and probe[0] in set(tokenizer.all_special_ids))


def tokenise(
    tokenizer,
    texts: Sequence[str],
    *,
    add_bos: bool,
    max_tokens: int,
    on_overflow: str,
    dataset: str,
) -> Tokenised:
    """Token ids per text, BOS first where asked, cut to ``max_tokens`` or refused."""
    ids: list[list[int]] = []
    n_original: list[int] = []
    for index, text in enumerate(texts):
        seq = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        if add_bos and (not seq or seq[0] != tokenizer.bos_token_id):
            seq = [tokenizer.bos_token_id, *seq]
        n_original.append(len(seq))
        if len(seq) > max_tokens:
            if on_overflow == "error":
                raise ExtractionError(
                    f"dataset '{dataset}': text {index} has {len(seq)} tokens, more than the "
                    f"model's window of {max_tokens}. Set extraction.on_overflow: truncate, lower "
                    f"datasets.{dataset}.max_chars, or set extraction.max_tokens"
                )
            # Keep the start (BOS and the text's beginning) and the closing special token if any,
            # so encoder models still see [SEP].
            last = seq[-1]
            seq = seq[:max_tokens]
            if last in set(tokenizer.all_special_ids):
                seq[-1] = last
        if len(seq) == 0:
            raise ExtractionError(
                f"dataset '{dataset}': text {index} tokenises to nothing; remove it or raise "
                f"datasets.{dataset}.min_chars"
            )
        ids.append(seq)
    truncated = np.array([n > len(s) for n, s in zip(n_original, ids, strict=True)], dtype=bool)
    if truncated.any():
        log.warning(
            "dataset '%s': %d of %d texts were longer than %d tokens and were truncated "
            "(extraction.on_overflow: truncate); the store's 'truncated' array marks them",
            dataset,
            int(truncated.sum()),
            len(ids),
            max_tokens,
        )
    return Tokenised(ids, n_original, truncated)


def dataset_token_ids(
    tokenizer, part, *, add_bos: bool, max_tokens: int, on_overflow: str, dataset: str
) -> Tokenised:
    """Token ids of a prepared dataset's rows as extraction records them: tokenised, and permuted
    where the rows are the token-shuffled variant (``shuffle_tokens``, ``shuffle_seed``)."""
    tokens = tokenise(
        tokenizer,
        part["text"].tolist(),
        add_bos=add_bos,
        max_tokens=max_tokens,
        on_overflow=on_overflow,
        dataset=dataset,
    )
    if len(part) and bool(part["shuffle_tokens"].any()):
        tokens.ids = shuffle_tokens(tokenizer, tokens.ids, part["shuffle_seed"].tolist())
    return tokens


def shuffle_tokens(tokenizer, ids: list[list[int]], seeds: Sequence[int]) -> list[list[int]]:
    """The paper's token-shuffled control: non-special tokens permuted, BOS/CLS/SEP in place."""
    special = set(tokenizer.all_special_ids)
    return [
        ds.shuffle_token_ids(seq, [t in special for t in seq], int(seed))
        for seq, seed in zip(ids, seeds, strict=True)
    ]


def resolve_positions(positions, n_tokens: int) -> list[int]:
    """Token positions to record for one text: 'last', 'all', or a list (negative from the end).
    Positions outside the text are skipped."""
    if positions == "last":
        return [n_tokens - 1]
    if positions == "all":
        return list(range(n_tokens))
    out = []
    for p in positions:
        q = p if p >= 0 else n_tokens + p
        if 0 <= q < n_tokens and q not in out:
            out.append(q)
    return out


def shard_bounds(n_texts: int, n_shards: int, shard: int, align: int) -> tuple[int, int]:
    """Text range of one shard; boundaries are multiples of ``align`` so shard stores join by
    linking whole chunks."""
    if not 0 <= shard < n_shards:
        raise ExtractionError(f"shard {shard} is outside 0..{n_shards - 1}")
    per = -(-n_texts // n_shards)
    per = -(-per // align) * align
    return min(n_texts, shard * per), min(n_texts, (shard + 1) * per)


def _batches(order: Sequence[int], lengths: Sequence[int], batch_size: int, max_batch_tokens: int):
    """Split texts (already sorted by length, longest first) into batches bounded in count and
    in padded tokens."""
    batch: list[int] = []
    for index in order:
        longest = lengths[batch[0]] if batch else lengths[index]
        if batch and (len(batch) >= batch_size or longest * (len(batch) + 1) > max_batch_tokens):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def plan_blocks(
    lengths: Sequence[int],
    per_text: Sequence[Sequence[int]],
    chunk_rows: int,
    batch_size: int,
    max_batch_tokens: int,
) -> list[tuple[int, int, list[list[int]]]]:
    """The order of work: (first text, end text, batches) per block of texts whose rows fill
    whole chunks (or reach the end); inside a block, batches of texts sorted by (-length, index)."""
    row_start = np.concatenate([[0], np.cumsum([len(p) for p in per_text])])
    blocks = []
    text = 0
    while text < len(lengths):
        block_end = text
        while block_end < len(lengths) and (
            row_start[block_end + 1] - row_start[text] <= chunk_rows or block_end == text
        ):
            block_end += 1
        order = sorted(range(text, block_end), key=lambda i: (-lengths[i], i))
        blocks.append(
            (text, block_end, list(_batches(order, lengths, batch_size, max_batch_tokens)))
        )
        text = block_end
    return blocks


def _gather(rows_b: torch.Tensor, rows_t: torch.Tensor, out_device: torch.device):
    """The hook's selector: the recorded (batch, token) rows of a (batch, seq, d) state, as
    float32 on ``out_device``. With one device both ``.to`` calls are no-ops; a model spread over
    GPUs (device_map) has states on several, so the indices follow the state and the rows come back
    to the input device (a few KiB per sublayer, never the whole state)."""
    index = {rows_b.device: (rows_b, rows_t)}

    def select(h: torch.Tensor) -> torch.Tensor:
        if h.device not in index:
            index[h.device] = (rows_b.to(h.device), rows_t.to(h.device))
        b, t = index[h.device]
        return h[b, t].float().to(out_device)

    return select


class HostCopy:
    """Moves gathered rows from the model's device to host memory.

    On CUDA, :meth:`start` queues the copy into pinned host memory on a side stream, ordered after
    the forward by an event, and returns at once: the next batch's forward is queued while the
    copy runs, and :meth:`Pending.numpy` waits for it. On the CPU the rows are host memory
    already and :meth:`start` hands them back as they are (the CPU path does no extra work).
    """

    def __init__(self, device: torch.device):
        self.asynchronous = device.type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.asynchronous else None

    def start(self, rows: torch.Tensor) -> Pending:
        if not self.asynchronous:
            return Pending(rows.cpu())
        ready = torch.cuda.Event()
        # On the compute stream, after the kernels that produce ``rows``.
        ready.record(torch.cuda.current_stream(rows.device))
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            host.copy_(rows, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        # ``rows`` is kept alive until the copy is done, so the allocator cannot hand its memory
        # to the next forward while the side stream still reads it.
        return Pending(host, done, rows)


@dataclass
class Pending:
    """Rows on their way to the host; ``numpy()`` waits for the copy to finish."""

    host: torch.Tensor
    done: object | None = None
    source: torch.Tensor | None = None

    def numpy(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
            self.done, self.source = None, None
        return self.host.numpy()


class Extractor:
    """Runs a model over token sequences and returns the residual stream at chosen positions."""

    def __init__(self, model, pad_id: int, padding_side: str = "right", include_final: bool = True):
        self.model = model
        # Inputs go where the embeddings are: the first device of a model spread over several.
        embeddings = (
            model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        )
        weight = getattr(embeddings, "weight", None)
        self.device = weight.device if weight is not None else next(model.parameters()).device
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.recorder = ResidualRecorder(model, include_final=include_final)
        self.sublayers = self.recorder.names
        accepted = inspect.signature(model.forward).parameters
        self._pass_positions = "position_ids" in accepted

    @torch.inference_mode()
    def run_batch(self, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]):
        """(rows, n_sublayers, d) float32 for each (sequence, position) pair, in order."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        batch_index, token_index = [], []
        for i, (seq, pos) in enumerate(zip(seqs, positions, strict=True)):
            offset = width - len(seq) if self.padding_side == "left" else 0
            ids[i, offset : offset + len(seq)] = torch.as_tensor(seq)
            mask[i, offset : offset + len(seq)] = 1
            batch_index += [i] * len(pos)
            token_index += [offset + p for p in pos]
        ids, mask = ids.to(self.device), mask.to(self.device)
        rows_b = torch.as_tensor(batch_index, device=self.device)
        rows_t = torch.as_tensor(token_index, device=self.device)
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if self._pass_positions:
            # Positions count real tokens only, so left padding does not shift them.
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        with self.recorder:
            self.recorder.set_selector(_gather(rows_b, rows_t, self.device))
            self.model(**kwargs, use_cache=False)
            return self.recorder.take()


def _flags_to_host(flags: torch.Tensor, host_copy) -> np.ndarray:
    """A small device tensor as numpy, copied on the host copy's side stream where there is one:
    that stream is already ordered after the forward that made ``flags``, and syncing it does not
    wait for the next batch's forward queued on the compute stream."""
    stream = getattr(host_copy, "stream", None)
    if stream is None or flags.device.type != "cuda":
        return flags.cpu().numpy()
    with torch.cuda.stream(stream):
        return flags.cpu().numpy()


def _non_finite_error(
    extractor: Extractor,
    attrs: dict,
    out_path: Path,
    batch: list[int],
    per_text: Sequence[Sequence[int]],
    row_meta: dict[str, np.ndarray],
    bad: np.ndarray,
) -> ExtractionError:
    """The error for NaN/inf rows in one batch: which model, sublayers and texts, and the fix."""
    name = attrs.get("model", "?")
    sublayers = [extractor.sublayers[j] for j in np.flatnonzero(bad.any(axis=0))]
    text_of_row = np.repeat(batch, [len(per_text[i]) for i in batch])
    index = np.asarray(row_meta.get("text_index", np.arange(len(per_text))))
    texts = sorted({int(index[i]) for i in text_of_row[bad.any(axis=1)]})
    weights = [
        n
        for n, p in extractor.model.named_parameters()
        if p.device.type != "meta" and not bool(torch.isfinite(p).all())
    ]
    cause = (
        f"weights hold NaN/inf ({', '.join(weights[:3])}{' ...' if len(weights) > 3 else ''}): "
        "the checkpoint is broken, load a good one"
        if weights
        else f"the weights are finite, so the forward overflows in dtype {attrs.get('dtype')!r}: "
        f"set models.{name}.dtype: float32 (or bfloat16, which has float32's range)"
    )
    return ExtractionError(
        f"models.{name}: non-finite activations (NaN or inf) from sublayer {sublayers[0]} on "
        f"(sublayers {', '.join(sublayers[:4])}{' ...' if len(sublayers) > 4 else ''}) for "
        f"dataset text index(es) {', '.join(map(str, texts[:5]))}{' ...' if len(texts) > 5 else ''}"
        f" ({len(texts)} text(s) in this batch). {cause}. The store was not completed "
        f"({temporary_path(out_path).name} is left behind and never read)"
    )


def _write_block(resid, rows: slice, buffer: np.ndarray, store_dtype: str) -> None:
    with np.errstate(over="ignore"):  # an overflow is reported below, with the fix
        values = buffer.astype(store_dtype, copy=False)
    # Rows are finite in float32 (checked per batch); float16 tops out at 65504.
    if values is not buffer and not np.isfinite(values).all():
        raise ExtractionError(
            f"rows {rows.start}..{rows.stop}: activations beyond the range of "
            f"extraction.store_dtype {store_dtype!r} (largest |x| {np.abs(buffer).max():.4g}); "
            "set extraction.store_dtype: float32"
        )
    resid[rows] = values


def _scatter(buffer, row_start, first_text, per_text, batch: list[int], pending: Pending) -> None:
    """Put one batch's rows (sorted by length) at their texts' places in the block's buffer."""
    rows = pending.numpy()
    cursor = 0
    for i in batch:
        k = len(per_text[i])
        start = row_start[i] - row_start[first_text]
        buffer[start : start + k] = rows[cursor : cursor + k]
        cursor += k


def extract_to_store(
    extractor: Extractor,
    seqs: list[list[int]],
    row_meta: dict[str, np.ndarray],
    positions,
    out_path: Path,
    *,
    attrs: dict,
    store_dtype: str = "float32",
    chunk_rows: int | None = None,
    chunk_mib: float = 4.0,
    batch_size: int = 32,
    max_batch_tokens: int = 16384,
    progress: bool = True,
    host_copy: HostCopy | None = None,
) -> Path:
    """Record ``seqs`` into a store at ``out_path`` (built at a temporary path, then renamed).

    ``row_meta`` holds per-text arrays (``text_id``, ``text_index``, ``truncated``) copied onto
    every row recorded from that text. ``host_copy`` moves rows to the host (default: a
    :class:`HostCopy` for the extractor's device); one batch's copy stays in flight while the
    next batch runs.
    """
    d_model = extractor.model.config.hidden_size
    per_text = [resolve_positions(positions, len(s)) for s in seqs]
    n_rows = sum(len(p) for p in per_text)
    # No texts at all is a shard past the end of a small dataset (shard_bounds aligns shards to
    # whole chunks): write an empty store so merge_shards still gets every shard.
    if n_rows == 0 and seqs:
        raise ExtractionError(
            f"no rows to record for {out_path.name}: positions {positions!r} select no token "
            "of any text"
        )
    itemsize = np.dtype(store_dtype).itemsize
    chunk_rows = chunk_rows or chunk_rows_for(d_model, itemsize, chunk_mib, n_rows)
    host_copy = host_copy or HostCopy(extractor.device)
    tmp = temporary_path(out_path)
    group = create_store(tmp, n_rows, extractor.sublayers, d_model, store_dtype, chunk_rows, attrs)
    resid = group["resid"]
    row_start = np.concatenate([[0], np.cumsum([len(p) for p in per_text])])
    lengths = [len(s) for s in seqs]

    # Metadata rows first: small, and written whole.
    text_of_row = np.repeat(np.arange(len(seqs)), [len(p) for p in per_text])
    group["token_position"][:] = np.asarray([p for ps in per_text for p in ps], np.int32)
    group["n_tokens"][:] = np.asarray(lengths, np.int32)[text_of_row]
    group["token_id"][:] = np.asarray(
        [seqs[t][p] for t, ps in enumerate(per_text) for p in ps], np.int64
    )
    for name, values in row_meta.items():
        group[name][:] = np.asarray(values)[text_of_row]

    bar = tqdm(
        total=len(seqs),
        desc=f"extract {out_path.name}",
        unit="text",
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 10,
        disable=not progress,
    )

    def settle(buffer, first_text, done: list[int], pending: Pending, finite: torch.Tensor):
        """One batch's rows into the block's buffer, refused if any is NaN or inf."""
        _scatter(buffer, row_start, first_text, per_text, done, pending)
        # The copy above is done, so reading the flags waits for nothing else.
        bad = ~_flags_to_host(finite, host_copy)
        if bad.any():
            raise _non_finite_error(extractor, attrs, out_path, done, per_text, row_meta, bad)
        bar.update(len(done))

    # The store is written by one background thread, one block at a time, while the next
    # block's forwards run: at most two blocks of rows are held, and a fast GPU does not wait
    # for chunk encoding and the filesystem.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as writer:
        writing = None
        for text, block_end, batches in plan_blocks(
            lengths, per_text, chunk_rows, batch_size, max_batch_tokens
        ):
            buffer = np.empty(
                (row_start[block_end] - row_start[text], len(extractor.sublayers), d_model),
                np.float32,
            )
            in_flight: deque[tuple[list[int], Pending, torch.Tensor]] = deque()
            for batch in batches:
                rows = extractor.run_batch([seqs[i] for i in batch], [per_text[i] for i in batch])
                # On the device, before the copy: a (rows, sublayers) flag, not a sync. A sum is
                # NaN or inf when any term is (or when it passes 3e38: broken either way), and is
                # one pass, 35x faster than isfinite(rows).all(-1) on the CPU (measured).
                finite = torch.isfinite(rows.sum(dim=-1))
                in_flight.append((batch, host_copy.start(rows), finite))
                # Keep the newest copy in flight while the next forward is queued.
                while len(in_flight) > 1:
                    settle(buffer, text, *in_flight.popleft())
            while in_flight:
                settle(buffer, text, *in_flight.popleft())
            if writing is not None:
                writing.result()  # the previous block is written (and its errors raised)
            rows_range = slice(int(row_start[text]), int(row_start[block_end]))
            writing = writer.submit(_write_block, resid, rows_range, buffer, store_dtype)
        if writing is not None:
            writing.result()
    bar.close()
    finalise(tmp, out_path)
    return out_path


def pad_token_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def record_activations(
    *,
    model_name: str,
    model_spec: dict,
    dataset_name: str,
    dataset_path: Path,
    out_path: Path,
    extraction: dict,
    shard: int = 0,
    n_shards: int = 1,
    progress: bool = True,
) -> Path:
    """Everything the extract rule does: dataset + model spec in, one (shard) store out."""
    from residual_dynamics.inputs.models import context_window, load_model

    frame, meta = ds.read_dataset(dataset_path)
    if len(frame) == 0:
        raise ExtractionError(f"dataset '{dataset_name}' ({dataset_path}) has no texts")
    device_map = choose_device_map(model_name, model_spec, extraction["device"])
    loaded = load_model(model_name, model_spec, device=extraction["device"], device_map=device_map)
    tokenizer, model = loaded.tokenizer, loaded.model
    window = context_window(model, tokenizer)
    max_tokens = min(extraction.get("max_tokens") or window, window)
    add_bos = resolve_add_bos(tokenizer, model_spec.get("add_bos", "auto"))
    positions = extraction["positions"]
    store_dtype = extraction["store_dtype"]
    d_model = int(model.config.hidden_size)
    # Chunking is fixed by the whole dataset, so every shard's chunks line up.
    chunk_rows = chunk_rows_for(
        d_model,
        np.dtype(store_dtype).itemsize,
        extraction["chunk_mib"],
        len(frame) if positions == "last" else 10**9,
    )
    start, stop = shard_bounds(
        len(frame), n_shards, shard, chunk_rows if positions == "last" else 1
    )
    part = frame.iloc[start:stop]
    tokens = dataset_token_ids(
        tokenizer,
        part,
        add_bos=add_bos,
        max_tokens=max_tokens,
        on_overflow=extraction["on_overflow"],
        dataset=dataset_name,
    )
    seqs = tokens.ids
    shuffled = bool(part["shuffle_tokens"].any()) if len(part) else False
    extractor = Extractor(
        model,
        pad_id=pad_token_id(tokenizer),
        padding_side=extraction["padding_side"],
        include_final=extraction["include_final"],
    )
    attrs = {
        "model": model_name,
        "model_source": loaded.source,
        "model_revision": loaded.revision,
        "dtype": model_spec.get("dtype", "float32"),
        "positions": positions if isinstance(positions, str) else list(positions),
        "dataset": dataset_name,
        "dataset_hash": meta.get("texts_hash"),
        "shuffle_tokens": shuffled,
        "n_texts": len(part),
        "shard": shard,
        "n_shards": n_shards,
        "text_range": [start, stop],
        "dataset_n_texts": len(frame),
        "add_bos": add_bos,
        "max_tokens": max_tokens,
        "seed": int(meta.get("seed", 0)),
        "versions": package_versions(),
        **architecture_attrs(model),
    }
    row_meta = {
        "text_id": part["text_id"].to_numpy(np.int64),
        "text_index": np.arange(start, stop, dtype=np.int64),
        "truncated": tokens.truncated,
    }
    return extract_to_store(
        extractor,
        seqs,
        row_meta,
        positions,
        Path(out_path),
        attrs=attrs,
        store_dtype=store_dtype,
        chunk_rows=chunk_rows,
        batch_size=extraction["batch_size"],
        max_batch_tokens=extraction["max_batch_tokens"],
        progress=progress,
    )

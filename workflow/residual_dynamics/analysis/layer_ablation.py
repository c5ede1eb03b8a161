"""Layer deletion and adjacent-layer swap: how much each block matters, and in which order.

For a causal LM and a list of token sequences this measures the intact model's mean next-token
loss and, for every layer l, two altered models (Lad et al. 2024, "stages of inference"):

- ``delete``: block l is skipped; the residual stream passes it unchanged (h_{l+1} = h_l);
- ``swap``: blocks l and l+1 run in the order l+1, l (undefined for the last layer: NaN).

Per variant and layer: the change in next-token loss against the intact model (token-weighted
mean over the dataset, and per text so an interval can be drawn over texts, see
:func:`bootstrap_interval`) and the mean next-token KL(intact || variant).

How the model is altered. No weights are copied: inside :func:`layer_variant` the entries of the
model's ModuleList of blocks are reassigned (a swap puts the two block objects in each other's
slots; a deletion puts a weightless stand-in in the slot) and everything is put back in a
``finally`` block, so the model is intact afterwards even when the forward pass raises.

What a swap means for blocks that depend on their index. A block moves as a whole; it keeps
everything that makes it that block:

- its ``layer_idx`` (used by attention caches, and by GPT-2's optional
  ``scale_attn_by_inverse_layer_idx``): forward passes here run with ``use_cache=False``, so no
  cache is indexed, and a scaling tied to the index travels with the block;
- its attention span. Gemma 2 alternates sliding-window and full attention, and Gemma 3 (and
  Qwen2 with sliding windows) choose each slot's mask and, for Gemma 3, its rotary table
  from ``config.layer_types[i]`` in the model's layer loop. The swap permutes that list with the
  blocks (restored afterwards), so a sliding-window block keeps its window in its new slot. A
  consequence: swapping two Gemma 2 blocks of identical weights is not a no-op on texts longer
  than the window, since a local and a global layer trade places;
- rotary position embeddings otherwise come from the position ids, once per forward pass, and
  are the same for every slot, so they need nothing.

A deleted slot's layer type is never read (the stand-in ignores the mask). On a model spread
over several devices, blocks keep their own device hooks, so moved blocks still run where their
weights are.

Padded batches: sequences are batched by length with an attention mask and position ids that
count real tokens only, and losses are taken only where both the input and the target token are
the sequence's own, so left padding, right padding and each sequence alone give the same numbers.
Cost: per batch, one intact forward pass plus one per variant (2 L - 1 for L layers); beyond the
forward pass, about three float32 (predictions x vocabulary) arrays, bounded by
``max_batch_tokens``.
"""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from residual_dynamics.recording.hooks import architecture_for, first_tensor

log = logging.getLogger(__name__)

VARIANTS = ("delete", "swap")


class LayerAblationError(ValueError):
    """The model or the inputs cannot be ablated; the message says why and what to do."""


@dataclass
class LayerStack:
    """The model's blocks and the per-layer list its layer loop reads (``None`` if it has none)."""

    blocks: nn.ModuleList
    config: object
    layer_types_key: str | None


def layer_stack(model) -> LayerStack:
    """The ModuleList of blocks of a causal LM with its head, or a LayerAblationError."""
    arch = architecture_for(model.config)
    model_type = getattr(model.config, "model_type", "?")
    if not arch.causal:
        raise LayerAblationError(
            f"layer ablation needs a causal LM: '{model_type}' is not one (next-token loss and KL "
            "mean nothing for it). Run the layer ablation only on causal models"
        )
    if model.get_output_embeddings() is None:
        raise LayerAblationError(
            f"the '{model_type}' model was loaded without its LM head; load it with its head "
            "(load_model(..., with_head=True)) to measure next-token loss"
        )
    parent_path, _, _ = arch.layers.rpartition(".")
    base = model.base_model
    parent = operator.attrgetter(parent_path)(base) if parent_path else base
    blocks = operator.attrgetter(arch.layers)(base)
    # The config the layer loop reads: the one of the module holding the blocks.
    config = getattr(parent, "config", model.config)
    types = getattr(config, "layer_types", None)
    key = "layer_types" if isinstance(types, list | tuple) and len(types) == len(blocks) else None
    return LayerStack(blocks, config, key)


def block_output_arity(model) -> int:
    """0 if the model's blocks return a tensor, n if they return an n-tuple (hidden state first).

    Found by one forward pass of one token, so a deleted block's stand-in answers in the form
    the model's layer loop expects (Falcon indexes ``outputs[0]``; Llama takes the tensor).
    """
    blocks = layer_stack(model).blocks
    seen: list[int] = []

    def hook(_module, _args, output):
        seen.append(len(output) if isinstance(output, tuple | list) else 0)

    handle = blocks[0].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            ids = torch.zeros((1, 1), dtype=torch.long, device=input_device(model))
            model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return seen[0]


class SkippedBlock(nn.Module):
    """Stands in for a deleted block: returns its input, in the block's output form."""

    def __init__(self, arity: int):
        super().__init__()
        self.arity = arity

    def forward(self, *args, **kwargs):
        hidden = first_tensor(args, kwargs)
        if self.arity == 0:
            return hidden
        return (hidden, *([None] * (self.arity - 1)))


def variant_order(n_layers: int, variant: str, layer: int) -> list[int]:
    """The original indices of the blocks in the order the variant runs them."""
    if variant not in VARIANTS:
        raise LayerAblationError(f"unknown variant '{variant}'; use one of {list(VARIANTS)}")
    last = n_layers - 1 if variant == "delete" else n_layers - 2
    if not 0 <= layer <= last:
        raise LayerAblationError(
            f"{variant} at layer {layer}: the model has {n_layers} layers, so layer must be in "
            f"0..{last}" + (" (a swap needs layer l+1)" if variant == "swap" else "")
        )
    order = list(range(n_layers))
    if variant == "delete":
        del order[layer]
    else:
        order[layer], order[layer + 1] = order[layer + 1], order[layer]
    return order


@contextmanager
def layer_variant(
    model, variant: str, layer: int, *, block_arity: int | None = None
) -> Iterator[None]:
    """Inside the block, ``model`` runs with layer ``layer`` deleted or swapped with ``layer+1``.

    ``block_arity`` (from :func:`block_output_arity`) saves a one-token probe per deletion.
    The ModuleList entries and ``config.layer_types`` are restored on exit, also on errors.
    """
    stack = layer_stack(model)
    blocks = stack.blocks
    variant_order(len(blocks), variant, layer)  # validates
    if variant == "delete" and block_arity is None:
        block_arity = block_output_arity(model)
    originals = list(blocks)
    key = stack.layer_types_key
    saved_types = getattr(stack.config, key) if key else None
    try:
        if variant == "delete":
            blocks[layer] = SkippedBlock(block_arity)
        else:
            blocks[layer], blocks[layer + 1] = originals[layer + 1], originals[layer]
            if key:
                # A block keeps its attention type (sliding window or full) in its new slot.
                types = list(saved_types)
                types[layer], types[layer + 1] = types[layer + 1], types[layer]
                setattr(stack.config, key, type(saved_types)(types))
        yield
    finally:
        for index, block in enumerate(originals):
            if blocks[index] is not block:
                blocks[index] = block
        if key:
            setattr(stack.config, key, saved_types)


def input_device(model) -> torch.device:
    """Where input ids go: the device of the input embeddings (the first of a spread model)."""
    weight = getattr(model.get_input_embeddings(), "weight", None)
    return weight.device if weight is not None else next(model.parameters()).device


def padded_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(ids, attention mask, offset of each sequence's first token) for a batch of sequences."""
    if padding_side not in ("left", "right"):
        raise LayerAblationError(f"padding_side: '{padding_side}'; use 'left' or 'right'")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(seqs):
        offset = width - len(seq) if padding_side == "left" else 0
        ids[row, offset : offset + len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, offset : offset + len(seq)] = 1
        offsets.append(offset)
    return ids, mask, offsets


def causal_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, vocab) logits of a padded batch, positions counting real tokens only."""
    device = input_device(model)
    ids, mask = ids.to(device), mask.to(device)
    kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if "position_ids" in inspect.signature(model.forward).parameters:
        # Left padding must not shift positions (absolute embeddings, rotary phases).
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        return model(**kwargs).logits


def length_batches(
    lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None
) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), bounded in count and in
    padded tokens (a single sequence longer than ``max_batch_tokens`` gets a batch of its own)."""
    if batch_size < 1:
        raise LayerAblationError(f"batch_size: {batch_size}; use at least 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        too_many = len(current) >= batch_size
        too_long = max_batch_tokens is not None and width * (len(current) + 1) > max_batch_tokens
        if current and (too_many or too_long):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@dataclass
class Predictions:
    """The next-token predictions of a padded batch: where they are read and what they predict."""

    rows: torch.Tensor  # batch row of each prediction
    positions: torch.Tensor  # position of the input token in the padded batch
    targets: torch.Tensor  # the token to predict (the next real token)


def predictions(seqs: Sequence[Sequence[int]], offsets: Sequence[int], device) -> Predictions:
    """Every position whose input and next token are both the sequence's own (no pads)."""
    rows, positions, targets = [], [], []
    for row, (seq, offset) in enumerate(zip(seqs, offsets, strict=True)):
        n = len(seq) - 1
        rows += [row] * n
        positions += range(offset, offset + n)
        targets += list(seq[1:])

    def tensor(values):
        return torch.as_tensor(values, dtype=torch.long, device=device)

    return Predictions(tensor(rows), tensor(positions), tensor(targets))


def token_log_probs(logits: torch.Tensor, where: Predictions) -> torch.Tensor:
    """(n_predictions, vocab) float32 log-probabilities at the predicted positions."""
    return torch.log_softmax(logits[where.rows, where.positions].float(), dim=-1)


def per_text_sums(values: torch.Tensor, where: Predictions, n_rows: int) -> np.ndarray:
    sums = torch.zeros(n_rows, dtype=torch.float64, device=values.device)
    sums.index_add_(0, where.rows, values.double())
    return sums.cpu().numpy()


def layer_ablation(
    model,
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int,
    layers: Sequence[int] | None = None,
    variants: Sequence[str] = VARIANTS,
    padding_side: str = "right",
    batch_size: int = 8,
    max_batch_tokens: int | None = 4096,
    text_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Loss and KL of every layer deletion and adjacent swap against the intact model.

    Returns a Dataset with coordinates ``variant``, ``layer`` and ``text`` and variables
    ``n_predictions`` (text), ``loss_intact`` (text; mean next-token loss in nats),
    ``loss`` / ``delta_loss_text`` / ``kl_text`` (variant, layer, text; per-text means),
    ``delta_loss`` / ``kl`` (variant, layer; means over all predicted tokens) and
    ``loss_intact_mean``. Swaps at the last layer are NaN.
    """
    stack = layer_stack(model)
    n_layers = len(stack.blocks)
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    for variant in variants:
        for layer in layers:
            if not (variant == "swap" and layer == n_layers - 1):
                variant_order(n_layers, variant, layer)  # validates
    short = [i for i, s in enumerate(seqs) if len(s) < 2]
    if not seqs or short:
        raise LayerAblationError(
            "layer ablation needs sequences of at least 2 tokens (one next-token prediction); "
            + (f"sequences {short[:5]} are shorter" if seqs else "none were given")
        )
    n_texts = len(seqs)
    shape = (len(variants), len(layers), n_texts)
    loss_sum = np.full(shape, np.nan)
    kl_sum = np.full(shape, np.nan)
    intact_sum = np.zeros(n_texts)
    counts = np.array([len(s) - 1 for s in seqs], dtype=np.int64)
    arity = block_output_arity(model)
    device = input_device(model)
    was_training = model.training
    model.eval()
    batches = length_batches([len(s) for s in seqs], batch_size, max_batch_tokens)
    try:
        for batch in tqdm(batches, desc="layer ablation", disable=not progress):
            part = [seqs[i] for i in batch]
            ids, mask, offsets = padded_batch(part, pad_id, padding_side)
            where = predictions(part, offsets, device)
            intact = token_log_probs(causal_logits(model, ids, mask), where)
            targets = where.targets[:, None]
            intact_sum[batch] = per_text_sums(-intact.gather(1, targets)[:, 0], where, len(part))
            p_intact = intact.exp()
            for vi, variant in enumerate(variants):
                for li, layer in enumerate(layers):
                    if variant == "swap" and layer == n_layers - 1:
                        continue
                    with layer_variant(model, variant, layer, block_arity=arity):
                        altered = token_log_probs(causal_logits(model, ids, mask), where)
                    nll = -altered.gather(1, targets)[:, 0]
                    kl = (p_intact * (intact - altered)).sum(-1)
                    loss_sum[vi, li, batch] = per_text_sums(nll, where, len(part))
                    kl_sum[vi, li, batch] = per_text_sums(kl, where, len(part))
    finally:
        model.train(was_training)
    return ablation_dataset(
        loss_sum, kl_sum, intact_sum, counts, list(variants), layers, text_ids, stack, model
    )


def ablation_dataset(
    loss_sum, kl_sum, intact_sum, counts, variants, layers, text_ids, stack, model
) -> xr.Dataset:
    """Per-text means and token-weighted dataset means from per-text sums."""
    loss = loss_sum / counts
    loss_intact = intact_sum / counts
    total = counts.sum()
    coords = {
        "variant": variants,
        "layer": layers,
        "text": np.arange(len(counts)) if text_ids is None else np.asarray(text_ids),
    }
    dims = ("variant", "layer", "text")
    return xr.Dataset(
        {
            "n_predictions": ("text", counts),
            "loss_intact": ("text", loss_intact),
            "loss": (dims, loss),
            "delta_loss_text": (dims, loss - loss_intact),
            "kl_text": (dims, kl_sum / counts),
            "delta_loss": (dims[:2], (loss_sum - intact_sum).sum(-1) / total),
            "kl": (dims[:2], kl_sum.sum(-1) / total),
            "loss_intact_mean": ((), intact_sum.sum() / total),
        },
        coords=coords,
        attrs={
            "architecture": str(getattr(model.config, "model_type", "")),
            "n_layers": len(stack.blocks),
            "n_tokens": int(total),
            "loss_units": "nats per next-token prediction",
            "kl": "KL(intact || variant) of the next-token distribution, nats",
            "swap": "blocks l and l+1 run as l+1, l; each keeps its layer_idx and attention type",
            "delete": "block l skipped: the residual stream passes it unchanged",
        },
    )


def bootstrap_interval(
    ablation: xr.Dataset,
    measure: str = "delta_loss",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    """Seeded bootstrap over texts of a token-weighted dataset mean (``delta_loss`` or ``kl``):
    ``low`` and ``high`` per variant and layer, and ``estimate`` (the full-data value)."""
    per_text = {"delta_loss": "delta_loss_text", "kl": "kl_text"}
    if measure not in per_text:
        raise LayerAblationError(f"measure '{measure}': use one of {sorted(per_text)}")
    values = ablation[per_text[measure]].transpose("variant", "layer", "text").values
    weights = ablation["n_predictions"].values.astype(np.float64)
    rng = np.random.default_rng(seed)
    n_texts = len(weights)
    draws = rng.multinomial(n_texts, np.full(n_texts, 1.0 / n_texts), size=n_boot) * weights
    estimates = np.einsum("bt,vlt->vlb", draws, values) / draws.sum(1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(estimates, [tail, 1.0 - tail], axis=-1)
    dims = ("variant", "layer")
    return xr.Dataset(
        {"estimate": (dims, ablation[measure].values), "low": (dims, low), "high": (dims, high)},
        coords={"variant": ablation["variant"], "layer": ablation["layer"]},
        attrs={"measure": measure, "n_boot": n_boot, "level": level, "seed": seed},
    )


def run_layer_ablation(
    *,
    model_name: str,
    model_spec: dict,
    dataset_path,
    n_texts: int | None = None,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    max_batch_tokens: int | None = 4096,
    padding_side: str = "right",
    max_tokens: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """What a layer-ablation rule does: the model (with its head, in the spec's dtype) and a
    prepared dataset in, the ablation Dataset out. ``n_texts`` draws a seeded sample of texts."""
    from residual_dynamics.inputs import datasets as ds
    from residual_dynamics.inputs.models import context_window, load_model
    from residual_dynamics.recording.extract import (
        dataset_token_ids,
        pad_token_id,
        resolve_add_bos,
    )

    frame, meta = ds.read_dataset(dataset_path)
    if len(frame) == 0:
        raise LayerAblationError(f"dataset {dataset_path} has no texts")
    frame = ds.seeded_sample(frame, n_texts, seed)
    loaded = load_model(model_name, model_spec, device=device, with_head=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    layer_stack(model)  # a clear error for non-causal models before any tokenising
    window = context_window(model, tokenizer)
    tokens = dataset_token_ids(
        tokenizer,
        frame,
        add_bos=resolve_add_bos(tokenizer, model_spec.get("add_bos", "auto")),
        max_tokens=min(max_tokens or window, window),
        on_overflow="truncate",
        dataset=str(dataset_path),
    )
    log.info(
        "layer ablation of %s on %d texts (%d tokens): %d forward passes per batch",
        model_name,
        len(tokens.ids),
        sum(len(ids) for ids in tokens.ids),
        2 * len(layer_stack(model).blocks) if layers is None else 2 * len(layers) + 1,
    )
    result = layer_ablation(
        model,
        tokens.ids,
        pad_id=pad_token_id(tokenizer),
        layers=layers,
        padding_side=padding_side,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        text_ids=frame["text_id"].to_numpy(np.int64),
        progress=progress,
    )
    result.attrs.update(
        model=model_name,
        model_source=loaded.source,
        dtype=model_spec.get("dtype", "float32"),
        dataset=str(dataset_path),
        dataset_hash=str(meta.get("texts_hash")),
        seed=seed,
    )
    return result


def with_intervals(ablation: xr.Dataset, n_boot: int = 1000, seed: int = 0) -> xr.Dataset:
    """The ablation with seeded bootstrap 95 % intervals over texts of ``delta_loss`` and ``kl``
    (``<measure>_low`` / ``<measure>_high`` per variant and layer)."""
    out = ablation.copy()
    for measure in ("delta_loss", "kl"):
        interval = bootstrap_interval(ablation, measure, n_boot=n_boot, seed=seed)
        out[f"{measure}_low"] = interval["low"]
        out[f"{measure}_high"] = interval["high"]
    out.attrs.update(n_boot=n_boot, interval="bootstrap 95 % over texts (token-weighted means)")
    return out

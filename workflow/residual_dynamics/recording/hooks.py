"""Where the residual stream is read in each architecture family.

The paper records, per decoder layer l, the residual stream at the input of the pre-attention
norm (``attn{l}``) and at the input of the pre-MLP norm (``mlp{l}``), interleaved as
attn0, mlp0, attn1, ... . Every family is one row of ``ARCHITECTURES``: where its blocks live
and which module's *input* is the pre-MLP state. Adding a family is adding a row.

Points are read with forward pre-hooks (the input of a module), so nothing about the model's own
forward changes, and the selected token positions are gathered on the device inside the hook so
full (batch, seq, d) tensors are never kept.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no row in ARCHITECTURES."""


@dataclass(frozen=True)
class Architecture:
    """How to find the residual-stream points of one family.

    ``layers``: attribute path from the base model (``model.base_model``) to the ModuleList of blocks.
    ``mid``: attribute path, relative to one block, of the module whose input is the residual stream
    between attention and MLP; ``None`` for parallel-block models, which have no such state.
    ``final_norm``: attribute path of the final norm from the base model (None for post-norm models).
    ``norm``: "pre" or "post" (post-norm streams are normalised; the report says so).
    """

    layers: str
    mid: str | None
    final_norm: str | None
    norm: str = "pre"
    note: str = ""
    causal: bool = True  # a causal LM: next-token logits mean something


_LLAMA_LIKE = Architecture(layers="layers", mid="post_attention_layernorm", final_norm="norm")

# model_type (config.model_type) -> Architecture. Keep one row per family; aliases share a row.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    # Gemma 2/3 normalise the attention output before adding it back; the pre-MLP residual
    # stream is the input of pre_feedforward_layernorm, not of post_attention_layernorm.
    "gemma2": Architecture(layers="layers", mid="pre_feedforward_layernorm", final_norm="norm"),
    "gemma3_text": Architecture(
        layers="layers", mid="pre_feedforward_layernorm", final_norm="norm"
    ),
    "gpt2": Architecture(layers="h", mid="ln_2", final_norm="ln_f"),
    # BERT is post-norm: the layer input, and the attention block's output after its LayerNorm
    # (the input of `intermediate`). Both are already normalised.
    "bert": Architecture(
        layers="encoder.layer",
        mid="intermediate",
        final_norm=None,
        norm="post",
        note="post-norm: recorded states are LayerNorm outputs",
        causal=False,
    ),
    # Parallel blocks compute attention and MLP from the same input: one point per layer.
    "gpt_neox": Architecture(
        layers="layers",
        mid=None,
        final_norm="final_layer_norm",
        note="parallel attention/MLP: one point per layer",
    ),
    "falcon": Architecture(
        layers="h",
        mid=None,
        final_norm="ln_f",
        note="parallel attention/MLP: one point per layer",
    ),
}

# GPT-NeoX can be configured sequential (use_parallel_residual=False): then ln_2's input is the
# pre-MLP residual stream, as in GPT-2.
_GPT_NEOX_SEQUENTIAL = Architecture(
    layers="layers", mid="post_attention_layernorm", final_norm="final_layer_norm"
)


def architecture_for(config) -> Architecture:
    """The row of ARCHITECTURES for a transformers config, or a clear error on how to add one."""
    model_type = getattr(config, "model_type", None)
    if model_type == "gpt_neox" and not getattr(config, "use_parallel_residual", True):
        return _GPT_NEOX_SEQUENTIAL
    if model_type == "falcon" and not getattr(config, "parallel_attn", True):
        raise UnsupportedArchitectureError(
            "falcon with parallel_attn=False is not in the hook table yet: add a row for it in "
            "workflow/residual_dynamics/hooks.py (ARCHITECTURES)"
        )
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedArchitectureError(
            f"architecture '{model_type}' has no residual-stream hook points. Known: {known}. "
            "To add it, put a row in ARCHITECTURES in workflow/residual_dynamics/hooks.py: the "
            "attribute path to the list of blocks (from model.base_model), the module inside a "
            "block whose input is the pre-MLP residual stream (None for parallel blocks), and the "
            "final norm; then add it to the per-family test in tests/test_hooks.py."
        ) from None


def sublayer_names(n_layers: int, arch: Architecture, include_final: bool) -> list[str]:
    """attn0, mlp0, attn1, ... (attn only for parallel blocks), then 'final' if asked."""
    names: list[str] = []
    for layer in range(n_layers):
        names.append(f"attn{layer}")
        if arch.mid is not None:
            names.append(f"mlp{layer}")
    if include_final:
        names.append("final")
    return names


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    return kwargs["hidden_states"]


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


class ResidualRecorder:
    """Context manager that records the residual stream at every sublayer of a model.

    ``select`` maps a (batch, seq, d) tensor to the rows to keep, shape (rows, d); it runs on the
    device inside the hook. After a forward pass, ``take()`` returns (rows, n_sublayers, d).
    """

    def __init__(self, model: nn.Module, include_final: bool = True, first_layer: int = 0):
        self.model = model
        base = model.base_model
        self.arch = architecture_for(model.config)
        self.layers = operator.attrgetter(self.arch.layers)(base)
        self.include_final = include_final
        self.names = sublayer_names(len(self.layers), self.arch, include_final)
        # Re-entering the model at a layer: only the points from that layer on are recorded,
        # and take() returns those rows (names[self.first_index:]).
        self.first_layer = first_layer
        self.first_index = first_layer * (1 if self.arch.mid is None else 2)
        self._select: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._captured: list[torch.Tensor | None] = [None] * len(self.names)
        self._handles: list = []

    def _pre_hook(self, index: int):
        def hook(_module, args, kwargs):
            self._captured[index] = self._select(first_tensor(args, kwargs))

        return hook

    def _post_hook(self, index: int):
        def hook(_module, _args, _kwargs, output):
            self._captured[index] = self._select(_output_tensor(output))

        return hook

    def __enter__(self) -> ResidualRecorder:
        index = self.first_index
        for block in self.layers[self.first_layer :]:
            self._handles.append(
                block.register_forward_pre_hook(self._pre_hook(index), with_kwargs=True)
            )
            index += 1
            if self.arch.mid is not None:
                mid = operator.attrgetter(self.arch.mid)(block)
                self._handles.append(
                    mid.register_forward_pre_hook(self._pre_hook(index), with_kwargs=True)
                )
                index += 1
        if self.include_final:
            # The residual stream after the last block: the block's output (the input of the
            # final norm in pre-norm models).
            self._handles.append(
                self.layers[-1].register_forward_hook(self._post_hook(index), with_kwargs=True)
            )
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def set_selector(self, select: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._select = select
        self._captured = [None] * len(self.names)

    def take(self) -> torch.Tensor:
        captured = self._captured[self.first_index :]
        names = self.names[self.first_index :]
        missing = [n for n, t in zip(names, captured, strict=True) if t is None]
        if missing:
            raise RuntimeError(
                f"hook points not reached in the forward pass: {missing[:4]}; the architecture "
                "row in hooks.ARCHITECTURES does not match this model"
            )
        stacked = torch.stack(captured, dim=1)  # type: ignore[arg-type]
        self._captured = [None] * len(self.names)
        return stacked


def architecture_attrs(model) -> dict:
    """What a store records of the model's architecture (its attributes)."""
    arch = architecture_for(model.config)
    return {
        "architecture": model.config.model_type,
        "norm": arch.norm,
        "architecture_note": arch.note,
        "n_layers": int(model.config.num_hidden_layers),
        "d_model": int(model.config.hidden_size),
    }

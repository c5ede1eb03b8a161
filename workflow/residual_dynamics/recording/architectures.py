"""The hook table: where each architecture family keeps its blocks and its pre-MLP state, and
the sublayer names it yields. Torch-free, so that config checks at DAG time (is this model's family
known?) do not import torch; ``recording.hooks`` reads the points with it.
"""

from __future__ import annotations

from dataclasses import dataclass


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
            "workflow/residual_dynamics/recording/architectures.py (ARCHITECTURES)"
        )
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedArchitectureError(
            f"architecture '{model_type}' has no residual-stream hook points. Known: {known}. "
            "To add it, put a row in ARCHITECTURES in workflow/residual_dynamics/recording/architectures.py: the "
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

"""The affine study's handles on a GPT-2 LM: its blocks, per-head weights and unembedding
(``GPT2View``), the BOS-first token ids of integer sequences (``token_ids``), a forward hook that
records module inputs (``capture_inputs``), and the study's error (``AffineAnalysisError``).
``attention`` and ``analysis`` measure the model through these."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch


class AffineAnalysisError(ValueError):
    """The model cannot be analysed this way; the message says why."""


@dataclass
class GPT2View:
    """Handles on a GPT-2 LM's parts (``GPT2LMHeadModel``)."""

    model: torch.nn.Module

    def __post_init__(self):
        if getattr(self.model.config, "model_type", None) != "gpt2":
            raise AffineAnalysisError(
                f"affine analyses need a GPT-2-style model, got "
                f"{getattr(self.model.config, 'model_type', '?')!r}; set affine.models to "
                "`train:` models with architecture gpt2"
            )
        if not hasattr(self.model, "lm_head"):
            raise AffineAnalysisError("load the model with its LM head (with_head=True)")

    @property
    def blocks(self):
        return self.model.transformer.h

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def n_heads(self) -> int:
        return self.model.config.n_head

    @property
    def d_head(self) -> int:
        return self.model.config.n_embd // self.n_heads

    def unembed(self) -> torch.Tensor:
        """(vocab, d) rows of the unembedding."""
        return self.model.lm_head.weight

    def head_weights(self, layer: int, head: int):
        """(W_Q, W_K, W_V (d, d_head), b_Q, b_K, b_V, W_O (d_head, d)) of one head."""
        attn = self.blocks[layer].attn
        d, dh = self.model.config.n_embd, self.d_head
        w, b = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: (d, 3d), x @ w + b
        sl = slice(head * dh, (head + 1) * dh)
        parts = [w[:, i * d : (i + 1) * d][:, sl] for i in range(3)]
        biases = [b[i * d : (i + 1) * d][sl] for i in range(3)]
        w_o = attn.c_proj.weight[sl, :]
        return (*parts, *biases, w_o)


# --------------------------------------------------------------------------------------------
# inputs


def token_ids(tokenizer, values: np.ndarray) -> torch.Tensor:
    """BOS-first token ids of integer sequences (one token per value)."""
    ids = tokenizer.convert_tokens_to_ids([str(v) for v in range(int(values.max()) + 1)])
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise AffineAnalysisError("the model's tokenizer has no token for some task values")
    lookup = np.asarray(ids)
    bos = np.full((len(values), 1), tokenizer.bos_token_id)
    return torch.from_numpy(np.concatenate([bos, lookup[values]], axis=1).astype(np.int64))


@contextlib.contextmanager
def capture_inputs(modules: dict):
    """Record the input of each module during a forward pass."""
    seen: dict = {}
    handles = [
        m.register_forward_pre_hook(lambda _m, args, key=key: seen.__setitem__(key, args[0]))
        for key, m in modules.items()
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()

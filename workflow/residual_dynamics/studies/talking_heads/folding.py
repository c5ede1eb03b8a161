"""The heads of a GPT-2-style model as the Talking Heads study reads them: each head's Q, K, V and O
matrices (``HeadWeights``, from ``head_weights``), with the block's ln_1 folded in as the config's
``talking_heads.fold`` says (``FOLDS``, ``FOLD_TEXT``), the GPT-2 checks, and the names the study's
weights modules share (the composition ``KINDS`` and ``TalkingHeadsError``).

Conventions (written once here; the tests hold the code to them)
------------------------------------------------------------------
Row vectors, as the model computes: a residual-stream state ``x`` is a row (1, d) and a layer
maps it by ``x @ W``. In transformers' GPT-2, ``c_attn`` is a Conv1D with weight (d, 3d) so
``x @ c_attn.weight`` gives [q | k | v]; head h owns columns ``h*dh:(h+1)*dh`` of each third.
``c_proj.weight`` is (d, d) and head h owns its rows ``h*dh:(h+1)*dh`` (W_O^h, shape (dh, d)).

LayerNorm folding (``fold``, the config's ``talking_heads.fold``), with ``g`` the scale (gamma)
of the block's ``ln_1`` and ``C = I - 11^T/d`` the centring projection:

- ``transformer_lens`` (default; what TransformerLens's ``fold_ln`` + ``center_writing_weights``
  give, and what the paper's authors used): reading weights ``C diag(g) W_Q`` (and K, V), each
  column centred over d_model, and writing weights ``W_O C``, each row centred. Exact: ln_1
  subtracts the mean of its input, so ``x_hat @ diag(g) W = x_hat @ C diag(g) W`` for the
  normalised ``x_hat``; and every reader of the residual stream is a LayerNorm, which cannot see
  a write along the all-ones direction (tested on the model's own forward pass).
- ``scale``: ``diag(g) W_Q`` etc., W_O as it is (centring ignored);
- ``none``: the raw matrices.

Per head then ``OV = W_V W_O`` (d, d): the head writes ``x @ OV`` for a normalised source state
``x``; ``QK = W_Q W_K^T`` (d, d): the pre-softmax score is ``x_q @ QK @ x_k^T`` (times the
model's 1/sqrt(dh)). The 1/sigma normalisation and all biases are ignored (the usual weights-only
reading, as in Elhage et al. 2021 and the paper). In the column-vector convention of Elhage et
al., their W_OV is our OV transposed and their W_QK is our QK.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("q", "k", "v")
KIND_NAMES = {"q": "Q-composition", "k": "K-composition", "v": "V-composition"}


class TalkingHeadsError(ValueError):
    """Bad input for the module; the message names the config key and the fix."""


@dataclass
class HeadWeights:
    """Per-head matrices of a GPT-2-style model, ln_1 folded as ``fold`` says, float64.

    Shapes: W_Q, W_K, W_V (L, H, d, dh); W_O (L, H, dh, d); gamma (L, d).
    """

    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    W_O: np.ndarray
    gamma: np.ndarray
    fold: str = "scale"

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[2]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[3]

    def flat(self, name: str) -> np.ndarray:
        """(L*H, ...) with heads in order 0.0, 0.1, ..., 1.0, ..."""
        array = getattr(self, name)
        return array.reshape(-1, *array.shape[2:])

    def labels(self) -> list[str]:
        return [f"{layer}.{head}" for layer in range(self.n_layers) for head in range(self.n_heads)]

    def ov(self, layer: int, head: int) -> np.ndarray:
        return self.W_V[layer, head] @ self.W_O[layer, head]

    def qk(self, layer: int, head: int) -> np.ndarray:
        return self.W_Q[layer, head] @ self.W_K[layer, head].T


def gpt2_blocks(model):
    """The list of blocks of a GPT-2 model (with or without the LM head)."""
    base = getattr(model, "transformer", model)
    return base.h


def check_gpt2(config, key: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type != "gpt2":
        raise TalkingHeadsError(
            f"{key}: the talking-heads analysis needs a GPT-2-style model (model_type 'gpt2'), "
            f"this one is '{model_type}'. Rotary-position models (Llama, Mistral, ...) give no clean "
            "weights-only Q/K composition; remove it from talking_heads.models"
        )


FOLDS = ("none", "scale", "transformer_lens")


def resolve_fold(fold: str | bool) -> str:
    """A fold name; ``True``/``False`` (the old ``fold_ln``) mean 'scale'/'none'."""
    if fold is True:
        return "scale"
    if fold is False:
        return "none"
    if fold not in FOLDS:
        raise TalkingHeadsError(f"talking_heads.fold: {fold!r} is not one of {', '.join(FOLDS)}")
    return fold


def centred_rows(matrix: np.ndarray, axis: int) -> np.ndarray:
    """``matrix`` minus its mean along ``axis`` (d_model), as TransformerLens centres weights."""
    return matrix - matrix.mean(axis=axis, keepdims=True)


def head_weights(model, fold: str | bool = "transformer_lens") -> HeadWeights:
    """OV/QK factors of every head of a transformers GPT-2 model, ln_1 folded as ``fold`` says
    (see the module docstring)."""
    check_gpt2(model.config, "model")
    fold = resolve_fold(fold)
    blocks = gpt2_blocks(model)
    d = model.config.n_embd
    n_heads = model.config.n_head
    dh = d // n_heads
    wq, wk, wv, wo, gammas = [], [], [], [], []
    for block in blocks:
        w = block.attn.c_attn.weight.detach().double().cpu().numpy()  # (d, 3d)
        proj = block.attn.c_proj.weight.detach().double().cpu().numpy()  # (d, d)
        gamma = block.ln_1.weight.detach().double().cpu().numpy() if fold != "none" else np.ones(d)
        split = [
            gamma[None, :, None]
            * w[:, i * d : (i + 1) * d].reshape(d, n_heads, dh).transpose(1, 0, 2)
            for i in range(3)
        ]
        out = proj.reshape(n_heads, dh, d)
        if fold == "transformer_lens":
            # Reading weights: each column centred over d_model (axis 1 of (heads, d, dh));
            # writing weights: each row of W_O centred over d_model.
            split = [centred_rows(part, axis=1) for part in split]
            out = centred_rows(out, axis=2)
        wq.append(split[0])
        wk.append(split[1])
        wv.append(split[2])
        wo.append(out)
        gammas.append(gamma)
    return HeadWeights(
        W_Q=np.stack(wq),
        W_K=np.stack(wk),
        W_V=np.stack(wv),
        W_O=np.stack(wo),
        gamma=np.stack(gammas),
        fold=fold,
    )


FOLD_TEXT = {
    "transformer_lens": "TransformerLens fold: ln_1 scale folded into W_Q, W_K, W_V, their "
    "columns centred over d_model, W_O rows centred; 1/sigma and biases ignored",
    "scale": "ln_1 scale (gamma) folded into W_Q, W_K, W_V; centring, 1/sigma and biases ignored",
    "none": "not folded; centring, 1/sigma and biases ignored",
}

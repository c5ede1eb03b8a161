"""Running a GPT-2 model with edits of its forward pass, for the Laundry List interventions:
next-token logits at each sequence's last token (``Runner``), one rank-1 OV component removed from a
head (``component_removed``), a vector added to a layer's attention output at the last token
(``steered``), a head's own write projected on a direction, the residual stream entering a layer,
and a head's attention pattern from the last token with that token's state moved. Needs torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from residual_dynamics.studies.talking_heads.weights import gpt2_blocks


class Runner:
    """Next-token logits at each sequence's last token, with optional edits of the forward pass.

    Sequences are right-padded (GPT-2's absolute positions then stay those of the unpadded run).
    ``last`` holds the last real position of each row of the current batch, for hooks that act
    on the final token only.
    """

    def __init__(self, model, pad_id: int, device=None):
        self.model = model
        self.pad_id = pad_id
        self.device = device or next(model.parameters()).device
        self.last = None

    def batch(self, ids: Sequence[Sequence[int]]):
        width = max(len(s) for s in ids)
        tokens = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.as_tensor(seq)
            mask[row, : len(seq)] = 1
        self.last = torch.as_tensor([len(s) - 1 for s in ids], device=self.device)
        return tokens.to(self.device), mask.to(self.device)

    def __call__(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        tokens, mask = self.batch(ids)
        with torch.no_grad():
            logits = self.model(input_ids=tokens, attention_mask=mask).logits
        rows = torch.arange(len(ids), device=self.device)
        return logits[rows, self.last].float().cpu().numpy()


@contextlib.contextmanager
def component_removed(model, layer: int, head: int, direction: np.ndarray):
    """Remove the rank-1 component writing along unit vector ``direction`` (v_i) from a head's OV.

    W_O^h <- W_O^h (I - v v^T), so the folded OV becomes OV - s_i u_i v_i^T exactly (OV v_i =
    s_i u_i as the v_i are orthonormal). The value bias's share along v (b_V W_O v, the same at every
    position because attention weights sum to 1) is moved into c_proj's bias, so only the OV map
    changes. The weights are restored on exit.
    """
    attn = gpt2_blocks(model)[layer].attn
    dh = model.config.n_embd // model.config.n_head
    rows = slice(head * dh, (head + 1) * dh)
    weight, bias = attn.c_proj.weight, attn.c_proj.bias
    saved_w, saved_b = weight.detach().clone(), bias.detach().clone()
    v = torch.as_tensor(direction, dtype=weight.dtype, device=weight.device)
    v = v / v.norm()
    d = model.config.n_embd
    b_value = attn.c_attn.bias.detach()[2 * d + head * dh : 2 * d + (head + 1) * dh]
    with torch.no_grad():
        along = weight[rows] @ v  # (dh,)
        weight[rows] -= torch.outer(along, v)
        bias += (b_value @ along) * v
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved_w)
            bias.copy_(saved_b)


@contextlib.contextmanager
def steered(runner: Runner, layer: int, vector: np.ndarray):
    """Add ``vector`` to the attention output of ``layer`` at each sequence's last token."""
    attn = gpt2_blocks(runner.model)[layer].attn
    delta = torch.as_tensor(vector, dtype=attn.c_proj.weight.dtype, device=runner.device)

    def hook(module, args, output):
        out = output[0].clone()
        rows = torch.arange(out.shape[0], device=out.device)
        out[rows, runner.last] += delta
        return (out, *output[1:])

    handle = attn.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def head_write_projection(
    runner: Runner, ids, layer: int, head: int, direction: np.ndarray, batch_size: int = 32
) -> np.ndarray:
    """The head's own output projected on ``direction`` at each sequence's last token."""
    attn = gpt2_blocks(runner.model)[layer].attn
    dh = runner.model.config.n_embd // runner.model.config.n_head
    w_o = attn.c_proj.weight.detach()[head * dh : (head + 1) * dh]
    along = w_o @ torch.as_tensor(direction, dtype=w_o.dtype, device=w_o.device)
    values = []

    def hook(module, args):
        z = args[0][
            torch.arange(args[0].shape[0], device=args[0].device),
            runner.last,
            head * dh : (head + 1) * dh,
        ]
        values.append((z @ along).float().cpu().numpy())

    handle = attn.c_proj.register_forward_pre_hook(hook)
    try:
        for start in range(0, len(ids), batch_size):
            runner(ids[start : start + batch_size])
    finally:
        handle.remove()
    return np.concatenate(values)


def residual_at_layer(runner: Runner, ids, layer: int):
    """The residual stream entering block ``layer`` (the input of its ln_1), all positions."""
    captured = {}
    ln = gpt2_blocks(runner.model)[layer].ln_1

    def hook(module, args):
        captured["resid"] = args[0].detach()

    handle = ln.register_forward_pre_hook(hook)
    try:
        tokens, mask = runner.batch(ids)
        with torch.no_grad():
            runner.model(input_ids=tokens, attention_mask=mask)
    finally:
        handle.remove()
    return captured["resid"]


def last_token_attention(model, layer: int, head: int, resid, last: int, last_state=None):
    """The head's attention pattern from position ``last`` over positions 0..last.

    Computed from the block's own ln_1, c_attn (biases included) and scaling, with the state at
    ``last`` optionally replaced by the rows of ``last_state`` (n, d): returns (n, last + 1).
    Equal to the model's own pattern when nothing is replaced (tested).
    """
    block = gpt2_blocks(model)[layer]
    d = model.config.n_embd
    dh = d // model.config.n_head
    states = resid[: last + 1]
    query_states = states[last : last + 1] if last_state is None else last_state
    with torch.no_grad():
        keys_in = block.ln_1(states)
        qkv_k = block.attn.c_attn(keys_in)
        k = qkv_k[:, d + head * dh : d + (head + 1) * dh]  # (T, dh)
        qkv_q = block.attn.c_attn(block.ln_1(query_states))
        q = qkv_q[:, head * dh : (head + 1) * dh]  # (n, dh)
        scores = (q @ k[:last].T) * block.attn.scaling  # keys before the last position
        # The last position's key is its own (replaced) state.
        k_last = qkv_q[:, d + head * dh : d + (head + 1) * dh]
        self_score = (q * k_last).sum(-1, keepdim=True) * block.attn.scaling
        scores = torch.cat([scores, self_score], dim=1)
        return torch.softmax(scores.float(), dim=-1)

"""Talking Heads (Merullo, Eickhoff & Pavlick, arXiv 2406.09519): head composition through
low-rank subspaces, for GPT-2-style models.

Conventions (written once here; the tests hold the code to them)
------------------------------------------------------------------
Row vectors, as the model computes: a residual-stream state ``x`` is a row (1, d) and a layer
maps it by ``x @ W``. In transformers' GPT-2, ``c_attn`` is a Conv1D with weight (d, 3d) so
``x @ c_attn.weight`` gives [q | k | v]; head h owns columns ``h*dh:(h+1)*dh`` of each third.
``c_proj.weight`` is (d, d) and head h owns its rows ``h*dh:(h+1)*dh`` (W_O^h, shape (dh, d)).

Per head, with ``g`` the scale (gamma) of the block's ``ln_1`` folded into the input side:

- ``OV = diag(g) W_V W_O``  (d, d): the head writes ``x @ OV`` for a source state ``x``;
- ``QK = diag(g) W_Q (diag(g) W_K)^T``  (d, d): the pre-softmax score is ``x_q @ QK @ x_k^T``
  (times the model's 1/sqrt(dh)).

LayerNorm centring, the 1/sigma normalisation and all biases are ignored (the usual weights-only
reading, as in Elhage et al. 2021 and the paper). In the column-vector convention of Elhage et al.,
their W_OV is our OV transposed and their W_QK is our QK.

Composition of an earlier head 1 into a later head 2 (layer(1) < layer(2)), CS(A, B) =
|A B|_F / (|A|_F |B|_F):

- Q-composition: head 1 writes into head 2's query: ``x OV1 QK2 x_k^T``  -> CS(OV1, QK2)
  (Elhage: |W_QK^T W_OV|);
- K-composition: into the key: ``x_q QK2 (x OV1)^T``  -> |QK2 OV1^T| = CS(OV1, QK2^T)
  (Elhage: |W_QK W_OV|);
- V-composition: into the value: ``x OV1 OV2``  -> CS(OV1, OV2) (Elhage: |W_OV2 W_OV1|).

Components: the SVD ``OV1 = sum_i s_i u_i v_i^T`` (s descending, index i from 0): component i
reads ``x . u_i`` and writes along ``v_i``. Its composition score with head 2 is
CS(s_i u_i v_i^T, M2) = |v_i^T M2| / |M2|_F (s_i and u_i cancel). Because the u_i (or, for K, the
v_i on the other side) are orthonormal, the squared whole-head numerators add up:
``CS(OV1, M2)^2 = sum_i s_i^2 CS_i^2 / sum_i s_i^2`` (tested). An outlier is a component whose score
lies many standard deviations (population SD, over that head's components) above the mean of its
head's components for the same later head: ``z_i = (CS_i - mean_i CS) / std_i CS``.

Everything is computed from the low-rank factors (dh x dh cores), never from d x d products, so
GPT-2 small (144 heads) takes seconds.
"""

from __future__ import annotations

import contextlib
import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

log = logging.getLogger(__name__)

KINDS = ("q", "k", "v")
KIND_NAMES = {"q": "Q-composition", "k": "K-composition", "v": "V-composition"}


class TalkingHeadsError(ValueError):
    """Bad input for the module; the message names the config key and the fix."""


# --- weights -----------------------------------------------------------------------------------


@dataclass
class HeadWeights:
    """Per-head matrices of a GPT-2-style model, ln_1 scale folded in, float64.

    Shapes: W_Q, W_K, W_V (L, H, d, dh); W_O (L, H, dh, d); gamma (L, d).
    """

    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    W_O: np.ndarray
    gamma: np.ndarray

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


def head_weights(model, fold_ln: bool = True) -> HeadWeights:
    """OV/QK factors of every head of a transformers GPT-2 model (ln_1 gamma folded in)."""
    check_gpt2(model.config, "model")
    blocks = gpt2_blocks(model)
    d = model.config.n_embd
    n_heads = model.config.n_head
    dh = d // n_heads
    wq, wk, wv, wo, gammas = [], [], [], [], []
    for block in blocks:
        w = block.attn.c_attn.weight.detach().double().cpu().numpy()  # (d, 3d)
        proj = block.attn.c_proj.weight.detach().double().cpu().numpy()  # (d, d)
        gamma = block.ln_1.weight.detach().double().cpu().numpy() if fold_ln else np.ones(d)
        split = [
            w[:, i * d : (i + 1) * d].reshape(d, n_heads, dh).transpose(1, 0, 2) for i in range(3)
        ]
        wq.append(gamma[None, :, None] * split[0])
        wk.append(gamma[None, :, None] * split[1])
        wv.append(gamma[None, :, None] * split[2])
        wo.append(proj.reshape(n_heads, dh, d))
        gammas.append(gamma)
    return HeadWeights(
        W_Q=np.stack(wq),
        W_K=np.stack(wk),
        W_V=np.stack(wv),
        W_O=np.stack(wo),
        gamma=np.stack(gammas),
    )


# --- low-rank algebra --------------------------------------------------------------------------


def gram_core(factor: np.ndarray) -> np.ndarray:
    """C (..., r, r) with C^T C = F^T F for F (..., n, r), so |F X|_F = |C X|_F for any X.

    From the eigendecomposition of the Gram matrix (robust when F is rank-deficient, as planted
    or pruned heads are).
    """
    gram = np.swapaxes(factor, -1, -2) @ factor
    values, vectors = np.linalg.eigh(gram)
    return np.sqrt(np.clip(values, 0, None))[..., :, None] * np.swapaxes(vectors, -1, -2)


def svd_from_factors(left: np.ndarray, right: np.ndarray):
    """SVD of ``left @ right`` ((..., n, r) @ (..., r, n)) without forming the n x n product.

    Returns U (..., n, r), s (..., r) descending, V (..., n, r) with left @ right = U diag(s) V^T.
    """
    q_left, r_left = np.linalg.qr(left)
    q_right, r_right = np.linalg.qr(np.swapaxes(right, -1, -2))
    p, s, wt = np.linalg.svd(r_left @ np.swapaxes(r_right, -1, -2))
    return q_left @ p, s, q_right @ np.swapaxes(wt, -1, -2)


@dataclass
class Readers:
    """Per later head and kind, R (d, dh) with |y M2| = |y R| for every row y, and |M2|_F."""

    reader: dict[str, np.ndarray]  # kind -> (n_heads_total, d, dh)
    norm: dict[str, np.ndarray]  # kind -> (n_heads_total,)


def readers(weights: HeadWeights) -> Readers:
    q, k, v, o = (weights.flat(n) for n in ("W_Q", "W_K", "W_V", "W_O"))
    core_q, core_k = gram_core(q), gram_core(k)
    core_v, core_ot = gram_core(v), gram_core(np.swapaxes(o, 1, 2))
    t = lambda a: np.swapaxes(a, 1, 2)  # noqa: E731
    # q: |y Q K^T| = |y Q core(K)^T|; k: |Q K^T y^T| = |y K core(Q)^T|; v: |y V O| = |y V core(O^T)^T|
    reader = {"q": q @ t(core_k), "k": k @ t(core_q), "v": v @ t(core_ot)}
    qk_norm = np.linalg.norm(core_q @ t(core_k), axis=(1, 2))
    ov_norm = np.linalg.norm(core_v @ t(core_ot), axis=(1, 2))
    return Readers(reader, {"q": qk_norm, "k": qk_norm, "v": ov_norm})


def composition_analysis(weights: HeadWeights, model_name: str = "") -> xr.Dataset:
    """Whole-head composition scores, SVD components of every OV, their scores and z-scores.

    Arrays (NaN where the source head's layer is not below the target's):
    ``composition`` (kind, source, target), ``component_score`` and ``component_z``
    (kind, source, component, target), ``singular_value`` (source, component), and
    ``write_direction`` (source, component, unit): v_i of each component, for steering.
    """
    n_total = weights.n_layers * weights.n_heads
    dh, d = weights.d_head, weights.d_model
    layer_of = np.repeat(np.arange(weights.n_layers), weights.n_heads)
    v_in, w_out = weights.flat("W_V"), weights.flat("W_O")
    read = readers(weights)
    core_v = gram_core(v_in)  # |OV1 X| = |core(V1) O1 X|
    ov_norm = read.norm["v"]
    u, s, vdir = svd_from_factors(v_in, w_out)
    composition = np.full((3, n_total, n_total), np.nan)
    scores = np.full((3, n_total, dh, n_total), np.nan)
    for layer in range(weights.n_layers - 1):
        src = np.flatnonzero(layer_of == layer)
        dst = np.flatnonzero(layer_of > layer)
        for k_index, kind in enumerate(KINDS):
            reader = read.reader[kind][dst]  # (n_dst, d, dh)
            # float32 for the two large products (GPT-2 small: 768 x 8448 per layer): twice as
            # fast, and scores keep ~1e-6 relative precision (tested against float64 loops).
            flat_reader = reader.transpose(1, 0, 2).reshape(d, -1).astype(np.float32)
            # Whole heads: |core(V1) O1 R2|_F, independent of the SVD.
            rows = (core_v[src] @ w_out[src]).reshape(-1, d).astype(np.float32) @ flat_reader
            rows = rows.reshape(len(src), dh, len(dst), dh).astype(np.float64)
            numer = np.sqrt((rows**2).sum(axis=(1, 3)))
            composition[k_index][np.ix_(src, dst)] = numer / np.outer(
                ov_norm[src], read.norm[kind][dst]
            )
            # Components: |v_i^T R2| / |M2|.
            comp = vdir[src].transpose(0, 2, 1).reshape(-1, d).astype(np.float32) @ flat_reader
            comp = comp.reshape(len(src), dh, len(dst), dh).astype(np.float64)
            comp = np.sqrt((comp**2).sum(axis=3))
            scores[k_index][np.ix_(src, np.arange(dh), dst)] = comp / read.norm[kind][dst]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = scores.mean(axis=2, keepdims=True)
        std = scores.std(axis=2, keepdims=True)
        z = np.where(std > 0, (scores - mean) / std, np.nan)
    labels = weights.labels()
    heads = np.tile(np.arange(weights.n_heads), weights.n_layers)
    coords = {
        "kind": list(KINDS),
        "source": labels,
        "target": labels,
        "component": np.arange(dh),
        "unit": np.arange(d),
        "source_layer": ("source", layer_of),
        "source_head": ("source", heads),
        "target_layer": ("target", layer_of),
        "target_head": ("target", heads),
    }
    return xr.Dataset(
        {
            "composition": (("kind", "source", "target"), composition.astype(np.float32)),
            "component_score": (
                ("kind", "source", "component", "target"),
                scores.astype(np.float32),
            ),
            "component_z": (("kind", "source", "component", "target"), z.astype(np.float32)),
            "singular_value": (("source", "component"), s.astype(np.float32)),
            "write_direction": (
                ("source", "component", "unit"),
                vdir.transpose(0, 2, 1).astype(np.float32),
            ),
            "read_direction": (
                ("source", "component", "unit"),
                u.transpose(0, 2, 1).astype(np.float32),
            ),
            "ov_norm": ("source", ov_norm.astype(np.float32)),
            "qk_norm": ("source", read.norm["q"].astype(np.float32)),
        },
        coords=coords,
        attrs={
            "model": model_name,
            "n_layers": weights.n_layers,
            "n_heads": weights.n_heads,
            "d_model": d,
            "d_head": dh,
            "convention": (
                "row vectors: OV = diag(g) W_V W_O, QK = diag(g) W_Q (diag(g) W_K)^T; "
                "q: CS(OV1, QK2), k: CS(OV1, QK2^T), v: CS(OV1, OV2)"
            ),
            "ln_folding": "ln_1 scale (gamma) folded into W_Q, W_K, W_V; centring, 1/sigma and "
            "biases ignored",
            "component_index": "0-based, by singular value descending",
            "z_score": "over the source head's components, population SD",
        },
    )


def component_label(source: str, component: int) -> str:
    return f"{source}.{component}"


def top_outliers(
    data: xr.Dataset, kind: str = "q", target: str | None = None, n: int = 10
) -> list[dict]:
    """The n (source, component, target) entries with the highest z for ``kind``."""
    z = data["component_z"].sel(kind=kind)
    if target is not None:
        z = z.sel(target=[target])
    values = z.values
    flat = np.where(np.isfinite(values), values, -np.inf).ravel()
    order = np.argsort(flat)[::-1][:n]
    rows = []
    for index in order:
        if not np.isfinite(flat[index]):
            break
        i, c, j = np.unravel_index(index, values.shape)
        source = str(z["source"].values[i])
        rows.append(
            {
                "source": source,
                "component": int(c),
                "target": str(z["target"].values[j]),
                "label": component_label(source, int(c)),
                "z": float(values[i, c, j]),
                "score": float(
                    data["component_score"]
                    .sel(kind=kind)
                    .values[i, c, data.indexes["target"].get_loc(str(z["target"].values[j]))]
                ),
            }
        )
    return rows


def parse_head(label: str, weights_or_data, key: str) -> tuple[int, int]:
    """'L.H' -> (layer, head), checked against the model's shape."""
    n_layers = int(weights_or_data.attrs["n_layers"])
    n_heads = int(weights_or_data.attrs["n_heads"])
    try:
        layer, head = (int(x) for x in str(label).split("."))
    except ValueError:
        raise TalkingHeadsError(f"{key}: '{label}' is not a head 'layer.head' like '9.9'") from None
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise TalkingHeadsError(
            f"{key}: head '{label}' does not exist: the model has {n_layers} layers of "
            f"{n_heads} heads (0-based)"
        )
    return layer, head


def select_heads(
    data: xr.Dataset,
    mover_head: str | None,
    inhibition_heads: Sequence[str] | None,
    n_inhibition: int,
    kind: str,
) -> dict:
    """The mover head and the heads composing into it: from config, or chosen from the weights.

    Automatic choice: the mover is the last-layer head with the strongest single whole-head
    ``kind`` composition from any earlier head; the inhibition heads are the ``n_inhibition``
    earlier heads composing most strongly into it.
    """
    comp = data["composition"].sel(kind=kind)
    n_layers = int(data.attrs["n_layers"])
    auto = []
    if mover_head is None:
        last = [t for t in comp["target"].values if int(t.split(".")[0]) == n_layers - 1]
        strength = comp.sel(target=last).max("source").values
        mover_head = str(last[int(np.nanargmax(strength))])
        auto.append("mover")
    else:
        layer, _ = parse_head(mover_head, data, "talking_heads.heads.mover_head")
        if layer == 0:
            raise TalkingHeadsError(
                "talking_heads.heads.mover_head: a layer-0 head has no earlier heads to compose "
                "with; pick a head in a later layer"
            )
    if inhibition_heads is None:
        into = comp.sel(target=mover_head).values
        order = [i for i in np.argsort(np.where(np.isfinite(into), into, -np.inf))[::-1]]
        order = [i for i in order if np.isfinite(into[i])][:n_inhibition]
        inhibition_heads = [str(comp["source"].values[i]) for i in order]
        auto.append("inhibition")
    else:
        mover_layer = int(mover_head.split(".")[0])
        for i, head in enumerate(inhibition_heads):
            layer, _ = parse_head(head, data, f"talking_heads.heads.inhibition_heads[{i}]")
            if layer >= mover_layer:
                raise TalkingHeadsError(
                    f"talking_heads.heads.inhibition_heads[{i}]: head '{head}' is not in a layer "
                    f"below the mover head '{mover_head}'"
                )
    return {"mover": mover_head, "inhibition": list(inhibition_heads), "automatic": auto}


def heads_of(data: xr.Dataset) -> dict:
    """The head selection stored with the weights analysis."""
    return {
        "mover": str(data.attrs["mover_head"]),
        "inhibition": [str(h) for h in data.attrs["inhibition_heads"]],
        "automatic": [str(a) for a in data.attrs.get("heads_automatic", [])],
        "kind": str(data.attrs["selection_kind"]),
    }


def weights_analysis(model, settings: dict, model_name: str) -> xr.Dataset:
    """The weights-only part for one model: composition, components, and the head selection."""
    weights = head_weights(model, fold_ln=settings["fold_ln"])
    data = composition_analysis(weights, model_name)
    if not settings["fold_ln"]:
        data.attrs["ln_folding"] = "not folded (talking_heads.fold_ln: false); biases ignored"
    if weights.n_layers < 2:
        raise TalkingHeadsError(
            f"model '{model_name}' has one layer: no head composes with a later one"
        )
    cfg = settings["heads"]
    heads = select_heads(
        data, cfg["mover_head"], cfg["inhibition_heads"], cfg["n_inhibition_heads"], cfg["kind"]
    )
    data.attrs.update(
        mover_head=heads["mover"],
        inhibition_heads=heads["inhibition"],
        heads_automatic=heads["automatic"],
        selection_kind=cfg["kind"],
    )
    return data


# --- running the model -------------------------------------------------------------------------


class Runner:
    """Next-token logits at each sequence's last token, with optional edits of the forward pass.

    Sequences are right-padded (GPT-2's absolute positions then stay those of the unpadded run).
    ``last`` holds the last real position of each row of the current batch, for hooks that act
    on the final token only.
    """

    def __init__(self, model, pad_id: int, device=None):
        import torch

        self.model = model
        self.pad_id = pad_id
        self.device = device or next(model.parameters()).device
        self.last = None
        self._torch = torch

    def batch(self, ids: Sequence[Sequence[int]]):
        torch = self._torch
        width = max(len(s) for s in ids)
        tokens = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.as_tensor(seq)
            mask[row, : len(seq)] = 1
        self.last = torch.as_tensor([len(s) - 1 for s in ids], device=self.device)
        return tokens.to(self.device), mask.to(self.device)

    def __call__(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        torch = self._torch
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
    import torch

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
    import torch

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
    import torch

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
    import torch

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
    import torch

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


# --- the Laundry List with interventions -------------------------------------------------------


def skipped_dataset(model_name: str, reason: str) -> xr.Dataset:
    return xr.Dataset(attrs={"model": model_name, "skipped": True, "reason": reason})


def _component_rank(data: xr.Dataset, kind: str, mover: str, sources: Sequence[str]) -> list[dict]:
    """Components of ``sources`` into the mover, highest z first."""
    z = data["component_z"].sel(kind=kind, target=mover)
    score = data["component_score"].sel(kind=kind, target=mover)
    rows = []
    for source in sources:
        for c in range(z.sizes["component"]):
            value = float(z.sel(source=source, component=c))
            if np.isfinite(value):
                rows.append(
                    {
                        "source": source,
                        "component": c,
                        "label": component_label(source, c),
                        "z": value,
                        "score": float(score.sel(source=source, component=c)),
                    }
                )
    return sorted(rows, key=lambda r: -r["z"])


def laundry_list_analysis(
    model,
    tokenizer,
    data: xr.Dataset,
    settings: dict,
    *,
    model_name: str,
    add_bos: bool,
    max_tokens: int | None,
) -> xr.Dataset:
    """Accuracy against N, then component removal, steering and the 3-D grid on the mover head.

    ``settings`` is the ``talking_heads`` config block. Returns a dataset with ``skipped`` set and
    a reason when the tokenizer cannot encode the task's words.
    """
    from residual_dynamics.studies.talking_heads import laundry_task as ll

    task = settings["laundry_list"]
    problems = ll.check_vocabulary(tokenizer)
    if problems:
        reason = f"the Laundry List cannot run on {model_name}'s tokenizer: " + "; ".join(problems)
        log.warning("%s", reason)
        return skipped_dataset(model_name, reason)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    runner = Runner(model, pad)
    batch = task["batch_size"]
    n_values = list(range(task["n_min"], task["n_max"] + 1))
    curve = ll.accuracy_curve(
        tokenizer,
        runner,
        n_values=n_values,
        prompts_per_n=task["prompts_per_n"],
        seed=task["seed"],
        add_bos=add_bos,
        batch_size=batch,
        max_tokens=max_tokens,
    )
    if not curve:
        reason = f"every N in {n_values[0]}..{n_values[-1]} exceeds {model_name}'s window"
        return skipped_dataset(model_name, reason)
    ns = [row["n_items"] for row in curve]
    width = max(ns)
    by_position = np.full((len(ns), width), np.nan)
    for i, row in enumerate(curve):
        by_position[i, : row["n_items"]] = row["accuracy_by_position"]
    variables = {
        key: ("n_items", np.array([row[key] for row in curve], dtype=np.float64))
        for key in (
            "accuracy_vocab",
            "accuracy_listed",
            "last_item_rate",
            "last_item_bias",
            "chance_listed",
        )
    }
    variables["accuracy_by_position"] = (("n_items", "list_position"), by_position)
    attrs = {
        "model": model_name,
        "skipped": False,
        "reason": "",
        "prompts_per_n": task["prompts_per_n"],
        "seed": task["seed"],
    }

    heads = heads_of(data)
    kind = heads["kind"]
    attrs.update(
        mover_head=heads["mover"],
        inhibition_heads=heads["inhibition"],
        heads_automatic=heads["automatic"],
        selection_kind=kind,
    )
    iv = settings["interventions"]
    if iv["enabled"]:
        n_iv = iv["n_items"]
        prompts = ll.generate_prompts(n_iv, iv["n_prompts"], iv["seed"])
        ids, object_positions = ll.encode_prompts(tokenizer, prompts, add_bos)
        if max_tokens is not None and max(len(s) for s in ids) > max_tokens:
            raise TalkingHeadsError(
                f"talking_heads.interventions.n_items: prompts with N = {n_iv} do not fit "
                f"{model_name}'s window of {max_tokens} tokens; lower it"
            )
        tokens = ll.first_token_ids(tokenizer, ll.OBJECTS)

        def accuracy() -> dict:
            return ll.summarise(ll.evaluate(prompts, ids, runner, tokens, batch))

        base = accuracy()
        attrs.update(
            intervention_n_items=n_iv,
            intervention_n_prompts=len(prompts),
            baseline_accuracy_vocab=base["accuracy_vocab"],
            baseline_accuracy_listed=base["accuracy_listed"],
        )
        ranked = _component_rank(data, kind, heads["mover"], heads["inhibition"])
        removals = []
        for source in heads["inhibition"]:
            own = [r for r in ranked if r["source"] == source]
            if not own:
                continue
            for row, control in ((own[0], False), (own[-1], True)):
                layer, head = (int(x) for x in source.split("."))
                direction = (
                    data["write_direction"].sel(source=source, component=row["component"]).values
                )
                with component_removed(model, layer, head, direction):
                    result = accuracy()
                removals.append({**row, "control": control, **result})
                log.info(
                    "removed %s (z %.2f%s): top-1 %.3f -> %.3f",
                    row["label"],
                    row["z"],
                    ", control" if control else "",
                    base["accuracy_vocab"],
                    result["accuracy_vocab"],
                )
        if removals:
            variables.update(
                removal_label=("removal", [r["label"] for r in removals]),
                removal_z=("removal", [r["z"] for r in removals]),
                removal_control=("removal", [r["control"] for r in removals]),
                removal_accuracy_vocab=("removal", [r["accuracy_vocab"] for r in removals]),
                removal_accuracy_listed=("removal", [r["accuracy_listed"] for r in removals]),
            )
        if ranked:
            top = ranked[0]
            layer, head = (int(x) for x in top["source"].split("."))
            direction = (
                data["write_direction"].sel(source=top["source"], component=top["component"]).values
            )
            projection = head_write_projection(runner, ids, layer, head, direction, batch)
            sigma = float(projection.std()) or 1.0
            scales = list(iv["steering_scales"])
            steer_vocab, steer_listed = [], []
            for scale in scales:
                with steered(runner, layer, scale * sigma * direction):
                    result = accuracy()
                steer_vocab.append(result["accuracy_vocab"])
                steer_listed.append(result["accuracy_listed"])
            variables.update(
                steering_accuracy_vocab=("scale", steer_vocab),
                steering_accuracy_listed=("scale", steer_listed),
            )
            attrs.update(
                steering_component=top["label"],
                steering_sigma=sigma,
                steering_projection_mean=float(projection.mean()),
            )
            grid = _attention_grid(
                model, runner, data, ranked, heads["mover"], prompts, ids, object_positions, iv
            )
            if grid is not None:
                coords_grid, attended, base_attended, labels = grid
                variables.update(
                    grid_coordinate=(("grid_point", "axis"), coords_grid),
                    grid_attended_index=(("grid_prompt", "grid_point"), attended),
                    grid_baseline_attended_index=("grid_prompt", base_attended),
                    grid_missing_index=(
                        "grid_prompt",
                        np.array([p.missing_index for p in prompts[: len(base_attended)]]),
                    ),
                )
                attrs["grid_components"] = labels
    coords = {"n_items": ns, "list_position": np.arange(width)}
    if "steering_accuracy_vocab" in variables:
        coords["scale"] = list(iv["steering_scales"])
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _attention_grid(model, runner, data, ranked, mover, prompts, ids, object_positions, iv):
    """Which sentence-1 item the mover head attends to, over a 3-D grid in the span of the top
    three components' write directions (the state entering the mover's layer, last token)."""
    import torch

    picked = ranked[:3]
    if len(picked) < 3:
        return None
    directions = np.stack(
        [
            data["write_direction"].sel(source=r["source"], component=r["component"]).values
            for r in picked
        ],
        axis=1,
    ).astype(np.float64)
    basis, _ = np.linalg.qr(directions)  # (d, 3), orthonormal
    layer, head = (int(x) for x in mover.split("."))
    n_prompts = min(iv["grid_prompts"], len(prompts))
    resid = residual_at_layer(runner, ids[:n_prompts], layer)
    dtype = resid.dtype
    b = torch.as_tensor(basis, dtype=dtype, device=resid.device)
    lasts = [len(s) - 1 for s in ids[:n_prompts]]
    own = np.stack([(resid[i, lasts[i]] @ b).cpu().numpy() for i in range(n_prompts)])
    extent = iv["grid_extent"] * np.abs(own).max(axis=0) + 1e-6
    axes = [np.linspace(-e, e, iv["grid_points"]) for e in extent]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    grid_t = torch.as_tensor(grid, dtype=dtype, device=resid.device)
    attended = np.zeros((n_prompts, len(grid)), np.int64)
    base_attended = np.zeros(n_prompts, np.int64)
    for i in range(n_prompts):
        state = resid[i, lasts[i]]
        moved = state[None, :] + (grid_t - (state @ b)[None, :]) @ b.T
        pattern = last_token_attention(model, layer, head, resid[i], lasts[i], moved)
        positions = object_positions[i]
        attended[i] = pattern[:, positions].argmax(dim=1).cpu().numpy()
        own_pattern = last_token_attention(model, layer, head, resid[i], lasts[i])
        base_attended[i] = int(own_pattern[0, positions].argmax())
    return grid, attended, base_attended, [r["label"] for r in picked]


# --- config ------------------------------------------------------------------------------------


# --- figures -----------------------------------------------------------------------------------


def _text_figure(text: str):
    import matplotlib.pyplot as plt

    from residual_dynamics.report.style import set_style

    set_style()
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.01, 0.5, text, va="center", ha="left", wrap=True, fontsize=9)
    return fig


def composition_figure(data: xr.Dataset, title: str):
    """Heat maps of whole-head Q-, K- and V-composition: earlier heads (rows) x later heads."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from residual_dynamics.report.style import set_style

    set_style()
    n_layers, n_heads = int(data.attrs["n_layers"]), int(data.attrs["n_heads"])
    # Rows: heads of layers 0..L-2 (sources); columns: heads of layers 1..L-1 (targets).
    rows, cols = slice(0, (n_layers - 1) * n_heads), slice(n_heads, n_layers * n_heads)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), constrained_layout=True)
    ticks = np.arange(0, (n_layers - 1) * n_heads, n_heads)
    centre = (n_heads - 1) / 2
    for ax, kind in zip(axes, KINDS, strict=True):
        values = data["composition"].sel(kind=kind).values[rows, cols]
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        cmap = sns.color_palette("mako_r", as_cmap=True).with_extremes(bad="0.92")
        image = ax.imshow(
            np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=high, interpolation="nearest"
        )
        for t in ticks[1:]:
            ax.axhline(t - 0.5, color="white", lw=0.4)
            ax.axvline(t - 0.5, color="white", lw=0.4)
        ax.set_xticks(ticks + centre, [str(i) for i in range(1, n_layers)])
        ax.set_yticks(ticks + centre, [str(i) for i in range(n_layers - 1)])
        ax.set_xlabel("later head (layer; heads within it left to right)")
        ax.set_ylabel("earlier head (layer)")
        ax.set_title(KIND_NAMES[kind], fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046, label="composition score")
    fig.suptitle(title, fontsize=10)
    return fig


def components_figure(data: xr.Dataset, heads: dict, kind: str, title: str):
    """Component z-scores of every earlier head into the mover, and the inhibition heads' scores."""
    import matplotlib.pyplot as plt

    from residual_dynamics.report.style import PALETTE, set_style

    set_style()
    mover = heads["mover"]
    z = data["component_z"].sel(kind=kind, target=mover)
    score = data["component_score"].sel(kind=kind, target=mover)
    sources = [s for s in z["source"].values if np.isfinite(z.sel(source=s).values).any()]
    inhibition = heads["inhibition"][:4]
    fig = plt.figure(figsize=(11, 6.4), constrained_layout=True)
    grid = fig.add_gridspec(2, max(1, len(inhibition)))
    top = fig.add_subplot(grid[0, :])
    for x, source in enumerate(sources):
        values = z.sel(source=source).values
        colour = PALETTE[1] if source in inhibition else "0.55"
        top.scatter(np.full(values.size, x), values, s=9, color=colour, alpha=0.8, lw=0)
    ranked = top_outliers(data, kind=kind, target=mover, n=3)
    for row in ranked:
        x = sources.index(row["source"])
        top.annotate(
            row["label"], (x, row["z"]), xytext=(4, 2), textcoords="offset points", fontsize=8
        )
    top.axhline(0, color="0.7", lw=0.6)
    step = max(1, len(sources) // 24)
    top.set_xticks(range(0, len(sources), step), sources[::step], rotation=90, fontsize=7)
    top.set_ylabel(f"z of component score\ninto {mover} (SD above head mean)")
    top.set_title(
        f"{KIND_NAMES[kind]} of every SVD component into mover {mover} "
        "(orange: heads feeding the interventions)",
        fontsize=9,
    )
    for column, source in enumerate(inhibition):
        ax = fig.add_subplot(grid[1, column])
        values = score.sel(source=source).values
        zs = z.sel(source=source).values
        ax.bar(np.arange(values.size), values, color=[PALETTE[3] if v >= 3 else "0.6" for v in zs])
        best = int(np.nanargmax(zs))
        ax.set_title(f"{source}: top {source}.{best} (z {zs[best]:.1f})", fontsize=9)
        ax.set_xlabel("component (by singular value)")
        if column == 0:
            ax.set_ylabel(f"score into {mover}")
    fig.suptitle(title, fontsize=10)
    return fig


def laundry_figure(result: xr.Dataset, title: str):
    import matplotlib.pyplot as plt

    from residual_dynamics.report.style import PALETTE, set_style

    if result.attrs.get("skipped"):
        return _text_figure(f"Laundry List skipped: {result.attrs.get('reason')}")
    set_style()
    ns = result["n_items"].values
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    left.plot(ns, result["accuracy_vocab"], "o-", color=PALETTE[0], label="top-1 over vocabulary")
    left.plot(
        ns, result["accuracy_listed"], "s-", color=PALETTE[2], label="among the listed objects"
    )
    left.plot(ns, result["chance_listed"], ":", color="0.5", label="chance among listed (1/N)")
    left.scatter(
        [3],
        [0.64],
        marker="*",
        s=120,
        color=PALETTE[3],
        zorder=4,
        label="paper, GPT-2 small, N = 3",
    )
    left.set_ylim(-0.02, 1.02)
    left.set_xlabel("items in the list (N)")
    left.set_ylabel("accuracy on the missing item")
    left.legend(frameon=False, fontsize=8)
    right.plot(
        ns, result["last_item_rate"], "o-", color=PALETTE[1], label="picks the last-mentioned item"
    )
    right.plot(ns, result["chance_listed"], ":", color="0.5", label="chance (1/N)")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("items in the list (N)")
    right.set_ylabel("rate")
    right.legend(frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def interventions_figure(result: xr.Dataset, title: str):
    import matplotlib.pyplot as plt

    from residual_dynamics.report.style import PALETTE, set_style

    if result.attrs.get("skipped") or "steering_accuracy_vocab" not in result:
        reason = result.attrs.get("reason") or "interventions were not run"
        return _text_figure(f"Interventions skipped: {reason}")
    set_style()
    base = result.attrs["baseline_accuracy_vocab"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    if "removal_label" in result:
        labels = [
            f"{label}{' (ctrl)' if ctrl else ''}"
            for label, ctrl in zip(
                result["removal_label"].values, result["removal_control"].values, strict=True
            )
        ]
        x = np.arange(len(labels))
        base_listed = result.attrs["baseline_accuracy_listed"]
        delta = result["removal_accuracy_vocab"].values - base
        delta_listed = result["removal_accuracy_listed"].values - base_listed
        left.bar(x - 0.2, 100 * delta, width=0.4, color=PALETTE[0], label="top-1")
        left.bar(x + 0.2, 100 * delta_listed, width=0.4, color=PALETTE[2], label="among listed")
        left.legend(frameon=False, fontsize=8)
        left.set_xticks(range(len(labels)), labels, rotation=60, fontsize=8)
        left.axhline(0, color="0.3", lw=0.6)
        left.set_ylabel("change in accuracy (points)")
        left.set_title(
            f"remove one OV component (N = {result.attrs['intervention_n_items']}, "
            f"base {100 * base:.0f} %)",
            fontsize=9,
        )
    scales = result["scale"].values
    right.plot(scales, result["steering_accuracy_vocab"], "o-", color=PALETTE[0], label="top-1")
    right.plot(
        scales, result["steering_accuracy_listed"], "s-", color=PALETTE[2], label="among listed"
    )
    right.axhline(base, color="0.5", ls=":", label="no intervention")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel(f"steering along {result.attrs['steering_component']} (SD of its projection)")
    right.set_ylabel("accuracy")
    right.legend(frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def grid_figure(result: xr.Dataset, title: str):
    """The 3-D grid over the top three components, coloured by the list index the mover attends to."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from residual_dynamics.report.style import set_style

    if "grid_attended_index" not in result:
        reason = result.attrs.get("reason") or "fewer than three components or no interventions"
        return _text_figure(f"3-D grid skipped: {reason}")
    set_style()
    coords = result["grid_coordinate"].values
    attended = result["grid_attended_index"].values
    n_items = int(result.attrs["intervention_n_items"])
    # Majority over prompts of the attended list index at each grid point.
    counts = np.stack([(attended == i).sum(axis=0) for i in range(n_items)])
    majority = counts.argmax(axis=0)
    fig = plt.figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot(projection="3d")
    palette = sns.color_palette("colorblind")  # the report's one colour-blind-safe palette
    colours = [palette[i % len(palette)] for i in range(n_items)]
    for i in range(n_items):
        sel = majority == i
        if sel.any():
            ax.scatter(
                *coords[sel].T, color=colours[i], s=14, label=f"list item {i + 1}", depthshade=False
            )
    names = result.attrs.get("grid_components", ["c1", "c2", "c3"])
    ax.set_xlabel(f"{names[0]} (orth.)", fontsize=8)
    ax.set_ylabel(f"{names[1]} (orth.)", fontsize=8)
    ax.set_zlabel(f"{names[2]} (orth.)", fontsize=8)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=9)
    return fig


# --- report section ---------------------------------------------------------------------------


PAPER = {
    "heads": "inhibition heads 7.3, 7.9, 8.6 and 8.10 compose into mover head 9.9",
    "outlier": "component 8.6.2 lies about 5 SD above the mean of its head's 64 components",
    "accuracy": "64 % at N = 3, falling as N grows",
    "oracle": "an oracle intervention in the inhibition subspace raises N = 3 from 64 % to 86 %",
}


def _pct(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.0f} %"


def section_captions(model: str, weights: xr.Dataset, result: xr.Dataset, heads: dict, kind: str):
    """(figure id, title, caption HTML) per figure, the paper's finding beside ours."""
    name = html.escape(model)
    comp = weights["composition"].sel(kind=kind).values
    i, j = np.unravel_index(np.nanargmax(comp), comp.shape)
    labels = weights["source"].values
    top = top_outliers(weights, kind=kind, target=heads["mover"], n=1)
    top_row = top[0] if top else {"label": "n/a", "z": float("nan"), "score": float("nan")}
    n_comp = int(weights.attrs["d_head"])
    # With n components z cannot exceed sqrt(n - 1) (one component high, the rest equal), so the
    # paper's 5 SD out of 64 is out of reach for small heads; compare with this model's own pairs.
    bound = float(np.sqrt(n_comp - 1))
    z_all = weights["component_z"].sel(kind=kind).values
    pairs = np.isfinite(z_all).any(axis=1)  # (source, target) pairs where source is earlier
    maxima = np.where(np.isfinite(z_all), z_all, -np.inf).max(axis=1)[pairs]
    typical = float(np.median(maxima)) if maxima.size else 0.0
    dominant = top_row["z"] >= min(4.0, 0.8 * bound) and top_row["z"] >= typical + 1.0
    verdict_outlier = (
        "<b>Verdict:</b> one component dominates, a low-rank channel like the paper's."
        if dominant
        else "<b>Verdict:</b> no component stands out as strongly as in the paper."
    )
    auto = heads.get("automatic", [])
    chosen = (
        f"mover {html.escape(heads['mover'])}"
        + (" (chosen from the weights)" if "mover" in auto else " (from the config)")
        + f", feeding heads {html.escape(', '.join(heads['inhibition']))}"
        + (" (chosen from the weights)" if "inhibition" in auto else " (from the config)")
    )
    captions = [
        (
            "composition",
            f"{name}: composition scores between heads",
            f"Whole-head Q-, K- and V-composition of every earlier head (rows) into every later "
            f"head (columns); grey: not earlier. <i>Paper (GPT-2 small):</i> {PAPER['heads']}. "
            f"<i>Here:</i> strongest {KIND_NAMES[kind]} {html.escape(str(labels[i]))} → "
            f"{html.escape(str(labels[j]))} (CS {np.nanmax(comp):.3f}; median over pairs "
            f"{np.nanmedian(comp):.3f}); {chosen}.",
        ),
        (
            "components",
            f"{name}: SVD components into mover {html.escape(heads['mover'])}",
            f"Each earlier head's OV split into rank-1 SVD components, each scored ({KIND_NAMES[kind]}) "
            f"against the mover; z in SDs above its head's mean. <i>Paper:</i> {PAPER['outlier']}. "
            f"<i>Here:</i> top outlier {html.escape(top_row['label'])} at z = {top_row['z']:.1f} "
            f"(score {top_row['score']:.3f}) of {n_comp} components (z cannot exceed "
            f"{bound:.1f} with {n_comp}); the median over head pairs of the largest z is "
            f"{typical:.1f}. " + verdict_outlier,
        ),
    ]
    if result.attrs.get("skipped"):
        return captions
    acc = result["accuracy_vocab"].values
    ns = result["n_items"].values
    at3 = float(result["accuracy_vocab"].sel(n_items=3)) if 3 in ns else float("nan")
    falling = len(acc) > 1 and acc[-1] < acc[0]
    captions.append(
        (
            "laundry",
            f"{name}: Laundry List accuracy against N",
            f"Top-1 accuracy on the missing object and accuracy among the listed objects, with the "
            f"rate of picking the last-mentioned item. <i>Paper (GPT-2 small):</i> {PAPER['accuracy']}. "
            f"<i>Here:</i> {_pct(at3)} at N = 3, {_pct(acc[-1])} at N = {ns[-1]}; among listed "
            f"{_pct(result['accuracy_listed'].values[0])} at N = {ns[0]} against chance "
            f"{_pct(result['chance_listed'].values[0])}; last-item rate "
            f"{_pct(result['last_item_rate'].values[0])}. <b>Verdict:</b> accuracy "
            + ("falls with N, as in the paper." if falling else "does not fall with N here."),
        )
    )
    if "steering_accuracy_vocab" in result:
        base = result.attrs["baseline_accuracy_vocab"]
        steer = result["steering_accuracy_vocab"].values
        best = int(np.argmax(steer))
        removal = ""
        if "removal_label" in result:
            main = ~result["removal_control"].values
            deltas = result["removal_accuracy_vocab"].values[main] - base
            removal = (
                f" Removing each feeding head's top component changes top-1 accuracy by "
                f"{', '.join(f'{100 * d:+.0f}' for d in deltas)} points (controls: their lowest-z "
                "component)."
            )
        captions.append(
            (
                "interventions",
                f"{name}: interventions on the mover's input",
                f"<i>Paper:</i> {PAPER['oracle']}. <i>Here</i> (N = "
                f"{result.attrs['intervention_n_items']}, {result.attrs['intervention_n_prompts']} "
                f"prompts): {_pct(base)} without intervention, {_pct(steer[best])} at the best "
                f"steering scale ({float(result['scale'].values[best]):+g} SD along "
                f"{html.escape(result.attrs['steering_component'])}; chosen on the same prompts, an "
                "oracle like the paper's)." + removal,
            )
        )
    if "grid_attended_index" in result:
        attended = result["grid_attended_index"].values
        hits = result["grid_baseline_attended_index"].values == result["grid_missing_index"].values
        captions.append(
            (
                "grid",
                f"{name}: the mover's attention over the top three components",
                "The state entering the mover's layer at the last token, moved over a grid in the span "
                f"of components {html.escape(', '.join(result.attrs['grid_components']))}; colour: the "
                "list item the mover attends to most (majority over prompts). <i>Paper:</i> moving "
                "through this 3-D subspace steps the mover's attention across list positions. "
                f"<i>Here:</i> {len(np.unique(attended))} distinct list items are reached over the grid; "
                f"unmoved, the mover attends to the missing item in {_pct(hits.mean())} of prompts.",
            )
        )
    return captions


def outlier_table(model: str, weights: xr.Dataset, kind: str, n: int):
    from residual_dynamics.report.page import Table

    rows = [
        [r["label"], r["target"], round(r["z"], 2), round(r["score"], 4)]
        for r in top_outliers(weights, kind=kind, n=n)
    ]
    return Table(
        f"{model}: top {KIND_NAMES[kind]} component outliers (z over the source head's components)",
        ["component (layer.head.index)", "into head", "z (SD)", "score"],
        rows,
    )


def accuracy_table(model: str, result: xr.Dataset):
    from residual_dynamics.report.page import Table

    rows = [
        [
            int(n),
            round(float(result["accuracy_vocab"].sel(n_items=n)), 3),
            round(float(result["accuracy_listed"].sel(n_items=n)), 3),
            round(float(result["last_item_rate"].sel(n_items=n)), 3),
            round(float(result["chance_listed"].sel(n_items=n)), 3),
        ]
        for n in result["n_items"].values
    ]
    return Table(
        f"{model}: Laundry List (paper, GPT-2 small: 0.64 top-1 at N = 3)",
        ["N", "top-1 (vocabulary)", "among listed", "last-item rate", "chance 1/N"],
        rows,
    )


FIGURES = ("composition", "components", "laundry", "interventions", "grid")


def write_figures(
    weights: xr.Dataset,
    result: xr.Dataset,
    directory: Path | str,
    formats: Sequence[str],
    dpi: int,
    model: str,
) -> dict[str, Path]:
    """Every figure of one model as ``<directory>/<name>.<format>``; returns the PNG paths.

    A part that did not run (the Laundry List on a tokenizer without the objects) gets a small
    figure that says why, so the set of files is always the same.
    """
    from residual_dynamics.report.style import save

    heads = heads_of(weights)
    directory = Path(directory)
    makers = {
        "composition": lambda: composition_figure(weights, f"{model}: composition between heads"),
        "components": lambda: components_figure(
            weights, heads, heads["kind"], f"{model}: components into mover {heads['mover']}"
        ),
        "laundry": lambda: laundry_figure(result, f"{model}: Laundry List"),
        "interventions": lambda: interventions_figure(result, f"{model}: interventions"),
        "grid": lambda: grid_figure(result, f"{model}: mover attention over the top components"),
    }
    outputs = {}
    for name in FIGURES:
        fig = makers[name]()
        paths = [directory / f"{name}.{fmt}" for fmt in dict.fromkeys(["png", *formats])]
        save(fig, paths, dpi=dpi)
        outputs[name] = directory / f"{name}.png"
    return outputs


def write_section(
    path: Path | str,
    *,
    models: Sequence[str],
    weights: Sequence[xr.Dataset],
    results: Sequence[xr.Dataset],
    figures: Sequence[dict],
    n_outliers: int,
) -> None:
    """The module's report section (a JSON manifest) for every analysed model."""
    from residual_dynamics.report.page import Figure, write_section_manifest

    all_figures, tables, notes = [], [], []
    notes.append(
        "Weights only: OV = diag(g) W_V W_O and QK = diag(g) W_Q (diag(g) W_K)<sup>T</sup> per head "
        "in the row-vector convention, with each block's ln_1 scale g folded in; LayerNorm centring, "
        "1/σ and all biases are ignored. Composition score CS(A, B) = |AB|<sub>F</sub> / "
        "(|A|<sub>F</sub>|B|<sub>F</sub>): Q = CS(OV<sub>1</sub>, QK<sub>2</sub>), K = "
        "CS(OV<sub>1</sub>, QK<sub>2</sub><sup>T</sup>), V = CS(OV<sub>1</sub>, OV<sub>2</sub>). "
        "Components are the SVD terms of each OV (index by singular value, from 0); z is in "
        "standard deviations over the head's components. Laundry List prompts use the paper's "
        "objects and openers with our own sentence template."
    )
    for model, data, result, paths in zip(models, weights, results, figures, strict=True):
        heads = heads_of(data)
        kind = heads["kind"]
        for figure_id, title, caption in section_captions(model, data, result, heads, kind):
            all_figures.append(
                Figure(Path(paths[figure_id]), title, caption, f"{model}-{figure_id}")
            )
        tables.append(outlier_table(model, data, kind, n_outliers))
        if result.attrs.get("skipped"):
            notes.append(
                f"<b>{html.escape(model)}</b>: Laundry List skipped: "
                f"{html.escape(str(result.attrs.get('reason')))}. Its weights-only analysis is "
                "shown above."
            )
        else:
            tables.append(accuracy_table(model, result))
        if heads["automatic"]:
            notes.append(
                f"<b>{html.escape(model)}</b>: {' and '.join(heads['automatic'])} head(s) chosen "
                f"from the weights ({KIND_NAMES[kind]}): the mover is the last-layer head with the "
                "strongest composition from any earlier head, the feeding heads those composing "
                f"most into it: mover {html.escape(heads['mover'])}, feeding "
                f"{html.escape(', '.join(heads['inhibition']))}. Set talking_heads.heads to fix them."
            )
    write_section_manifest(
        path,
        title="Talking Heads: head composition and the Laundry List",
        anchor="talking-heads",
        intro=(
            "Merullo, Eickhoff &amp; Pavlick (2024), <i>Talking Heads: understanding inter-layer "
            "communication in transformer language models</i>: earlier heads write into low-rank "
            "subspaces that later heads read; found from the weights alone by splitting each "
            "head's OV into SVD components, and tested on the Laundry List recall task."
        ),
        figures=all_figures,
        tables=tables,
        notes=notes,
    )

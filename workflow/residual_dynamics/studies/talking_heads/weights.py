"""Talking Heads (Merullo, Eickhoff & Pavlick, arXiv 2406.09519), weights only: each head's OV and
QK factors read from a GPT-2-style model (``HeadWeights``), the low-rank algebra that scores
composition without forming d x d products, the composition analysis (whole heads and the SVD
components of each OV, with their z-scores), the top outliers, and the choice of the mover head and
the heads feeding it (``weights_analysis``, the ``talking_heads_weights`` rule's dataset).

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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

KINDS = ("q", "k", "v")
KIND_NAMES = {"q": "Q-composition", "k": "K-composition", "v": "V-composition"}


class TalkingHeadsError(ValueError):
    """Bad input for the module; the message names the config key and the fix."""


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


def weights_analysis(model, model_name: str, *, fold_ln: bool, heads: dict) -> xr.Dataset:
    """The weights-only part for one model: composition, components, and the head selection.

    ``fold_ln`` and ``heads`` are ``talking_heads.fold_ln`` and ``talking_heads.heads``.
    """
    weights = head_weights(model, fold_ln=fold_ln)
    data = composition_analysis(weights, model_name)
    if not fold_ln:
        data.attrs["ln_folding"] = "not folded (talking_heads.fold_ln: false); biases ignored"
    if weights.n_layers < 2:
        raise TalkingHeadsError(
            f"model '{model_name}' has one layer: no head composes with a later one"
        )
    chosen = select_heads(
        data,
        heads["mover_head"],
        heads["inhibition_heads"],
        heads["n_inhibition_heads"],
        heads["kind"],
    )
    data.attrs.update(
        mover_head=chosen["mover"],
        inhibition_heads=chosen["inhibition"],
        heads_automatic=chosen["automatic"],
        selection_kind=heads["kind"],
    )
    return data

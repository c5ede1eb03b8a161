"""Talking Heads (Merullo, Eickhoff & Pavlick, arXiv 2406.09519), weights only: the low-rank
algebra that scores composition without forming d x d products, the composition analysis (whole
heads and the SVD components of each OV, with their z-scores and their nulls), and the choice of the
mover head and the heads feeding it (``weights_analysis``, the ``talking_heads_weights`` rule's
dataset). The head matrices and the LayerNorm fold are in ``folding``, the nulls for z and the
verdicts read from them in ``nulls``; their names are re-exported here, where callers take them.

Conventions (the row-vector convention, OV and QK: ``folding``; the tests hold the code to them)
------------------------------------------------------------------------------------------------
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
``CS(OV1, M2)^2 = sum_i s_i^2 CS_i^2 / sum_i s_i^2`` (tested; the whole-head score is computed
this way, from the component products). The paper's outlier statistic is
``z_i = (CS_i - mean_i CS) / std_i CS`` (population SD over the source head's components, for
one later head).

Everything is computed from the low-rank factors (dh x dh cores), never from d x d products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from residual_dynamics.studies.talking_heads.folding import (
    FOLD_TEXT,
    FOLDS,
    KIND_NAMES,
    KINDS,
    HeadWeights,
    TalkingHeadsError,
    centred_rows,
    check_gpt2,
    gpt2_blocks,
    head_weights,
    resolve_fold,
)
from residual_dynamics.studies.talking_heads.nulls import (
    add_twin_null,
    component_label,
    component_null,
    dominant_component,
    family_p,
    flag_components,
    flag_summary,
    haar_orthogonal,
    max_z_into,
    rotation_weights,
    standardised,
    top_outliers,
    upper_p,
)

# Callers take the folding and nulls names from here too.
__all__ = [
    "add_twin_null",
    "centred_rows",
    "check_gpt2",
    "component_label",
    "component_null",
    "composition_analysis",
    "dominant_component",
    "family_p",
    "flag_components",
    "flag_summary",
    "FOLD_TEXT",
    "FOLDS",
    "gpt2_blocks",
    "gram_core",
    "haar_orthogonal",
    "head_weights",
    "heads_of",
    "HeadWeights",
    "KIND_NAMES",
    "KINDS",
    "max_z_into",
    "parse_head",
    "Readers",
    "readers",
    "resolve_fold",
    "rotation_weights",
    "select_heads",
    "standardised",
    "svd_from_factors",
    "TalkingHeadsError",
    "top_outliers",
    "upper_p",
    "weights_analysis",
]


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


def composition_analysis(
    weights: HeadWeights,
    model_name: str = "",
    *,
    null_rotations: int = 0,
    null_seed: int = 0,
) -> xr.Dataset:
    """Whole-head composition scores, SVD components of every OV, their scores and z-scores,
    and (``null_rotations`` > 0) each component's p against the rotation null.

    Arrays (NaN where the source head's layer is not below the target's):
    ``composition`` (kind, source, target), ``component_score``, ``component_z`` and
    ``component_p`` (kind, source, component, target), ``singular_value`` (source, component),
    and ``write_direction`` (source, component, unit): v_i of each component, for steering.
    """
    n_total = weights.n_layers * weights.n_heads
    dh, d = weights.d_head, weights.d_model
    layer_of = np.repeat(np.arange(weights.n_layers), weights.n_heads)
    v_in, w_out = weights.flat("W_V"), weights.flat("W_O")
    read = readers(weights)
    ov_norm = read.norm["v"]
    u, s, vdir = svd_from_factors(v_in, w_out)
    composition = np.full((3, n_total, n_total), np.nan)
    scores = np.full((3, n_total, dh, n_total), np.nan)
    z = np.full_like(scores, np.nan)
    p_null = np.full_like(scores, np.nan)
    if null_rotations:
        pool = haar_orthogonal(np.random.default_rng([null_seed, n_total]), dh, null_rotations)
        family = np.full((len(KINDS), n_total, null_rotations), -np.inf)
    for layer in range(weights.n_layers - 1):
        src = np.flatnonzero(layer_of == layer)
        dst = np.flatnonzero(layer_of > layer)
        eigen = np.zeros((len(KINDS), len(src), len(dst), dh))
        for k_index, kind in enumerate(KINDS):
            reader = read.reader[kind][dst]  # (n_dst, d, dh)
            # float32 for the large product (GPT-2 small: 768 x 8448 per layer): twice as fast,
            # and scores keep ~1e-6 relative precision (tested against float64 loops).
            flat_reader = reader.transpose(1, 0, 2).reshape(d, -1).astype(np.float32)
            # Components: rows v_i^T R2, (src, i, dst, j); |v_i^T R2| / |M2| is CS_i.
            comp = vdir[src].transpose(0, 2, 1).reshape(-1, d).astype(np.float32) @ flat_reader
            comp = comp.reshape(len(src), dh, len(dst), dh).astype(np.float64)
            comp = comp / read.norm[kind][dst][None, None, :, None]
            squared = (comp**2).sum(axis=3)  # (src, i, dst): CS_i^2
            scores[k_index][np.ix_(src, np.arange(dh), dst)] = np.sqrt(squared)
            # Whole heads: |OV1 R2|^2 = sum_i s_i^2 |v_i^T R2|^2 (U has orthonormal columns).
            whole = (s[src][:, :, None] ** 2 * squared).sum(axis=1)
            composition[k_index][np.ix_(src, dst)] = np.sqrt(whole) / ov_norm[src][:, None]
            z[k_index][np.ix_(src, np.arange(dh), dst)] = standardised(
                np.sqrt(squared).transpose(0, 2, 1)
            ).transpose(0, 2, 1)
            if null_rotations:
                per_pair = comp.transpose(0, 2, 1, 3)  # (src, dst, i, j)
                eigen[k_index] = np.linalg.eigvalsh(per_pair @ per_pair.transpose(0, 1, 3, 2))
        if null_rotations:
            for row, source in enumerate(src):
                draws = rotation_weights(pool, np.random.default_rng([null_seed, int(source)]))
                observed = z[:, source][:, :, dst].transpose(0, 2, 1).reshape(-1, dh)
                p, largest = component_null(eigen[:, row].reshape(-1, dh), observed, draws)
                p_null[:, source][:, :, dst] = p.reshape(len(KINDS), len(dst), dh).transpose(
                    0, 2, 1
                )
                # Draw r of every source head together is one draw of the whole model (each
                # head rotated independently): its largest z into each later head.
                family[:, dst] = np.maximum(
                    family[:, dst], largest.reshape(len(KINDS), len(dst), null_rotations)
                )
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
    component_dims = ("kind", "source", "component", "target")
    data = xr.Dataset(
        {
            "composition": (("kind", "source", "target"), composition.astype(np.float32)),
            "component_score": (component_dims, scores.astype(np.float32)),
            "component_z": (component_dims, z.astype(np.float32)),
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
                "row vectors: OV = W_V W_O, QK = W_Q W_K^T after the LayerNorm fold; "
                "q: CS(OV1, QK2), k: CS(OV1, QK2^T), v: CS(OV1, OV2)"
            ),
            "fold": weights.fold,
            "ln_folding": FOLD_TEXT[weights.fold],
            "component_index": "0-based, by singular value descending",
            "z_score": "over the source head's components, population SD",
            "null_rotations": int(null_rotations),
            "null_seed": int(null_seed),
        },
    )
    if null_rotations:
        data["component_p"] = (component_dims, p_null.astype(np.float32))
        # Layer-0 heads have no earlier heads: no family there.
        family[~np.isfinite(family)] = np.nan
        data["null_max_z"] = (("kind", "target", "rotation"), family.astype(np.float32))
    return data


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


def weights_analysis(
    model,
    model_name: str,
    *,
    fold: str | bool,
    heads: dict,
    nulls: dict | None = None,
    twin=None,
) -> xr.Dataset:
    """The weights-only part for one model: composition, components, their nulls, and the head
    selection.

    ``fold``, ``heads`` and ``nulls`` are ``talking_heads.fold``, ``.heads`` and ``.nulls``
    (rotations, seed, alpha); ``twin`` is the untrained twin (a model of the same architecture
    with random weights) or None.
    """
    nulls = nulls or {}
    weights = head_weights(model, fold=fold)
    data = composition_analysis(
        weights,
        model_name,
        null_rotations=int(nulls.get("rotations", 0)),
        null_seed=int(nulls.get("seed", 0)),
    )
    alpha = float(nulls.get("alpha", 0.01))
    if twin is not None:
        twin_data = composition_analysis(
            head_weights(twin, fold=fold),
            f"{model_name} (twin)",
            null_rotations=int(nulls.get("rotations", 0)),
            null_seed=int(nulls.get("seed", 0)),
        )
        data = add_twin_null(data, twin_data)
        if "component_p" in twin_data:
            # What the rotation null flags in random weights of this architecture: the share
            # the model's own is compared with.
            twin_data = flag_components(twin_data, alpha)
            shares = [flag_summary(twin_data, kind)["share_flagged"] for kind in KINDS]
            data["twin_share_flagged"] = ("kind", np.asarray(shares, dtype=np.float32))
    data = flag_components(data, alpha)
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

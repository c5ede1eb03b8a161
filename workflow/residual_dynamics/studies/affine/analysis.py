"""The affine-recurrence study (Bhargav & Gu, arXiv 2410.17438) on a GPT-2-style model.

The paper's claim: a three-layer GPT forms an initial estimate of the next value by *copying* in
layer 0 and refines it with *negative-similarity* heads in the last layer. Measured here, on
held-out (a, b) sequences:

* accuracy and loss per position, beside the Bayes-optimal accuracy (chance until (a, b) is
  identified);
* layer-0 copying: attention by relative offset, the OV circuit's copying score, and the logit
  lens after block 0 (does it name the current value x_n, the previous x_{n-1}, or the answer?);
* last-layer heads: the pre-softmax QK score regressed on the cosine of the query's and the key's
  token embeddings within each query (a negative slope is a negative-similarity head), over keys
  holding other tokens than the query's (its own key and same-token keys, at cosine 1, would
  dominate the fit; the fit over every key is kept for comparison), and the
  direct logit attribution (DLA) of each head to the answer and to the layer-0 estimate;
* zero and mean ablation of every head, every attention layer and every MLP.

Conventions: token position 0 is BOS and position t >= 1 holds x_{t-1}; the logits at position t
predict x_t, so "position n" below is the index of the predicted value. LayerNorm is handled by
freezing the measured scale (DLA) or by applying the block's own LayerNorm to the embeddings (OV
circuit); the figures and the report say so.

The model handles (``GPT2View``, token ids, the input hook) are in ``view``, the attention scores
and the QK-vs-cosine fit in ``attention``; their names are re-exported here, where callers take
them.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from residual_dynamics.studies.affine.attention import (
    attention_scores,
    masked_centred,
    mean_attention_by_offset,
    similarity_masks,
    similarity_regression,
    within_query_slope,
)
from residual_dynamics.studies.affine.view import (
    AffineAnalysisError,
    GPT2View,
    capture_inputs,
    token_ids,
)

# Callers take the view and attention names from here too.
__all__ = [
    "ablate",
    "ablation_table",
    "ablation_targets",
    "accuracy_and_loss",
    "AffineAnalysisError",
    "analyse_model",
    "attention_scores",
    "attribute",
    "BAYES_BAR",
    "bayes_gap",
    "capture_inputs",
    "component_means",
    "copying_scores",
    "final_scale",
    "GPT2View",
    "head_logit_attribution",
    "lens_hits",
    "masked_centred",
    "mean_attention_by_offset",
    "ov_circuit",
    "residual_components",
    "similarity_masks",
    "similarity_regression",
    "target_name",
    "token_ids",
    "within_query_slope",
]


# --------------------------------------------------------------------------------------------
# accuracy


@torch.no_grad()
def accuracy_and_loss(model, ids: torch.Tensor, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 accuracy and cross-entropy per predicted position (entry n: predicting x_n)."""
    hits, losses = [], []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        logits = model(input_ids=chunk).logits[:, :-1]
        target = chunk[:, 1:]
        hits.append((logits.argmax(-1) == target).float())
        losses.append(F.cross_entropy(logits.transpose(1, 2), target, reduction="none"))
    return torch.cat(hits).mean(0).numpy(), torch.cat(losses).mean(0).numpy()


# --------------------------------------------------------------------------------------------
# forward hooks


@contextlib.contextmanager
def _capture_heads_and_mlps(view: GPT2View, extra: dict | None = None):
    """While the body runs the model: each layer's per-head attention input to ``c_proj`` (``z{l}``,
    with the inputs of ``extra`` modules too) and each MLP's output (keyed by layer)."""
    modules = {f"z{li}": b.attn.c_proj for li, b in enumerate(view.blocks)} | (extra or {})
    outputs: dict = {}
    handles = [
        b.mlp.register_forward_hook(lambda _m, _a, out, li=li: outputs.__setitem__(li, out))
        for li, b in enumerate(view.blocks)
    ]
    try:
        with capture_inputs(modules) as seen:
            yield seen, outputs
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------
# OV copying


def copying_scores(circuit: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """(top-1 copy fraction, eigenvalue copying score) of a square token -> token logit map.

    Row i holds the logits a head writes when it attends to token i. The copy fraction is the
    share of rows whose largest entry is on the diagonal; the eigenvalue score (Elhage et al.
    2021) is sum(lambda) / sum(|lambda|): 1 for a pure copier, -1 for a pure anti-copier.
    """
    m = torch.as_tensor(circuit, dtype=torch.float64)
    top1 = float((m.argmax(dim=1) == torch.arange(len(m))).double().mean())
    eig = torch.linalg.eigvals(m)
    score = float(eig.real.sum() / eig.abs().sum())
    return top1, score


@torch.no_grad()
def ov_circuit(view: GPT2View, layer: int, head: int, tokens: torch.Tensor) -> torch.Tensor:
    """(len(tokens), len(tokens)) logits a head writes for each attended token, restricted to the
    task's value tokens. The embeddings pass through the block's LayerNorm (plus the mean
    position embedding) on the way in, and through the final LayerNorm's gain on the way out."""
    model = view.model
    emb = model.transformer.wte.weight[tokens] + model.transformer.wpe.weight.mean(0)
    x = view.blocks[layer].ln_1(emb)
    _, _, w_v, _, _, b_v, w_o = view.head_weights(layer, head)
    out = (x @ w_v + b_v) @ w_o
    unembed = view.unembed()[tokens] * model.transformer.ln_f.weight
    return out @ unembed.T


# --------------------------------------------------------------------------------------------
# the residual stream, decomposed


@torch.no_grad()
def residual_components(view: GPT2View, ids: torch.Tensor):
    """The final residual stream (input of ln_f) as a sum of named parts: 'embed', 'L{l}H{h}'
    (each head's output), 'L{l}attn_bias' and 'L{l}mlp'. Returns (names, (parts, n, T, d),
    final residual, hidden states after each block)."""
    model = view.model
    with _capture_heads_and_mlps(view, {"final": model.transformer.ln_f}) as (seen, outputs):
        result = model(input_ids=ids, output_hidden_states=True)
    names, parts = (
        ["embed"],
        [model.transformer.wte(ids) + model.transformer.wpe.weight[: ids.shape[1]]],
    )
    for li, block in enumerate(view.blocks):
        z = seen[f"z{li}"]
        for h in range(view.n_heads):
            w_o = view.head_weights(li, h)[-1]
            names.append(f"L{li}H{h}")
            parts.append(z[..., h * view.d_head : (h + 1) * view.d_head] @ w_o)
        names.append(f"L{li}attn_bias")
        parts.append(block.attn.c_proj.bias.expand_as(parts[0]))
        names.append(f"L{li}mlp")
        parts.append(outputs[li])
    return names, torch.stack(parts), seen["final"], result.hidden_states


def final_scale(view: GPT2View, final: torch.Tensor) -> torch.Tensor:
    """The final LayerNorm's per-position 1/std, frozen for linear attribution (n, T, 1)."""
    ln = view.model.transformer.ln_f
    var = final.var(dim=-1, keepdim=True, unbiased=False)
    return 1.0 / torch.sqrt(var + ln.eps)


def attribute(view: GPT2View, part: torch.Tensor, scale: torch.Tensor, tokens) -> torch.Tensor:
    """Direct logit attribution of residual parts (..., T, d) to ``tokens`` (..., T): the part,
    centred and scaled like the final LayerNorm does with the frozen scale, times the token's
    unembedding row. Summed over all parts plus the LayerNorm bias term it is the logit."""
    ln = view.model.transformer.ln_f
    centred = part - part.mean(dim=-1, keepdim=True)
    rows = view.unembed()[tokens] * ln.weight
    return (centred * scale * rows).sum(-1)


# --------------------------------------------------------------------------------------------
# logit lens


@torch.no_grad()
def lens_hits(view: GPT2View, ids: torch.Tensor, layer: int) -> dict[str, np.ndarray]:
    """After block ``layer`` (final LayerNorm, then unembedding): per predicted position n, the
    share of sequences whose top-1 is the current value x_{n-1} ('current'), the one before
    ('previous') or the answer x_n ('answer'). Entries undefined at a position are NaN."""
    hidden = view.model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
    if layer + 1 == len(view.blocks):
        logits = view.model.lm_head(hidden)  # HF's last hidden state already went through ln_f
    else:
        logits = view.model.lm_head(view.model.transformer.ln_f(hidden))
    top = logits[:, :-1].argmax(-1)  # (n, L): predictions for x_0..x_{L-1}
    target = ids[:, 1:]
    current = ids[:, :-1]  # token at the predicting position (BOS for n = 0)
    previous = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-2]], dim=1)
    out = {
        "answer": (top == target).double().mean(0).numpy(),
        "current": (top == current).double().mean(0).numpy(),
        "previous": (top == previous).double().mean(0).numpy(),
    }
    out["current"][0] = np.nan
    out["previous"][:2] = np.nan
    return out, top


# --------------------------------------------------------------------------------------------
# ablation


@contextlib.contextmanager
def ablate(view: GPT2View, target: tuple, means: dict | None = None):
    """Zero- or mean-ablate a component during forward passes inside the block.

    ``target``: ('head', layer, head), ('attn', layer) (every head of the layer; the output bias
    stays, as it does not depend on the input) or ('mlp', layer). With ``means`` (from
    ``component_means``) the component is replaced by its mean per position instead of zero.
    """
    kind, layer = target[0], target[1]
    block = view.blocks[layer]
    if kind in ("head", "attn"):
        dh = view.d_head
        cols = slice(target[2] * dh, (target[2] + 1) * dh) if kind == "head" else slice(None)

        def pre_hook(_m, args):
            z = args[0].clone()
            t = z.shape[1]
            z[..., cols] = 0.0 if means is None else means[f"z{layer}"][:t, cols]
            return (z, *args[1:])

        handle = block.attn.c_proj.register_forward_pre_hook(pre_hook)
    elif kind == "mlp":

        def hook(_m, _args, out):
            return (
                torch.zeros_like(out)
                if means is None
                else means[f"mlp{layer}"][: out.shape[1]].expand_as(out)
            )

        handle = block.mlp.register_forward_hook(hook)
    else:
        raise ValueError(f"unknown ablation target {target}")
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def component_means(view: GPT2View, ids: torch.Tensor) -> dict:
    """Per-position means over the sequences of every head input z and MLP output."""
    with _capture_heads_and_mlps(view) as (seen, outputs):
        view.model(input_ids=ids)
    means = {k: v.mean(0) for k, v in seen.items()}
    means.update({f"mlp{li}": out.mean(0) for li, out in outputs.items()})
    return means


def ablation_targets(view: GPT2View) -> list[tuple]:
    targets = []
    for layer in range(view.n_layers):
        targets += [("head", layer, h) for h in range(view.n_heads)]
        targets += [("attn", layer), ("mlp", layer)]
    return targets


def target_name(target: tuple) -> str:
    if target[0] == "head":
        return f"L{target[1]}H{target[2]}"
    return f"L{target[1]} {'attention (all heads)' if target[0] == 'attn' else 'MLP'}"


@torch.no_grad()
def ablation_table(view: GPT2View, ids: torch.Tensor, min_position: int = 3) -> list[dict]:
    """Accuracy and loss on positions >= min_position with each component ablated."""
    acc, loss = accuracy_and_loss(view.model, ids)
    base_acc, base_loss = float(acc[min_position:].mean()), float(loss[min_position:].mean())
    means = component_means(view, ids)
    rows = []
    for target in ablation_targets(view):
        row = {"component": target_name(target), "kind": target[0], "layer": target[1]}
        for mode, m in (("zero", None), ("mean", means)):
            with ablate(view, target, m):
                a, lo = accuracy_and_loss(view.model, ids)
            row[f"{mode}_accuracy"] = float(a[min_position:].mean())
            row[f"{mode}_delta_accuracy"] = row[f"{mode}_accuracy"] - base_acc
            row[f"{mode}_delta_loss"] = float(lo[min_position:].mean()) - base_loss
        rows.append(row)
    return [
        {
            "component": "none",
            "kind": "baseline",
            "layer": -1,
            "zero_accuracy": base_acc,
            "mean_accuracy": base_acc,
            "zero_delta_accuracy": 0.0,
            "mean_delta_accuracy": 0.0,
            "zero_delta_loss": 0.0,
            "mean_delta_loss": 0.0,
        }
    ] + rows


# --------------------------------------------------------------------------------------------
# the whole study for one model


@torch.no_grad()
def head_logit_attribution(
    view: GPT2View,
    ids: torch.Tensor,
    layer: int,
    estimate: torch.Tensor,
    value_tokens: torch.Tensor,
    min_position: int = 3,
) -> dict:
    """Mean DLA of each head of ``layer`` to the answer and to the layer-0 estimate, relative to
    the mean over value tokens, at predicted positions >= min_position; also restricted to the
    cases where the estimate is wrong (where a refinement has something to correct)."""
    names, parts, final, _ = residual_components(view, ids)
    scale = final_scale(view, final)
    answer = ids[:, 1:]  # (n, L): answer at logits position n
    positions = torch.arange(min_position, answer.shape[1])
    out = {"answer": [], "estimate": [], "estimate_when_wrong": []}
    wrong = (estimate != answer)[:, positions]
    for head in range(view.n_heads):
        part = parts[names.index(f"L{layer}H{head}")][:, :-1]  # (n, L, d)
        every = attribute(view, part.unsqueeze(2), scale[:, :-1].unsqueeze(2), value_tokens)
        base = every.mean(-1)  # (n, L)
        to_answer = attribute(view, part, scale[:, :-1], answer) - base
        to_estimate = attribute(view, part, scale[:, :-1], estimate) - base
        out["answer"].append(float(to_answer[:, positions].mean()))
        out["estimate"].append(float(to_estimate[:, positions].mean()))
        sel = to_estimate[:, positions][wrong]
        out["estimate_when_wrong"].append(float(sel.mean()) if len(sel) else float("nan"))
    out["share_estimate_wrong"] = float(wrong.double().mean())
    return out


# The share of the Bayes-optimal accuracy a trained model must reach at every position from the
# first one where the recurrence is determined (the bar).
BAYES_BAR = 0.9


def bayes_gap(accuracy, bayes, bar: float = BAYES_BAR) -> dict:
    """The model's accuracy per position against the Bayes-optimal predictor's on the same
    sequences: their ratio, the first position where the Bayes-optimal predictor is certain
    (the recurrence is determined for every sequence), and whether the model reaches ``bar`` of
    it at every position from there."""
    acc = np.asarray(accuracy, dtype=float)
    ideal = np.asarray(bayes, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(ideal > 0, acc / ideal, np.nan)
    certain = np.flatnonzero(ideal >= 1 - 1e-9)
    first = int(certain[0]) if len(certain) else None
    tail = ratio[first:] if first is not None else np.array([])
    return {
        "ratio": ratio.tolist(),
        "determined_from": first,
        "min_ratio_determined": float(np.nanmin(tail)) if len(tail) else None,
        "mean_ratio_determined": float(np.nanmean(tail)) if len(tail) else None,
        "bar": bar,
        "reaches_bar": bool(len(tail) and np.nanmin(tail) >= bar),
    }


def analyse_model(
    model,
    tokenizer,
    values: np.ndarray,
    bayes: np.ndarray | None = None,
    min_position: int = 3,
    n_scatter: int = 4000,
    seed: int = 0,
    train_values: np.ndarray | None = None,
) -> dict:
    """Every measurement of the study on one GPT-2 LM (``load_model(..., with_head=True)``).

    ``values``: held-out (a, b) sequences; ``train_values`` (optional): sequences of the training
    pairs, whose accuracy per position tells memorised pairs from a recurrence learnt in context.
    """
    view = GPT2View(model)
    ids = token_ids(tokenizer, values)
    value_tokens = ids[:, 1:].unique()
    acc, loss = accuracy_and_loss(model, ids)
    train_acc = None
    if train_values is not None:
        train_acc, _ = accuracy_and_loss(model, token_ids(tokenizer, train_values))
    result = {
        "n_sequences": int(len(values)),
        "length": int(values.shape[1]),
        "n_layers": view.n_layers,
        "n_heads": view.n_heads,
        "min_position": min_position,
        "accuracy": acc.tolist(),
        "loss": loss.tolist(),
        "accuracy_from_min": float(acc[min_position:].mean()),
        "bayes_accuracy": None if bayes is None else np.asarray(bayes).tolist(),
        "bayes_gap": None if bayes is None else bayes_gap(acc, bayes),
        "accuracy_train_pairs": None if train_acc is None else train_acc.tolist(),
    }
    # layer 0: copying
    pattern = torch.softmax(attention_scores(view, ids, 0), dim=-1)
    by_offset, to_bos = mean_attention_by_offset(pattern)
    ov = [copying_scores(ov_circuit(view, 0, h, value_tokens)) for h in range(view.n_heads)]
    lens = {}
    estimate = None
    for layer in range(view.n_layers):
        hits, top = lens_hits(view, ids, layer)
        lens[layer] = {k: v.tolist() for k, v in hits.items()}
        if layer == 0:
            estimate = top
    result["layer0"] = {
        "attention_by_offset": by_offset.tolist(),
        "attention_to_bos": to_bos.tolist(),
        "ov_copy_top1": [o[0] for o in ov],
        "ov_copy_eigen": [o[1] for o in ov],
    }
    result["lens"] = lens
    # last layer: negative similarity and direct logit attribution
    last = view.n_layers - 1
    slopes, rs, best, points, every_key = similarity_regression(view, ids, last, min_position)
    rng = np.random.default_rng(seed)
    if len(points) > n_scatter:
        points = points[rng.choice(len(points), n_scatter, replace=False)]
    result["last_layer"] = {
        "layer": last,
        "qk_cosine_keys": "other tokens (the query's own key and same-token keys left out)",
        "qk_cosine_slope": slopes.tolist(),
        "qk_cosine_r": rs.tolist(),
        "qk_cosine_slope_all_keys": every_key[0].tolist(),
        "qk_cosine_r_all_keys": every_key[1].tolist(),
        "most_negative_head": best,
        "scatter": points.tolist(),
        "dla": head_logit_attribution(view, ids, last, estimate, value_tokens, min_position),
    }
    result["ablation"] = ablation_table(view, ids, min_position)
    return result

"""Movement through embedding space, the model side (Singh, arXiv 2308.10874; related-analyses A).

The activation stores hold only the recorded positions (by default the last token), whose next
token is not in the text. So this part runs the model itself over a modest number of texts,
records every sublayer (with the same hooks as the extraction, ``hooks.ResidualRecorder`` through
``extract.Extractor``) at positions whose next token is known, and reduces each batch at once to
small per-row, per-sublayer numbers:

- the logit lens: the model's own final norm, then its unembedding (``lm_head``), with Gemma 2's
  final logit soft-capping applied as the model applies it; at the row after the last block this
  *is* the model's output (tested); the true next token's rank (1 = top) and log-probability;
- proximity to token vectors: cosine of the residual vector to every row of the input embedding
  W_E (and of the unembedding W_U when it is not tied): the true next token's cosine and rank
  among all tokens, the current token's cosine, the best cosine over the vocabulary, and the
  Spearman correlation over the vocabulary between cos(r, W_E[t]) and log p(t) under the lens;
- the cosine of each sublayer's vector to the mean embedding of the text's tokens so far;
- an optional ablation with a uniform causal attention pattern (every query attends equally to
  every key it may see) and the change in next-token loss.

Positions: every position p with a known next token (p <= n - 2), leaving out a leading special
token (BOS), whose "prediction" carries no context; at most ``max_positions_per_text`` of them per
text, drawn with a seed (``positions: all``), or only the second-to-last token, the last one whose
next token is in the text (``positions: last``). The Spearman rho over the vocabulary (two sorts of
the vocabulary per position and sublayer, by far the costliest step) is computed on a seeded subset
of ``spearman_positions`` of those positions, the same at every sublayer.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from residual_dynamics.recording.hooks import architecture_for
from residual_dynamics.studies.embedding_space.walk import encoding_walk

log = logging.getLogger(__name__)

UNIFORM_ATTENTION = "rd_uniform_causal"


class EmbeddingSpaceError(ValueError):
    """The module cannot run on this model or input; the message names the key and the fix."""


@dataclass
class LensParts:
    """What the logit lens and the proximity measures need from a causal LM."""

    final_norm: torch.nn.Module
    unembed: torch.nn.Module
    w_embed: torch.Tensor  # (vocab, d), the input embedding rows
    w_unembed: torch.Tensor | None  # (vocab, d) when not tied to w_embed, else None
    softcap: float | None  # Gemma 2's final_logit_softcapping
    _units: dict = field(default_factory=dict, repr=False)

    def unit_rows(self, which: str) -> torch.Tensor | None:
        """Rows of W_E ('embed') or W_U ('unembed') scaled to unit norm, float32, made once
        (for a large vocabulary this is the biggest tensor of the run)."""
        if which not in self._units:
            weight = self.w_embed if which == "embed" else self.w_unembed
            self._units[which] = None if weight is None else _unit(weight.detach().float())
        return self._units[which]


def check_model(model, key: str) -> None:
    """Refuse models this module cannot read: no LM head, post-norm, or parallel blocks."""
    try:
        arch = architecture_for(model.config)
    except ValueError as error:
        raise EmbeddingSpaceError(f"{key}: {error}") from None
    model_type = model.config.model_type
    if arch.norm != "pre" or arch.final_norm is None:
        raise EmbeddingSpaceError(
            f"{key}: '{model_type}' is a post-norm encoder ({arch.note}); the embedding-space "
            "module reads causal decoders with an LM head. Remove the model from "
            "embedding_space.models"
        )
    if arch.mid is None:
        raise EmbeddingSpaceError(
            f"{key}: '{model_type}' has parallel attention/MLP blocks, so there is no state "
            "between attention and MLP to split the walk into attention and MLP steps. Remove the "
            "model from embedding_space.models"
        )
    if model.get_output_embeddings() is None:
        raise EmbeddingSpaceError(
            f"{key}: the model has no LM head (output embeddings); load a *ForCausalLM "
            "checkpoint, or remove the model from embedding_space.models"
        )


def lens_parts(model) -> LensParts:
    """Final norm, unembedding and embedding matrices of a loaded causal LM."""
    arch = architecture_for(model.config)
    final_norm = operator.attrgetter(arch.final_norm)(model.base_model)
    unembed = model.get_output_embeddings()
    w_embed = model.get_input_embeddings().weight
    w_out = unembed.weight
    tied = w_out.data_ptr() == w_embed.data_ptr() or (
        w_out.shape == w_embed.shape and torch.equal(w_out, w_embed)
    )
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return LensParts(final_norm, unembed, w_embed, None if tied else w_out, softcap)


@torch.no_grad()
def logit_lens(parts: LensParts, hidden: torch.Tensor) -> torch.Tensor:
    """Logits (float32) the model would output if the residual stream stopped at ``hidden``."""
    dtype = parts.w_embed.dtype
    logits = parts.unembed(parts.final_norm(hidden.to(dtype))).float()
    if parts.softcap:
        logits = torch.tanh(logits / parts.softcap) * parts.softcap
    return logits


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ordinal ranks along the last axis (ties, of measure zero for float scores, by order)."""
    if values.device.type == "cpu":
        # numpy's argsort is about twice as fast as torch's on a CPU here.
        order = torch.from_numpy(np.argsort(values.numpy(), axis=-1))
    else:
        order = values.argsort(dim=-1)
    ranks = torch.empty(values.shape, dtype=torch.float32, device=values.device)
    positions = torch.arange(values.shape[-1], dtype=torch.float32, device=values.device)
    ranks.scatter_(-1, order.to(values.device), positions.expand(values.shape).contiguous())
    return ranks


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho between ``a[i]`` and ``b[i]`` for every row i (Pearson of the ranks).

    Ordinal ranks are a permutation of 0..n-1, so their mean and spread are known and
    rho = 1 - 6 sum d^2 / (n (n^2 - 1)) reduces to one pass over the rank product.
    """
    n = a.shape[-1]
    ra, rb = _ranks(a.float()).double(), _ranks(b.float()).double()
    mean = (n - 1) / 2
    spread = n * (n * n - 1) / 12
    return (((ra * rb).sum(-1) - n * mean * mean) / spread).float()


def rank_of(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``target[i]`` in ``scores[i]`` (1 = highest; ties count in its favour)."""
    chosen = scores.gather(-1, target[:, None])
    return 1 + (scores > chosen).sum(-1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def row_statistics(
    parts: LensParts,
    resid: torch.Tensor,
    next_ids: torch.Tensor,
    current_ids: torch.Tensor,
    mean_embedding: torch.Tensor,
    spearman_mask: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Per-row, per-sublayer numbers for ``resid`` (rows, sublayers, d) in one pass.

    ``next_ids``/``current_ids``: the true next token and the token at the position;
    ``mean_embedding``: (rows, d) mean W_E row of the text's tokens up to the position;
    ``spearman_mask``: rows whose vocabulary-wide Spearman rho is computed (two sorts of the
    vocabulary per row and sublayer, the costliest step); the others get NaN. None = all.
    """
    rows, n_sub, _ = resid.shape
    w_e = parts.unit_rows("embed")
    w_u = parts.unit_rows("unembed")
    out: dict[str, list] = {}
    if spearman_mask is None:
        spearman_mask = torch.ones(rows, dtype=torch.bool, device=resid.device)
    chosen = spearman_mask.nonzero()[:, 0]

    def spearman(cos, logp):
        rho = torch.full((rows,), float("nan"), device=resid.device)
        if len(chosen):
            rho[chosen] = spearman_rows(cos[chosen], logp[chosen])
        return rho

    def put(name, value):
        out.setdefault(name, []).append(value.detach().float().cpu().numpy())

    for s in range(n_sub):
        h = resid[:, s]
        logits = logit_lens(parts, h)
        put("true_rank", rank_of(logits, next_ids))
        true_logit = logits.gather(-1, next_ids[:, None])[:, 0]
        put("true_logprob", true_logit - torch.logsumexp(logits, dim=-1))
        put("resid_norm", h.float().norm(dim=-1))
        unit = _unit(h.float())
        cos_e = unit @ w_e.T
        put("cos_next_embed", cos_e.gather(-1, next_ids[:, None])[:, 0])
        put("rank_next_embed", rank_of(cos_e, next_ids))
        put("cos_current_embed", cos_e.gather(-1, current_ids[:, None])[:, 0])
        put("max_cos_embed", cos_e.max(-1).values)
        # log p(t) = logit(t) - const: the same ranks as the logits.
        put("spearman_embed_logprob", spearman(cos_e, logits))
        put("cos_mean_embed", (unit * _unit(mean_embedding.float())).sum(-1))
        if w_u is not None:
            cos_u = unit @ w_u.T
            put("cos_next_unembed", cos_u.gather(-1, next_ids[:, None])[:, 0])
            put("rank_next_unembed", rank_of(cos_u, next_ids))
    return {k: np.stack(v, axis=1) for k, v in out.items()}  # (rows, sublayers)


def select_positions(
    seqs: Sequence[Sequence[int]],
    special_ids: set[int],
    rule: str,
    max_per_text: int | None,
    seed: int,
) -> list[list[int]]:
    """Positions with a known next token per text (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = []
    for seq in seqs:
        start = 1 if seq and seq[0] in special_ids else 0
        candidates = list(range(start, len(seq) - 1))
        if rule == "last":
            candidates = candidates[-1:]
        elif max_per_text is not None and len(candidates) > max_per_text:
            candidates = sorted(rng.choice(candidates, size=max_per_text, replace=False).tolist())
        out.append(candidates)
    return out


# --------------------------------------------------------------------------------------------
# uniform causal attention


def _uniform_causal_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """Attention whose pattern is uniform over the keys each query may see (causal, unpadded,
    inside a sliding window where the model has one): the output is the mean of their values."""
    n_rep = query.shape[1] // value.shape[1]
    value = value.repeat_interleave(n_rep, dim=1) if n_rep > 1 else value
    q_len, k_len = query.shape[-2], key.shape[-2]
    if attention_mask is None:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
        allowed = allowed.tril(k_len - q_len)[None, None]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask[..., :k_len]
    else:  # additive float mask: 0 where allowed, the dtype's minimum where not
        allowed = attention_mask[..., :k_len] > torch.finfo(attention_mask.dtype).min / 2
    weights = allowed.to(value.dtype)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1)
    weights = weights.expand(query.shape[0], query.shape[1], q_len, k_len)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _register_uniform() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    # The eager mask is an additive float mask with the model's causal, padding and sliding-window
    # structure: exactly the set of keys a query may see.
    AttentionInterface.register(UNIFORM_ATTENTION, _uniform_causal_attention)
    AttentionMaskInterface.register(UNIFORM_ATTENTION, eager_mask)


@contextlib.contextmanager
def uniform_attention(model):
    """Inside the block, every attention layer of ``model`` uses a uniform causal pattern.

    Goes through transformers' attention interface, so it works for every family whose attention
    dispatches on ``config._attn_implementation`` (Llama, Mistral, Qwen 2, Gemma 2, GPT-2, ...).
    """
    _register_uniform()
    before = model.config._attn_implementation
    try:
        model.set_attn_implementation(UNIFORM_ATTENTION)
    except Exception as error:  # a model that cannot switch implementation
        raise EmbeddingSpaceError(
            f"{model.config.model_type}: cannot override the attention pattern ({error}); set "
            "embedding_space.uniform_attention: false"
        ) from error
    if model.config._attn_implementation != UNIFORM_ATTENTION:
        raise EmbeddingSpaceError(
            f"{model.config.model_type} does not dispatch attention through transformers' "
            "AttentionInterface; set embedding_space.uniform_attention: false"
        )
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def padded_batch(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple:
    """Token ids right-padded with ``pad_id`` and their attention mask, (texts, longest)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.as_tensor(seq)
        mask[i, : len(seq)] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def sequence_nll(model, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16):
    """(sum of next-token NLL, number of predicted tokens) per text, every position p <= n - 2."""
    device = next(model.parameters()).device
    sums, counts = np.zeros(len(seqs)), np.zeros(len(seqs), np.int64)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = padded_batch([seqs[i] for i in batch], pad_id, device)
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
        ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
        for row, i in enumerate(batch):
            sums[i] = float(nll[row].sum())
            counts[i] = int(mask[row, 1:].sum())
    return sums, counts


# --------------------------------------------------------------------------------------------
# the whole run


def lens_run(
    model,
    tokenizer,
    seqs: list[list[int]],
    *,
    positions: str = "all",
    max_positions_per_text: int | None = 8,
    spearman_positions: int | None = 256,
    seed: int = 0,
    batch_size: int = 16,
    with_uniform_attention: bool = True,
) -> tuple[dict[str, tuple[tuple[str, ...], np.ndarray]], dict]:
    """Everything the lens rule computes: (arrays name -> (dims, values), attributes)."""
    from residual_dynamics.recording.extract import Extractor, pad_token_id

    parts = lens_parts(model)
    pad_id = pad_token_id(tokenizer)
    # The base model only: the recorder needs no LM head, and the head's (batch, seq, vocab)
    # logits would be thrown away.
    extractor = Extractor(model.base_model, pad_id=pad_id, include_final=True)
    special = set(tokenizer.all_special_ids)
    per_text = select_positions(seqs, special, positions, max_positions_per_text, seed)
    if not any(per_text):
        raise EmbeddingSpaceError(
            "no position with a known next token: every text is a single token long (raise "
            "datasets.<name>.min_chars)"
        )
    # Rows whose Spearman rho is computed: a seeded subset, the same at every sublayer.
    n_rows = sum(len(p) for p in per_text)
    row_id = np.cumsum([0] + [len(p) for p in per_text])
    spearman_rows_kept = np.ones(n_rows, bool)
    if spearman_positions is not None and spearman_positions < n_rows:
        spearman_rows_kept[:] = False
        rng = np.random.default_rng(seed + 1)
        spearman_rows_kept[rng.choice(n_rows, spearman_positions, replace=False)] = True
    w_embed = parts.w_embed.detach()
    collected: dict[str, list[np.ndarray]] = {}
    meta = {"text_index": [], "position": [], "token_id": [], "next_token_id": [], "n_tokens": []}
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        batch = [i for i in order[start : start + batch_size] if per_text[i]]
        if not batch:
            continue
        resid = extractor.run_batch([seqs[i] for i in batch], [per_text[i] for i in batch])
        next_ids, current_ids, means, keep = [], [], [], []
        for i in batch:
            keep += spearman_rows_kept[row_id[i] : row_id[i + 1]].tolist()
            seq = torch.as_tensor(seqs[i])
            first = 1 if seqs[i][0] in special else 0
            cumulative = w_embed[seq].float().cumsum(0)
            for p in per_text[i]:
                next_ids.append(seqs[i][p + 1])
                current_ids.append(seqs[i][p])
                prefix = cumulative[p] - (cumulative[first - 1] if first else 0)
                means.append(prefix / (p + 1 - first))
                meta["text_index"].append(i)
                meta["position"].append(p)
                meta["n_tokens"].append(len(seqs[i]))
            meta["token_id"] += [seqs[i][p] for p in per_text[i]]
            meta["next_token_id"] += [seqs[i][p + 1] for p in per_text[i]]
        device = resid.device
        with torch.inference_mode():
            stats = row_statistics(
                parts,
                resid,
                torch.as_tensor(next_ids, device=device),
                torch.as_tensor(current_ids, device=device),
                torch.stack(means).to(device),
                torch.as_tensor(keep, device=device),
            )
        walk = walk_from_rows(resid.cpu().numpy(), extractor.sublayers)
        for name, value in {**stats, **walk}.items():
            collected.setdefault(name, []).append(value)
    # Rows in text order, then position, whatever order the batches ran in.
    row_order = np.lexsort((np.asarray(meta["position"]), np.asarray(meta["text_index"])))
    arrays: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    for name, parts_list in collected.items():
        values = np.concatenate(parts_list)[row_order]
        if values.ndim == 1:
            dims = ("row",)
        elif values.shape[1] == len(extractor.sublayers):
            dims = ("row", "sublayer")
        else:
            dims = ("row", "layer")
        arrays[name] = (dims, values.astype(np.float32))
    for name, values in meta.items():
        arrays[name] = (("row",), np.asarray(values, np.int64)[row_order])
    attrs = {
        "sublayers": list(extractor.sublayers),
        "tied_embeddings": parts.w_unembed is None,
        "softcap": parts.softcap,
        "vocab_size": int(parts.w_embed.shape[0]),
        "positions": positions,
        "max_positions_per_text": max_positions_per_text,
        "spearman_positions": int(spearman_rows_kept.sum()),
        "spearman_ties": "ordinal ranks (ties, of measure zero for float scores, by order)",
        "n_texts": len(seqs),
        "n_rows": int(len(row_order)),
    }
    if with_uniform_attention:
        nll, count = sequence_nll(model, seqs, pad_id, batch_size)
        with uniform_attention(model):
            nll_u, _ = sequence_nll(model, seqs, pad_id, batch_size)
        arrays["nll_sum"] = (("text",), nll)
        arrays["nll_sum_uniform"] = (("text",), nll_u)
        arrays["n_predicted"] = (("text",), count)
        attrs["loss"] = float(nll.sum() / max(count.sum(), 1))
        attrs["loss_uniform_attention"] = float(nll_u.sum() / max(count.sum(), 1))
    return arrays, attrs


def walk_from_rows(resid: np.ndarray, sublayers: Sequence[str]) -> dict[str, np.ndarray]:
    """The encoding walk's per-layer delta norms for rows recorded at every sublayer."""
    walk = encoding_walk(resid, sublayers)
    return {
        "attn_delta_norm": walk["attn_delta_norm"],
        "mlp_delta_norm": walk["mlp_delta_norm"],
        "displacement": walk["displacement"],
    }


def record_lens(
    *,
    model_name: str,
    model_spec: dict,
    key: str,
    dataset_name: str,
    dataset_path,
    settings: dict,
) -> tuple[dict, dict]:
    """Everything the lens rule does: a prepared dataset and a model spec in, arrays out."""
    from residual_dynamics.inputs import datasets as ds
    from residual_dynamics.inputs.models import context_window, load_model
    from residual_dynamics.io.store import package_versions
    from residual_dynamics.recording.extract import (
        resolve_add_bos,
        shuffle_tokens,
        tokenise,
    )

    frame, meta = ds.read_dataset(dataset_path)
    if len(frame) == 0:
        raise EmbeddingSpaceError(f"dataset '{dataset_name}' ({dataset_path}) has no texts")
    frame = ds.seeded_sample(frame, settings.get("n_texts"), settings.get("seed", 0))
    loaded = load_model(
        model_name, model_spec, device=settings.get("device", "auto"), with_head=True
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    check_model(model, key)
    add_bos = resolve_add_bos(tokenizer, model_spec.get("add_bos", "auto"))
    tokens = tokenise(
        tokenizer,
        frame["text"].tolist(),
        add_bos=add_bos,
        max_tokens=context_window(model, tokenizer),
        on_overflow="truncate",
        dataset=dataset_name,
    )
    seqs = tokens.ids
    shuffled = bool(frame["shuffle_tokens"].any())
    if shuffled:
        seqs = shuffle_tokens(tokenizer, seqs, frame["shuffle_seed"].tolist())
    arrays, attrs = lens_run(
        model,
        tokenizer,
        seqs,
        positions=settings.get("positions", "all"),
        max_positions_per_text=settings.get("max_positions_per_text", 8),
        spearman_positions=settings.get("spearman_positions", 256),
        seed=settings.get("seed", 0),
        batch_size=settings.get("batch_size", 16),
        with_uniform_attention=settings.get("uniform_attention", True),
    )
    arrays["text_id"] = (("text",), frame["text_id"].to_numpy(np.int64))
    attrs.update(
        {
            "model": model_name,
            "model_source": loaded.source,
            "architecture": model.config.model_type,
            "dataset": dataset_name,
            "dataset_hash": meta.get("texts_hash"),
            "shuffle_tokens": shuffled,
            "add_bos": add_bos,
            "versions": package_versions(),
        }
    )
    log.info(
        "%s on %s: %d positions of %d texts; loss %s, with uniform attention %s",
        model_name,
        dataset_name,
        attrs["n_rows"],
        attrs["n_texts"],
        attrs.get("loss"),
        attrs.get("loss_uniform_attention"),
    )
    return arrays, attrs

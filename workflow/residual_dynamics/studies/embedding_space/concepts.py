"""The concept-similarity test of Singh (arXiv 2308.10874) on HellaSwag.

Each example's context and each of its four endings are encoded *separately* (their own forward
passes, so an ending never sees the context); the hidden states of a chosen layer are aggregated
over the text's tokens (mean, position-weighted mean with weights proportional to the 1-based
position as in SGPT, or the last token), and every ending is scored by the dot product of its
vector with the context's. The prediction is the ending with the highest score.

Baseline: the model's log-likelihood of each ending given the context (context tokens, then the
ending's tokens with a leading space, one forward pass), summed over the ending's tokens
(``ll_sum``) and divided by the ending's length in characters (``ll_per_char``: lm-eval-harness's
``acc_norm``, the usual HellaSwag number; the report's baseline) or in tokens (``ll_per_token``).

Texts are preprocessed as lm-eval-harness does: context = activity_label + ": " + ctx_a + " " +
ctx_b capitalised; " [title]" becomes ". ", other [bracketed] tags are removed, double spaces
collapsed, and (our addition) the result stripped. A leading BOS is left out of every aggregate (its state is the same for every text).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from residual_dynamics.studies.embedding_space.lens import check_model, lens_parts, padded_batch

log = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "position_weighted", "last")
REQUIRED_FIELDS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
KEY = "embedding_space.concept_similarity"


class ConceptSimilarityError(ValueError):
    """The dataset or settings cannot be used; the message names the key and the fix."""


@dataclass
class Example:
    context: str
    endings: list[str]
    label: int


def preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    # lm-eval stops here; a removed leading tag would leave a space before the text.
    return text.replace("  ", " ").strip()


def examples_from_records(records: Sequence[dict]) -> list[Example]:
    out = []
    for index, record in enumerate(records):
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise ConceptSimilarityError(
                f"{KEY}.hf: record {index} lacks {missing}; the loader expects the HellaSwag "
                f"schema ({', '.join(REQUIRED_FIELDS)})"
            )
        if record["label"] in ("", None):
            continue  # the test split is unlabelled
        context = preprocess(
            f"{record['activity_label']}: {record['ctx_a']} {record['ctx_b'].capitalize()}"
        )
        out.append(
            Example(context, [preprocess(e) for e in record["endings"]], int(record["label"]))
        )
    return out


def load_hellaswag(hf: dict, n_examples: int | None = None, seed: int = 0) -> list[Example]:
    """HellaSwag through ``datasets.load_dataset`` (the Hub id, or 'json' with data_files)."""
    import datasets as hf_datasets

    what = f"{hf.get('path')!r} (name={hf.get('name')!r}, split={hf.get('split')!r})"
    try:
        data = hf_datasets.load_dataset(
            hf["path"],
            hf.get("name"),
            split=hf.get("split", "validation"),
            data_files=hf.get("data_files"),
            revision=hf.get("revision"),
        )
    except Exception as error:  # datasets raises many types; all mean "could not load"
        raise ConceptSimilarityError(
            f"{KEY}.hf: loading {what} failed: {type(error).__name__}: {error}. Without a "
            f"network, point {KEY}.hf at a local copy (path: json, data_files: <file.jsonl>) or "
            f"set {KEY}.enabled: false"
        ) from error
    examples = examples_from_records(list(data))
    if not examples:
        raise ConceptSimilarityError(
            f"{KEY}.hf: {what} has no labelled examples (HellaSwag's test split is unlabelled: "
            "use split: validation)"
        )
    if n_examples is not None and n_examples < len(examples):
        keep = np.sort(np.random.default_rng(seed).choice(len(examples), n_examples, replace=False))
        examples = [examples[i] for i in keep]
    return examples


def aggregate(hidden: np.ndarray | torch.Tensor, method: str) -> torch.Tensor:
    """(tokens, d) -> (d,): mean, position-weighted mean (weights 1..n normalised), last."""
    hidden = torch.as_tensor(hidden, dtype=torch.float64)
    if method == "mean":
        return hidden.mean(0)
    if method == "position_weighted":
        weights = torch.arange(1, hidden.shape[0] + 1, dtype=torch.float64)
        return (weights[:, None] * hidden).sum(0) / weights.sum()
    if method == "last":
        return hidden[-1]
    raise ConceptSimilarityError(f"aggregation {method!r} is not one of {AGGREGATIONS}")


def dot_scores(context: torch.Tensor, endings: torch.Tensor) -> torch.Tensor:
    """Score of every ending (n, d) against the context vector (d,)."""
    return endings.to(torch.float64) @ context.to(torch.float64)


class Encoder:
    """Hidden states of one layer of a causal LM, token by token, for single texts."""

    def __init__(self, model, tokenizer, *, layer: str = "normed", add_bos="auto"):
        from residual_dynamics.recording.extract import Extractor, pad_token_id, resolve_add_bos

        self.model = model
        self.tokenizer = tokenizer
        self.parts = lens_parts(model)
        self.pad_id = pad_token_id(tokenizer)
        self.extractor = Extractor(model.base_model, pad_id=self.pad_id, include_final=True)
        self.add_bos = resolve_add_bos(tokenizer, add_bos)
        self.special = set(tokenizer.all_special_ids)
        names = self.extractor.sublayers
        if layer != "normed" and layer not in names:
            raise ConceptSimilarityError(
                f"{KEY}.layer: {layer!r} is not 'normed' or one of the model's sublayers "
                f"({', '.join(names)})"
            )
        self.layer = layer
        self.index = names.index("final") if layer == "normed" else names.index(layer)

    def ids(self, text: str) -> list[int]:
        seq = list(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        if self.add_bos and (not seq or seq[0] != self.tokenizer.bos_token_id):
            seq = [self.tokenizer.bos_token_id, *seq]
        return seq

    def continuation_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Per text: (content tokens, d) float64 hidden states of the chosen layer."""
        seqs = [self.ids(t) for t in texts]
        firsts = [1 if s and s[0] in self.special else 0 for s in seqs]
        for text, seq, first in zip(texts, seqs, firsts, strict=True):
            if len(seq) <= first:
                raise ConceptSimilarityError(f"text {text!r} has no tokens besides BOS")
        positions = [list(range(f, len(s))) for s, f in zip(seqs, firsts, strict=True)]
        rows = self.extractor.run_batch(seqs, positions)[:, self.index]
        if self.layer == "normed":
            rows = self.parts.final_norm(rows.to(self.parts.w_embed.dtype)).float()
        out, cursor = [], 0
        for pos in positions:
            out.append(rows[cursor : cursor + len(pos)].double().cpu())
            cursor += len(pos)
        return out

    @torch.inference_mode()
    def continuation_logprobs(self, context: str, endings: Sequence[str]) -> list[np.ndarray]:
        """Log-probabilities of each ending's tokens given the context (one pass per ending)."""
        ctx = self.ids(context)
        conts = [self.continuation_ids(" " + e) for e in endings]
        for ending, cont in zip(endings, conts, strict=True):
            if not cont:
                raise ConceptSimilarityError(f"ending {ending!r} tokenises to nothing")
        seqs = [ctx + c for c in conts]
        device = next(self.model.parameters()).device
        ids, mask = padded_batch(seqs, self.pad_id, device)
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
        ).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        for row, cont in enumerate(conts):
            where = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont), device=device)
            target = torch.as_tensor(cont, device=device)
            out.append(logp[row, where, target].cpu().numpy())
        return out


def evaluate(encoder: Encoder, examples: Sequence[Example]) -> dict:
    """Accuracy of each aggregation and of the log-likelihood baselines, with per-example scores."""
    correct = {m: 0 for m in AGGREGATIONS}
    baseline = {"ll_sum": 0, "ll_per_char": 0, "ll_per_token": 0}
    per_example = []
    for example in examples:
        states = encoder.encode([example.context, *example.endings])
        record = {"label": example.label}
        for method in AGGREGATIONS:
            vectors = [aggregate(s, method) for s in states]
            scores = dot_scores(vectors[0], torch.stack(vectors[1:]))
            record[method] = scores.tolist()
            correct[method] += int(int(scores.argmax()) == example.label)
        logprobs = encoder.continuation_logprobs(example.context, example.endings)
        ll = {
            "ll_sum": [float(lp.sum()) for lp in logprobs],
            "ll_per_char": [
                float(lp.sum()) / len(" " + e)
                for lp, e in zip(logprobs, example.endings, strict=True)
            ],
            "ll_per_token": [float(lp.mean()) for lp in logprobs],
        }
        for name, values in ll.items():
            baseline[name] += int(int(np.argmax(values)) == example.label)
            record[name] = values
        per_example.append(record)
    n = max(len(examples), 1)
    return {
        "n_examples": len(examples),
        "layer": encoder.layer,
        "accuracy": {m: correct[m] / n for m in AGGREGATIONS},
        "baseline": {k: v / n for k, v in baseline.items()},
        "chance": 0.25,
        "per_example": per_example,
    }


def run_concept_similarity(
    *, model_name: str, model_spec: dict, key: str, settings: dict, device: str = "auto"
) -> dict:
    """Everything the concept-similarity rule does: the model and HellaSwag in, a summary out."""
    from residual_dynamics.inputs.models import load_model

    examples = load_hellaswag(settings["hf"], settings.get("n_examples"), settings.get("seed", 0))
    loaded = load_model(model_name, model_spec, device=device, with_head=True)
    check_model(loaded.model, key)
    encoder = Encoder(
        loaded.model,
        loaded.tokenizer,
        layer=settings.get("layer", "normed"),
        add_bos=model_spec.get("add_bos", "auto"),
    )
    result = evaluate(encoder, examples)
    result.update({"model": model_name, "source": loaded.source, "hf": settings["hf"]})
    log.info(
        "%s: concept similarity %s; log-likelihood %s (n = %d)",
        model_name,
        result["accuracy"],
        result["baseline"],
        result["n_examples"],
    )
    return result

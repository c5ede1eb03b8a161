"""Synthetic sequence tasks: affine recurrences, as text with one token per value.

Two kinds, both x_{n+1} = a x_n + b with (a, b) drawn per sequence:

* ``affine``: modulo p (``modulus``, default 113): values are residues 0..p-1, a in [1, p),
  b in [0, p), x_0 uniform. From x_0, x_1, x_2 the pair is identified whenever x_1 != x_0 (p prime),
  so x_3 onwards is predictable and x_0..x_2 are at chance.
* ``integer``: plain bounded integers, no wrap-around: every term must lie in [0, modulus). A pair
  is kept when at least one x_0 keeps the whole sequence in range, and x_0 is drawn uniformly
  among those. With the default a in [-1, 1] this gives arithmetic progressions (a = 1) and
  alternations (a = -1); a is drawn first, uniformly, then b.

a = 0 is excluded in both kinds: it is no recurrence (the sequence is b from x_1 on).

The (a, b) pairs are split once, by ``split_seed``, into training and held-out pairs; a model
trains on the first and is evaluated on the second, so its accuracy measures the recurrence learnt
in context, not memorised pairs. Texts are the values in decimal separated by spaces; the task's
word-level tokenizer maps each value to one token and prepends BOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOS, PAD, UNK = "<bos>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, UNK, BOS)
KINDS = ("affine", "integer")


class TaskError(ValueError):
    """A task spec cannot be used; the message names the key."""


@dataclass(frozen=True)
class AffineTask:
    """A validated task spec (the ``task:`` block of a dataset, defaults filled)."""

    kind: str = "affine"
    modulus: int = 113
    length: int = 16
    a_range: tuple[int, int] | None = None
    b_range: tuple[int, int] | None = None
    heldout_fraction: float = 0.1
    split_seed: int = 0

    @classmethod
    def from_spec(cls, spec: dict, where: str = "task") -> AffineTask:
        kind = spec.get("kind", "affine")
        if kind not in KINDS:
            raise TaskError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        modulus = int(spec.get("modulus", 113))
        length = int(spec.get("length", 16))
        if modulus < 2:
            raise TaskError(f"{where}.modulus: must be at least 2, got {modulus}")
        if length < 2:
            raise TaskError(f"{where}.length: must be at least 2, got {length}")
        ranges = {}
        for key in ("a", "b"):
            value = spec.get(key)
            if value is not None:
                if len(value) != 2 or int(value[0]) > int(value[1]):
                    raise TaskError(f"{where}.{key}: give [min, max] with min <= max, got {value}")
                value = (int(value[0]), int(value[1]))
            ranges[key] = value
        fraction = float(spec.get("heldout_fraction", 0.1))
        if not 0 < fraction < 1:
            raise TaskError(f"{where}.heldout_fraction: must lie in (0, 1), got {fraction}")
        task = cls(
            kind,
            modulus,
            length,
            ranges["a"],
            ranges["b"],
            fraction,
            int(spec.get("split_seed", 0)),
        )
        if len(task.pairs()) < 2:
            raise TaskError(
                f"{where}: only {len(task.pairs())} (a, b) pair(s) give valid sequences; widen "
                f"{where}.a / {where}.b or raise {where}.modulus"
            )
        return task

    # ----------------------------------------------------------------------------------------
    # parameters

    def _ranges(self) -> tuple[tuple[int, int], tuple[int, int]]:
        p = self.modulus
        if self.kind == "affine":
            return self.a_range or (1, p - 1), self.b_range or (0, p - 1)
        return self.a_range or (-1, 1), self.b_range or (-(p - 1), 2 * (p - 1))

    def _valid_starts(self, pairs: np.ndarray) -> np.ndarray:
        """(n_pairs, modulus) bool: which x_0 keep the whole sequence in range."""
        p = self.modulus
        x = np.broadcast_to(np.arange(p, dtype=np.int64), (len(pairs), p)).copy()
        if self.kind == "affine":
            return np.ones_like(x, dtype=bool)
        ok = np.ones_like(x, dtype=bool)
        a, b = pairs[:, :1], pairs[:, 1:]
        for _ in range(self.length - 1):
            # Out-of-range values stop mattering once flagged; clip so large |a| cannot overflow.
            x = np.clip(a * x + b, -p, 2 * p)
            ok &= (x >= 0) & (x < p)
        return ok

    def pairs(self) -> np.ndarray:
        """Every usable (a, b), shape (n, 2), sorted by a then b."""
        (a0, a1), (b0, b1) = self._ranges()
        a, b = np.meshgrid(np.arange(a0, a1 + 1), np.arange(b0, b1 + 1), indexing="ij")
        pairs = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int64)
        if self.kind == "affine":
            pairs[:, 0] %= self.modulus
            pairs[:, 1] %= self.modulus
            pairs = np.unique(pairs, axis=0)
        # a = 0 is no recurrence (constant b after x_0, nothing to learn in context).
        pairs = pairs[pairs[:, 0] != 0]
        if self.kind == "affine":
            return pairs
        return pairs[self._valid_starts(pairs).any(axis=1)]

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(training pairs, held-out pairs): a seeded split that depends only on the task.

        Stratified by a: for every a with at least two b, a share of its b is held out, so every
        slope is seen in training and evaluation is on (a, b) combinations never trained on.
        """
        pairs = self.pairs()
        rng = np.random.default_rng(self.split_seed)
        held = np.zeros(len(pairs), dtype=bool)
        for a in np.unique(pairs[:, 0]):
            rows = np.flatnonzero(pairs[:, 0] == a)
            if len(rows) < 2:
                continue
            n_held = min(len(rows) - 1, max(1, round(self.heldout_fraction * len(rows))))
            held[rng.permutation(rows)[:n_held]] = True
        if not held.any():
            raise TaskError(
                "task: no a has two or more valid b, so no (a, b) can be held out; widen task.b"
            )
        return pairs[~held], pairs[held]

    def pair_weights(self, pairs: np.ndarray) -> np.ndarray:
        """Sampling probability of each pair: a uniform over its values, then b uniform.

        For the modular kind every a has the same b, so this is uniform over pairs; for bounded
        integers it keeps the rare slopes (a = 1 allows only small b) from vanishing.
        """
        _, inverse, counts = np.unique(pairs[:, 0], return_inverse=True, return_counts=True)
        weights = 1.0 / (len(counts) * counts[inverse])
        return weights / weights.sum()

    # ----------------------------------------------------------------------------------------
    # sequences

    def generate(self, pairs: np.ndarray, n: int, rng: np.random.Generator):
        """``n`` sequences from ``pairs``: (values (n, length), (a, b) per sequence (n, 2))."""
        ab = pairs[rng.choice(len(pairs), size=n, p=self.pair_weights(pairs))]
        if self.kind == "affine":
            x0 = rng.integers(0, self.modulus, size=n)
        else:
            valid = self._valid_starts(ab)
            # Uniform among the valid starts: the largest of uniform keys over the valid ones.
            x0 = np.argmax(rng.random(valid.shape) * valid, axis=1)
        x = np.empty((n, self.length), dtype=np.int64)
        x[:, 0] = x0
        for i in range(1, self.length):
            x[:, i] = ab[:, 0] * x[:, i - 1] + ab[:, 1]
            if self.kind == "affine":
                x[:, i] %= self.modulus
        return x, ab

    def vocabulary(self) -> list[str]:
        """Token strings: the special tokens, then one per value (id = value + 3)."""
        return [*SPECIAL_TOKENS, *(str(v) for v in range(self.modulus))]

    def bayes_accuracy(self, sequences: np.ndarray, pairs: np.ndarray | None = None) -> np.ndarray:
        """Accuracy per position of the ideal predictor that knows the task's prior over every
        (a, b) (not the split) and predicts the most probable next value given the prefix.

        The ground truth a model is measured against: chance where (a, b) is not yet identified,
        1 where it is. Ties are broken at random (expected accuracy 1 / number tied).
        """
        pairs = self.pairs() if pairs is None else pairs
        p = self.modulus
        valid = self._valid_starts(pairs)
        # P(pair) as sampled, then x_0 uniform among the pair's valid starts
        prior = self.pair_weights(pairs) / valid.sum(axis=1)
        seqs = np.asarray(sequences, dtype=np.int64)
        n = len(seqs)
        rows = np.arange(n)[:, None]
        acc = np.zeros((n, self.length))
        a, b = pairs[None, :, 0], pairs[None, :, 1]
        # Position 0: x_0 from nothing, the prior over starts.
        start_mass = valid.T.astype(float) @ prior
        acc[:, 0] = _map_hits(np.broadcast_to(start_mass, (n, p)), seqs[:, 0])
        weight = prior[None, :] * valid[:, seqs[:, 0]].T  # (n, pairs): consistent with x_0
        for i in range(1, self.length):
            nxt = a * seqs[:, i - 1 : i] + b
            if self.kind == "affine":
                nxt %= p
            inside = (nxt >= 0) & (nxt < p)
            # Per-sequence histogram of the next value, weighted by the posterior over pairs.
            flat = np.where(inside, nxt + p * rows, 0)
            mass = np.bincount(flat.ravel(), weights=(weight * inside).ravel(), minlength=n * p)
            acc[:, i] = _map_hits(mass.reshape(n, p), seqs[:, i])
            weight = weight * (nxt == seqs[:, i : i + 1])
        return acc.mean(axis=0)


def _map_hits(mass: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Expected accuracy of the most-probable guess per row, ties broken at random."""
    top = mass.max(axis=1, keepdims=True)
    tied = np.isclose(mass, top, rtol=1e-9, atol=0) & (top > 0)
    hit = tied[np.arange(len(truth)), truth]
    return np.where(hit, 1.0 / np.maximum(tied.sum(axis=1), 1), 0.0)


def sequences_to_texts(sequences: np.ndarray) -> list[str]:
    return [" ".join(str(int(v)) for v in row) for row in sequences]


def texts_to_sequences(texts) -> np.ndarray:
    return np.array([[int(v) for v in t.split()] for t in texts], dtype=np.int64)


def task_tokenizer(task: AffineTask, max_length: int | None = None):
    """A word-level tokenizer: one token per value, BOS prepended, saved with the model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(task.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length or task.length + 1,
    )


def task_frame(name: str, spec: dict, seed: int):
    """The rows of a task dataset: one text per sequence, with its (a, b) for the analyses."""
    import pandas as pd

    block = spec["task"]
    task = AffineTask.from_spec(block, where=f"datasets.{name}.task")
    train, held = task.split()
    pairs = held if block.get("split", "heldout") == "heldout" else train
    rng = np.random.default_rng(seed)
    values, ab = task.generate(pairs, int(block.get("n_sequences", 1000)), rng)
    texts = sequences_to_texts(values)
    return pd.DataFrame(
        {
            "text_id": np.arange(len(texts), dtype=np.int64),
            "text": pd.Series(texts, dtype="str"),
            "n_chars": np.array([len(t) for t in texts], dtype=np.int64),
            "a": ab[:, 0],
            "b": ab[:, 1],
        }
    )

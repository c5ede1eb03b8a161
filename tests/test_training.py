"""Models the workflow trains itself: determinism, resumption, the untrained twin, loading by
path through models.load_model, the text LM's tokenizer and perplexity, and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from residual_dynamics.config.schema import ConfigError
from residual_dynamics.config.validate import validate_config
from residual_dynamics.inputs.models import ModelLoadError, load_model
from residual_dynamics.inputs.training import (
    TextData,
    TrainingError,
    TrainSettings,
    accumulate_gradients,
    bpe_tokenizer,
    build_model,
    learning_rate,
    train_model,
)
from residual_dynamics.report import trained_models as training_report
from tiny_models import CORPUS

TASK = {"task": {"kind": "affine", "modulus": 11, "length": 6}}
TINY = {
    "data": "affine",
    "n_layers": 1,
    "d_model": 16,
    "n_heads": 2,
    "d_mlp": 32,
    "context": 8,
    "steps": 6,
    "batch_size": 8,
    "warmup_steps": 2,
    "eval_every": 3,
    "checkpoint_every": 2,
    "n_eval": 20,
}


def weights(directory) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train(tmp_path, name="m", **overrides):
    spec = {"train": {**TINY, **overrides}}
    out = tmp_path / name
    summary = train_model(name, spec, TASK, None, out, tmp_path / f"{name}.ckpt", progress=False)
    return out, summary


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a, summary = train(tmp_path / "a")
    b, _ = train(tmp_path / "b")
    c, _ = train(tmp_path / "c", seed=1)
    assert same(weights(a), weights(b))
    assert not same(weights(a), weights(c))
    assert summary["init"] == "trained" and len(summary["history"]) == 2
    assert (a / "tokenizer.json").exists() and json.loads((a / "training.json").read_text())
    # The checkpoint directory is cleared once the model is saved.
    assert not (tmp_path / "a" / "m.ckpt").exists()


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_resumed_training_equals_uninterrupted(tmp_path, dropout):
    whole, whole_summary = train(tmp_path / "whole", dropout=dropout)
    spec = {"train": {**TINY, "dropout": dropout}}
    part = tmp_path / "part"
    stopped = train_model(
        "m", spec, TASK, None, part / "m", part / "ckpt", stop_after=3, progress=False
    )
    assert stopped == {"stopped_at": 3}
    assert not (part / "m").exists() and (part / "ckpt" / "checkpoint.pt").exists()
    state = torch.load(part / "ckpt" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    resumed = train_model("m", spec, TASK, None, part / "m", part / "ckpt", progress=False)
    assert same(weights(whole), weights(part / "m"))
    assert resumed["history"] == whole_summary["history"]


def test_checkpoint_of_other_settings_is_not_used(tmp_path):
    ckpt = tmp_path / "ckpt"
    train_model(
        "m", {"train": TINY}, TASK, None, tmp_path / "x", ckpt, stop_after=4, progress=False
    )
    other = {"train": {**TINY, "lr": 0.01}}
    summary = train_model("m", other, TASK, None, tmp_path / "y", ckpt, progress=False)
    fresh, _ = train(tmp_path / "fresh", lr=0.01)
    assert same(weights(tmp_path / "y"), weights(fresh))
    assert summary["history"][0]["step"] == 3


def test_untrained_twin_is_only_built_with_the_same_tokenizer(tmp_path):
    trained, _ = train(tmp_path, "trained")
    twin = tmp_path / "twin"
    summary = train_model(
        "twin",
        {"train": TINY, "init": "random", "init_seed": 0},
        TASK,
        None,
        twin,
        None,
        progress=False,
    )
    assert summary["init"] == "random" and summary["history"] == []
    assert (twin / "tokenizer.json").read_text() == (trained / "tokenizer.json").read_text()
    assert json.loads((twin / "config.json").read_text())["n_layer"] == 1
    assert not same(weights(twin), weights(trained))


def test_trained_model_loads_by_name_through_load_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"spec\['trained_dir'\]"):
        load_model("affine_gpt", {"train": TINY}, device="cpu")
    out = Path("results") / "models" / "affine_gpt"  # as the rules pass it: relative to the run
    spec = {"train": TINY, "trained_dir": str(out)}
    with pytest.raises(ModelLoadError, match="run the workflow's train_model rule"):
        load_model("affine_gpt", spec, device="cpu")
    train_model("affine_gpt", spec, TASK, None, out, None, progress=False)
    loaded = load_model("affine_gpt", spec, device="cpu", with_head=True)
    assert loaded.model.config.model_type == "gpt2" and loaded.source.startswith("train:")
    saved = weights(tmp_path / out)
    assert torch.equal(loaded.model.lm_head.weight, saved["transformer.wte.weight"])
    ids = loaded.tokenizer("3 4 5")["input_ids"]
    assert ids[0] == loaded.tokenizer.bos_token_id and len(ids) == 4
    twin = load_model("affine_gpt", {**spec, "init": "random", "init_seed": 1}, device="cpu")
    assert not torch.equal(twin.model.wte.weight, saved["transformer.wte.weight"])


TEXTS = [f"{s} ." for s in CORPUS] * 6


def test_bpe_tokenizer_is_deterministic_and_adds_bos():
    a = bpe_tokenizer(TEXTS, 300, 64)
    b = bpe_tokenizer(TEXTS, 300, 64)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    ids = a("the cat")["input_ids"]
    assert ids[0] == a.bos_token_id
    assert a.decode(ids, skip_special_tokens=True) == "the cat"


def test_text_lm_learns_and_twin_perplexity_is_near_vocabulary_size(tmp_path):
    spec = {
        "train": {
            **TINY,
            "data": "texts",
            "architecture": "llama",
            "d_model": 32,
            "context": 64,
            "vocab_size": 300,
            "steps": 30,
            "lr": 0.01,
            "eval_every": 30,
            "validation_fraction": 0.2,
        }
    }
    data_spec = {"file": {"path": "unused"}}
    trained = train_model("lm", spec, data_spec, TEXTS, tmp_path / "lm", None, progress=False)
    twin = train_model(
        "lm_untrained",
        {**spec, "init": "random"},
        data_spec,
        TEXTS,
        tmp_path / "twin",
        None,
        progress=False,
    )
    vocab = json.loads((tmp_path / "lm" / "config.json").read_text())["vocab_size"]
    content = training_report.section({"lm": trained, "lm_untrained": twin})
    assert any(
        n.startswith("lm: validation perplexity") and "lm_untrained" in n for n in content["notes"]
    )
    assert [row[0] for row in content["tables"][0].rows] == ["lm", "lm_untrained"]
    ppl_twin = twin["metrics"]["validation_perplexity"]
    ppl = trained["metrics"]["validation_perplexity"]
    # An untrained model spreads its mass about evenly over the vocabulary.
    assert 0.5 * vocab < ppl_twin < 2 * vocab
    assert ppl < 0.5 * ppl_twin
    assert trained["n_validation_texts"] == round(0.2 * len(TEXTS))
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["model_type"] == "llama"


def test_train_settings_defaults_are_the_schemas():
    # A spec built in Python (TrainSettings.from_spec) must train as the workflow's would, which
    # fills the schema's defaults; steps and checkpoint_every once differed (1000 and 200).
    import dataclasses

    from residual_dynamics.config.schema import merged_schema

    schema = merged_schema()["$defs"]["model"]["properties"]["train"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    assert set(fields) == set(schema)
    for name, default in fields.items():
        if default is dataclasses.MISSING:
            assert "default" not in schema[name], name
        else:
            assert schema[name]["default"] == default, name


def test_micro_batches_give_the_whole_batch_gradient_with_less_padding():
    texts = [" ".join(["word"] * (1 + (7 * i) % 40)) for i in range(90)]
    settings = dict(data="x", batch_size=16, context=64, vocab_size=300, d_model=32, n_layers=2)
    whole = TextData(texts, TrainSettings(**settings, micro_batches=1))
    split = TextData(texts, TrainSettings(**settings, micro_batches=4))
    assert split.tokenizer.backend_tokenizer.to_str() == whole.tokenizer.backend_tokenizer.to_str()
    assert len(whole.micro_batches(3)) == 1 and len(split.micro_batches(3)) == 4

    def gradient(data):
        model = build_model(data.settings, data.tokenizer, 0)
        loss = accumulate_gradients(model, data.micro_batches(3))
        return loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    (loss_a, grad_a), (loss_b, grad_b) = gradient(whole), gradient(split)
    assert float(loss_b) == pytest.approx(float(loss_a), rel=1e-5)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-6)
    padded = [m.numel() for _, m in split.micro_batches(3)]
    real = int(whole.batch(3)[1].sum())
    assert sum(padded) < whole.batch(3)[1].numel() and sum(padded) >= real
    # The groups hold the batch's texts, shortest first.
    lengths = [int(m.sum(1).min()) for _, m in split.micro_batches(3)]
    assert lengths == sorted(lengths)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    s = TrainSettings(data="x", steps=100, warmup_steps=10, lr=1.0)
    lrs = np.array([learning_rate(i, s) for i in range(100)])
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert np.all(np.diff(lrs[10:]) <= 1e-12) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_train_settings_reject_unknown_keys_and_bad_shapes():
    with pytest.raises(TrainingError, match="unknown key"):
        TrainSettings.from_spec({"data": "x", "layers": 3})
    with pytest.raises(TrainingError, match="multiple of"):
        TrainSettings.from_spec({"data": "x", "d_model": 10, "n_heads": 4})


def config_with(model: dict, **extra_datasets) -> dict:
    return {
        "models": {"m": model},
        "datasets": {
            "affine": TASK,
            "text": {"builtin": "pydoc_topics"},
            "text_shuffled": {"variant_of": "text", "shuffle_tokens": True},
            **extra_datasets,
        },
        "runs": [{"models": ["m"], "datasets": ["affine"]}],
    }


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"data": "afine"},
            r"models.m.train.data: no dataset named 'afine' \(did you mean 'affine'",
        ),
        ({"data": "text_shuffled"}, "models.m.train.data: 'text_shuffled' is a variant"),
        ({"data": "affine", "context": 4}, r"models.m.train.context \(4\) is shorter"),
        ({"data": "affine", "d_model": 30}, r"models.m.train.d_model \(30\) must be a multiple"),
        ({"data": "affine", "architecture": "bert"}, r"models.m.train.architecture: 'bert'"),
        ({"data": "affine", "layers": 2}, r"unknown key 'models.m.train.layers'"),
        ({}, "data"),
    ],
)
def test_config_errors_for_bad_train_specs(train, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(config_with({"train": train}))


def test_train_is_a_source_of_its_own():
    with pytest.raises(ConfigError, match="models.m: give exactly one source"):
        validate_config(config_with({"train": {"data": "affine"}, "hub": "gpt2"}))
    filled = validate_config(config_with({"train": {"data": "affine"}}))
    assert filled["models"]["m"]["train"]["n_layers"] == 3


class _RunsCode:
    """Unpickling this calls Path.touch on a marker: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(tmp_path):
    from residual_dynamics.io.checkpoints import UntrustedCheckpointError

    marker = tmp_path / "code-ran"
    hostile = tmp_path / "ckpt" / "checkpoint.pt"
    hostile.parent.mkdir()
    torch.save({"step": 3, "payload": _RunsCode(marker)}, hostile)
    with pytest.raises(UntrustedCheckpointError, match="Delete the file and rerun") as info:
        train_model("m", {"train": TINY}, TASK, None, tmp_path / "m", hostile.parent)
    assert str(hostile) in str(info.value)
    assert not marker.exists()  # nothing in the file was executed
    # The same payload without weights_only would have run: the check is not vacuous.
    torch.load(hostile, weights_only=False)
    assert marker.exists()

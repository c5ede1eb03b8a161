"""The compressing autoencoder of Figure 3: the paper's widths and layers, a split by sample,
repeatable training, resume, and reconstruction of data with a known 2-D structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import explained_variance_score
from test_transitions import NAMES, write_store
from torch import nn

from residual_dynamics.analysis.cae import (
    CaeSettings,
    CompressingAutoencoder,
    cae_widths,
    evaluate_cae,
    explained_variance,
    split_samples,
    train_cae,
)
from residual_dynamics.paper.summary import cae_summary


def test_widths_for_llama_match_the_paper():
    assert cae_widths(4096, 10) == [4096, 1756, 753, 323, 138, 59, 25, 11, 5, 2]
    assert cae_widths(384, 10)[0] == 384 and cae_widths(384, 10)[-1] == 2
    with pytest.raises(ValueError, match="cae.k"):
        cae_widths(64, 1)


def test_layers_are_linear_layernorm_relu_except_the_last_of_each_half():
    model = CompressingAutoencoder(64, k=4)
    for half, widths in ((model.encoder, model.widths), (model.decoder, model.widths[::-1])):
        kinds = [type(m) for m in half]
        assert kinds == [nn.Linear, nn.LayerNorm, nn.ReLU] * (len(widths) - 2) + [nn.Linear]
        linears = [m for m in half if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == list(
            zip(widths[:-1], widths[1:], strict=True)
        )


def test_split_is_by_sample_and_disjoint():
    train, val, test = split_samples(100, 0.15, 0.15, seed=3)
    assert len(set(train) | set(val) | set(test)) == 100
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert (len(val), len(test)) == (15, 15)
    with pytest.raises(ValueError, match="no training samples"):
        split_samples(4, 0.5, 0.5, seed=0)


def test_explained_variance_equals_scikit_learn():
    rng = np.random.default_rng(0)
    x, x_hat = rng.normal(size=(5, 3, 20)), rng.normal(size=(5, 3, 20))
    ours = explained_variance(x, x_hat)
    for i in range(5):
        for j in range(3):
            assert ours[i, j] == pytest.approx(explained_variance_score(x[i, j], x_hat[i, j]))


@pytest.fixture
def planar_store(tmp_path):
    """Vectors on a 2-D plane in 32 dimensions (plus tiny noise): a 2-unit bottleneck suffices."""
    rng = np.random.default_rng(2)
    n, s, d = 90, len(NAMES), 32
    plane = rng.normal(size=(2, d))
    z = rng.normal(size=(n, s, 2)) * np.array([3.0, 1.5])
    resid = (z @ plane + rng.normal(scale=0.01, size=(n, s, d))).astype(np.float32)
    return write_store(tmp_path / "planar.zarr", resid, chunk_rows=16)


FAST = dict(k=3, batch_size=64, max_epochs=25, patience=5, seed=7, learning_rate=3e-3)


def test_training_is_repeatable_and_reconstructs_a_plane(planar_store):
    torch.set_num_threads(1)
    settings = CaeSettings(**FAST)
    first = train_cae(planar_store, settings, progress=False)
    second = train_cae(planar_store, settings, progress=False)
    assert first.history == second.history
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    result = evaluate_cae(planar_store, first, settings)
    assert result["latent"].shape == (len(first.split[2]), len(NAMES) - 1, 2)
    # Data on a plane through 2 latent units: most of the variance comes back.
    assert float(result["r2"].mean()) > 0.8
    summary = cae_summary(result)
    assert summary["n_test"] == len(first.split[2]) and summary["ev_max"] > 0.8


def test_streaming_blocks_train_like_the_cached_path_would_shuffle(planar_store):
    """Out of core (memory budget 0): every training vector is still seen once per epoch."""
    torch.set_num_threads(1)
    settings = CaeSettings(**{**FAST, "max_epochs": 2, "memory_gib": 0.0})
    trained = train_cae(planar_store, settings, progress=False)
    assert len(trained.history["train_loss"]) == 2
    assert all(np.isfinite(trained.history["val_loss"]))


def test_resume_from_checkpoint_equals_an_uninterrupted_run(planar_store, tmp_path):
    torch.set_num_threads(1)
    settings = CaeSettings(**{**FAST, "max_epochs": 6, "patience": 100})
    whole = train_cae(planar_store, settings, progress=False)
    checkpoint = tmp_path / "ckpt.pt"
    # A run stopped after epoch 3 leaves the checkpoint that a 4-epoch run leaves.
    short = CaeSettings(**{**FAST, "max_epochs": 4, "patience": 100})
    train_cae(planar_store, short, checkpoint=checkpoint, progress=False)
    state = torch.load(checkpoint, weights_only=True)
    state["settings"]["max_epochs"] = 6  # the same run, asked to go on
    torch.save(state, checkpoint)
    resumed = train_cae(planar_store, settings, checkpoint=checkpoint, progress=False)
    assert resumed.history == whole.history
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_cae_checkpoint_that_would_run_code_is_refused(planar_store, tmp_path):
    from test_training import _RunsCode

    from residual_dynamics.io.checkpoints import UntrustedCheckpointError

    marker = tmp_path / "code-ran"
    hostile = tmp_path / "cae_checkpoint.pt"
    torch.save({"epoch": 1, "payload": _RunsCode(marker)}, hostile)
    settings = CaeSettings(**{**FAST, "max_epochs": 2})
    with pytest.raises(UntrustedCheckpointError, match="Delete the file and rerun"):
        train_cae(planar_store, settings, checkpoint=hostile, progress=False)
    assert not marker.exists()

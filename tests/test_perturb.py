"""Teleport perturbations that re-enter the model (Figure 4D) on tiny models of several families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from residual_dynamics.analysis.perturbation import (
    PcaBasis,
    PerturbationError,
    Reentry,
    perturb_sequence,
    perturbation_dataset,
    perturbation_layers,
    recovery_measures,
    recovery_summary,
    teleport_grid,
)
from residual_dynamics.inputs.models import load_model
from tiny_models import make_tokenizer, save_tiny_model


@pytest.fixture(scope="module", params=["llama", "gpt2", "bert"])
def reentry(request, tmp_path_factory):
    family = request.param
    path = save_tiny_model(family, tmp_path_factory.mktemp(family), n_layers=4)
    loaded = load_model(family, {"path": str(path)}, device="cpu", with_head=family != "bert")
    tokenizer = make_tokenizer("bert" if family == "bert" else "causal")
    ids = tokenizer("the time of the way you said it was hot")["input_ids"]
    return Reentry(loaded.model, ids)


def test_teleport_to_the_controls_own_state_reproduces_the_control(reentry):
    for layer in range(4):
        own = reentry.control.rows[reentry.sublayer_index(layer)]
        rows, logits = reentry.run(layer, own[None].repeat(3, 1))
        torch.testing.assert_close(
            rows, reentry.control.rows.expand(3, -1, -1), rtol=1e-5, atol=1e-5
        )
        if reentry.has_logits:
            torch.testing.assert_close(
                logits, reentry.control.logits.expand(3, -1), rtol=1e-5, atol=1e-5
            )


def test_cached_reentry_equals_a_full_forward_and_leaves_earlier_sublayers_alone(reentry):
    rng = np.random.default_rng(0)
    d = reentry.control.rows.shape[1]
    vectors = torch.as_tensor(rng.normal(scale=3.0, size=(5, d)), dtype=torch.float32)
    for layer in (1, 2, 3):
        cached, cached_logits = reentry.run(layer, vectors)
        full, full_logits = reentry.run(layer, vectors, reuse_cache=False)
        torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
        if reentry.has_logits:
            torch.testing.assert_close(cached_logits, full_logits, rtol=1e-5, atol=1e-5)
        start = reentry.sublayer_index(layer)
        # Untouched before the perturbed layer (from the full forward pass, not the cache) ...
        torch.testing.assert_close(full[:, :start], reentry.control.rows[:start].expand(5, -1, -1))
        # ... written at it, and changed after it.
        torch.testing.assert_close(full[:, start], vectors)
        assert not torch.allclose(full[:, start + 1], reentry.control.rows[start + 1])


def test_layers_scale_the_papers_to_the_models_depth_and_refuse_bad_ones():
    assert perturbation_layers(32) == [0, 7, 15, 23, 31]
    assert perturbation_layers(6) == [0, 1, 2, 4, 5]
    assert perturbation_layers(2) == [0, 1]
    with pytest.raises(
        PerturbationError, match=r"perturbation.layers: \[7\] beyond the model's depth; it has 6"
    ):
        perturbation_layers(6, [0, 7])


def test_grid_and_its_bad_inputs():
    grid = teleport_grid(3, [-1, 1])
    assert grid.shape == (9, 2) and set(grid[:, 0]) == {-1.0, 0.0, 1.0}
    with pytest.raises(PerturbationError, match="grid_size"):
        teleport_grid(0, [-1, 1])
    with pytest.raises(PerturbationError, match="grid_range: \\[2.0, 2.0\\] spans nothing"):
        teleport_grid(4, [2, 2])


def test_recovery_measures_on_a_hand_made_case():
    control = np.zeros((4, 2))
    # Two points sent to +-1 on the first unit; one comes back halfway, then both to +-0.25.
    rows = np.array(
        [
            [[0, 0], [1, 0], [0.5, 0], [0.25, 0]],
            [[0, 0], [-1, 0], [-0.5, 0], [-0.25, 0]],
        ]
    )
    values = recovery_measures(rows, control, start=1, horizon=1, project=lambda x: x)
    assert values["start_distance"] == pytest.approx(1.0)
    assert values["distance_after"] == pytest.approx(0.5)
    assert values["remaining"] == pytest.approx(0.5)
    assert values["end_mse"] == pytest.approx(0.25**2 / 2)
    assert values["end_spread_ratio"] == pytest.approx(0.25)
    logits = torch.tensor([[0.0, 0.0], [0.0, np.log(3.0)]])
    control_logits = torch.tensor([0.0, 0.0])
    kl = recovery_measures(rows, control, 1, 1, lambda x: x, logits, control_logits)["kl"]
    expected = (0 + (0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75))) / 2
    assert kl == pytest.approx(expected)


def test_perturb_sequence_end_to_end_on_a_tiny_model(reentry):
    names = [n for n in reentry.names if n != "final"]
    rows = reentry.control.rows.numpy()
    rng = np.random.default_rng(1)
    basis = PcaBasis(
        mean=rows.mean(axis=0),
        components=np.linalg.qr(rng.normal(size=(rows.shape[1], 2)))[0].T,
        sublayers=names,
    )
    layers = perturbation_layers(4)
    grid = teleport_grid(3, [-2, 2])
    swaps = {layer: rng.normal(size=(4, rows.shape[1])) for layer in layers}
    result = perturb_sequence(
        reentry,
        basis,
        layers,
        grid,
        horizon=3,
        noise_scales=[0.5],
        noise_draws=4,
        swap_states=swaps,
    )
    data = perturbation_dataset(result, layers, grid, basis, None, {"model": "tiny"})
    assert list(data["kind"].values) == ["teleport", "noise_0.5", "swap"]
    assert data["teleport_path"].shape == (len(layers), 9, len(names), 2)
    # The teleported points start on the grid.
    for li, layer in enumerate(layers):
        start = names.index(f"attn{layer}")
        np.testing.assert_allclose(data["teleport_path"].values[li, :, start], grid, atol=1e-4)
    summary = recovery_summary(data)
    assert set(summary["per_layer"]) == {str(layer) for layer in layers}
    assert np.isnan(summary["per_layer"]["0"]["kl"]) == (not reentry.has_logits)

"""Local dynamics: sublayer Jacobians on tiny models of each family against plain autograd, and
the spectra and Lyapunov exponents on maps whose answers are known.

Tolerances: Jacobians 1e-5 absolute in float64 (entries are O(1); Llama and Gemma 2 compute their
norms in float32 even in a float64 model, so their errors are ~1e-8 and ~1e-6, the others'
~1e-15); block Lanczos singular values 1e-8 relative to the largest on matrices, 1e-6 on the tiny
models (the float32 norms set the floor), bottom values within their stated bound; Lyapunov
exponents 1e-10 where the frame is the product's and the answer is exact at any length, 5 / T
where the QR method starts from a random frame (its transient is O(log(condition) / T)).
"""

from __future__ import annotations

import math
import operator

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from residual_dynamics.analysis.jacobians import (
    Linearisation,
    MatrixMap,
    dense_measures,
    eigen_measures,
    estimated_frobenius_ratios,
    extreme_singular_values,
    finite_time_lyapunov,
    frobenius_ratios,
    rotation_angles,
)
from residual_dynamics.analysis.local_dynamics import SublayerMaps, local_dynamics
from residual_dynamics.recording.hooks import architecture_for, first_tensor
from tiny_models import make_tokenizer, save_tiny_model

FAMILIES = ("llama", "gemma2", "gpt2", "bert", "gpt_neox", "falcon")  # the last two parallel
TEXT = "the time of the way you said it was hot"
JACOBIAN_ATOL = 1e-5

# Each family's own MLP sublayer with its residual add, written out from its block's forward:
# the independent reference for the mlp_l -> attn_(l+1) maps (x: (1, 1, d)).
MLP_SUBLAYER = {
    "llama": lambda b, x: x + b.mlp(b.post_attention_layernorm(x)),
    "gemma2": lambda b, x: x + b.post_feedforward_layernorm(b.mlp(b.pre_feedforward_layernorm(x))),
    "gpt2": lambda b, x: x + b.mlp(b.ln_2(x)),
    "bert": lambda b, x: b.output(b.intermediate(x), x),
}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matrices: thread hand-offs cost more than the arithmetic (conftest restores it).
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (model in float64, token ids of TEXT), each built once per module."""
    built = {}

    def get(family: str):
        if family not in built:
            path = save_tiny_model(family, tmp_path_factory.mktemp(family), n_layers=2)
            auto = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
            model = auto.from_pretrained(path, dtype=torch.float64).eval()
            ids = make_tokenizer("bert" if family == "bert" else "causal")(TEXT)["input_ids"]
            built[family] = (model, ids)
        return built[family]

    return get


def reference_map(model, ids, layer: int, position: int, target: str):
    """Input of block ``layer`` at ``position`` -> its pre-MLP state ('mid') or output, by a
    full forward pass (no cached blocks, no in-place writes, the model's own attention)."""
    arch = architecture_for(model.config)
    block = operator.attrgetter(arch.layers)(model.base_model)[layer]

    def f(x):
        captured = {}

        def write(_module, args, kwargs):
            h = first_tensor(args, kwargs)
            h = torch.cat([h[:, :position], x[None, None], h[:, position + 1 :]], dim=1)
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

        def read_mid(_module, args, kwargs):
            captured["y"] = first_tensor(args, kwargs)[0, position]

        def read_output(_module, _args, output):
            captured["y"] = (output[0] if isinstance(output, tuple) else output)[0, position]

        handles = [block.register_forward_pre_hook(write, with_kwargs=True)]
        if target == "mid":
            mid = operator.attrgetter(arch.mid)(block)
            handles.append(mid.register_forward_pre_hook(read_mid, with_kwargs=True))
        else:
            handles.append(block.register_forward_hook(read_output))
        try:
            model(input_ids=torch.tensor([ids]), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return captured["y"]

    return f


def jacobian(f, x):
    return torch.autograd.functional.jacobian(f, x.detach().clone())


def hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_sublayer_jacobians_equal_autograd_on_each_family(tiny, family):
    model, ids = tiny(family)
    arch = architecture_for(model.config)
    blocks = operator.attrgetter(arch.layers)(model.base_model)
    hooks = hook_count(model)
    for position in (len(ids) - 1, 2):
        maps = SublayerMaps(model, ids, position)
        states = maps.states
        jacobians = {}
        for t, name in enumerate(maps.transitions):
            source, target = name.split("->")
            layer = int(source.removeprefix("attn").removeprefix("mlp"))
            lin = maps.linearisation(t)
            jac = lin.matrix()  # by torch.func.jvp
            # The map passes through the recorded trajectory. A causal model's map runs token p
            # alone (PrefixCache), so Gemma 2's float32 steps round differently: 1e-7, not 1e-15.
            torch.testing.assert_close(
                maps.map(t)(states[t][None].clone())[0], states[t + 1], rtol=0, atol=1e-6
            )
            if source.startswith("attn"):
                f = reference_map(model, ids, layer, position, "mid" if arch.mid else "output")
            else:
                block = blocks[layer]
                f = lambda x, b=block: MLP_SUBLAYER[family](b, x[None, None])[0, 0]  # noqa: E731
            reference = jacobian(f, states[t])
            assert (jac - reference).abs().max() < JACOBIAN_ATOL, (family, position, name)
            cotangents = torch.randn(len(states[t]), 3, dtype=torch.float64)
            vjp = lin.apply_t(cotangents)  # by torch.func.vjp
            assert (vjp - reference.T @ cotangents).abs().max() < JACOBIAN_ATOL
            jacobians[name] = jac
        if arch.mid is not None:
            # attn_l -> mlp_l -> attn_(l+1) composes to the whole block, read without any write
            # at the pre-MLP state: the in-place write carries through the skip connection.
            for layer in range(len(blocks)):
                after = f"attn{layer + 1}" if layer + 1 < len(blocks) else "final"
                block = jacobian(
                    reference_map(model, ids, layer, position, "output"),
                    states[maps.names.index(f"attn{layer}")],
                )
                product = jacobians[f"mlp{layer}->{after}"] @ jacobians[f"attn{layer}->mlp{layer}"]
                assert (product - block).abs().max() < JACOBIAN_ATOL
    # The model is left as it was found.
    assert hook_count(model) == hooks
    assert all(not type(b).__name__.startswith("Cached") for b in blocks)


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_maps_run_the_one_token_and_bert_the_whole_text(tiny, family):
    # The test above checks every family's maps against autograd; this one checks which path they
    # took, so that a causal family silently back on the whole text would be seen.
    model, ids = tiny(family)
    maps = SublayerMaps(model, ids, 3)
    assert (maps.prefix is not None) == (family != "bert"), family
    if maps.prefix is not None:
        seen = []
        block = operator.attrgetter(maps.arch.layers)(model.base_model)[1]
        handle = block.register_forward_pre_hook(
            lambda _m, args, kwargs: seen.append(first_tensor(args, kwargs).shape[1]),
            with_kwargs=True,
        )
        try:
            maps.map(maps.names.index("attn1"))(maps.states[maps.names.index("attn1")][None])
        finally:
            handle.remove()
        assert seen == [1]  # token p alone reaches the block


def test_a_prefix_that_does_not_reproduce_the_text_falls_back_to_the_whole_text(tiny, monkeypatch):
    # A family whose cache does more than keep the earlier keys (planted: the first key dropped)
    # must not get one-token maps: they would not pass through the recorded trajectory.
    from residual_dynamics.analysis import local_dynamics as module

    model, ids = tiny("llama")
    exact = SublayerMaps(model, ids)
    freeze = module.PrefixCache.freeze

    def drop_first(self, length):
        freeze(self, length)
        for layer in self.layers:
            layer.keys, layer.values = layer.keys[..., 1:, :], layer.values[..., 1:, :]

    monkeypatch.setattr(module.PrefixCache, "freeze", drop_first)
    maps = SublayerMaps(model, ids)
    assert maps.prefix is None
    for t in range(len(maps.transitions)):
        jac, want = maps.linearisation(t).matrix(), exact.linearisation(t).matrix()
        assert (jac - want).abs().max() < 1e-10


def test_a_cache_api_that_differs_falls_back_to_the_whole_text_with_a_warning(
    tiny, monkeypatch, caplog
):
    # A transformers release whose cache layers are laid out otherwise: freeze fails. The maps
    # must still be built, over the whole text, and say so.
    from residual_dynamics.analysis import local_dynamics as module

    model, ids = tiny("gpt2")
    exact = SublayerMaps(model, ids)

    def no_layers(self, length):
        raise AttributeError("'PrefixCache' object has no attribute 'layers'")

    monkeypatch.setattr(module.PrefixCache, "freeze", no_layers)
    maps = SublayerMaps(model, ids)
    assert maps.prefix is None
    assert "one-token maps unavailable" in caplog.text
    for t in range(len(maps.transitions)):
        assert (
            maps.linearisation(t).matrix() - exact.linearisation(t).matrix()
        ).abs().max() < 1e-10


@pytest.mark.parametrize("family", ["llama", "bert"])  # pre-norm and post-norm
def test_matrix_free_singular_values_equal_the_full_svd_on_a_model(tiny, family):
    model, ids = tiny(family)
    maps = SublayerMaps(model, ids)
    for t in range(len(maps.transitions)):
        lin = maps.linearisation(t)
        sigma = torch.linalg.svdvals(lin.matrix())
        # A basis smaller than R^32, so Lanczos must converge (restarts included); 1e-7: the
        # float32 RMSNorm inside the float64 Llama is the operator's own rounding floor.
        found = extreme_singular_values(lin, 2, tol=1e-7, max_basis=24)
        assert (found.top - sigma[:2]).abs().max() < 1e-6 * sigma[0]
        # Bottom values come through c - sigma^2: absolute accuracy about sqrt(tol) * sigma_max.
        assert found.bottom_bound < 1e-3 * sigma[0]
        assert (found.bottom - sigma.flip(0)[:2]).abs().max() < found.bottom_bound


@pytest.mark.parametrize("kind", ["near_identity", "gaussian"])
def test_top_and_bottom_k_singular_values_equal_the_full_svd(kind):
    rng = np.random.default_rng(1)
    d = 300
    noise = rng.normal(size=(d, d)) / math.sqrt(d)
    a = np.eye(d) + 0.1 * noise if kind == "near_identity" else noise  # clustered: the hard case
    sigma = np.linalg.svd(a, compute_uv=False)
    found = extreme_singular_values(MatrixMap(a), 10)
    assert found.residual < 1e-9
    np.testing.assert_allclose(found.top.numpy(), sigma[:10], rtol=0, atol=1e-8 * sigma[0])
    # Far inside the worst-case bound (1e-5 sigma_max here): Ritz values err by ~residual^2/gap.
    np.testing.assert_allclose(found.bottom.numpy(), sigma[::-1][:10], rtol=0, atol=1e-8 * sigma[0])


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_lyapunov_exponents_of_a_repeated_map_with_known_spectrum():
    eigenvalues = np.array([1.5, -1.2, 0.9, 0.5, -0.3, 0.1])
    expected = np.log(np.abs(eigenvalues))[:4]
    diagonal = np.diag(eigenvalues)
    u = random_orthogonal(6, 0)
    symmetric = u @ diagonal @ u.T  # the same spectrum in a rotated basis
    for matrix in (diagonal, symmetric):
        # From the product's singular vectors: exact at any length (sigma_i(A^T) = |lambda_i|^T
        # for symmetric A); at T = 50 sigma_4 / sigma_1 is 1e-24, beyond what A^T's Gram resolves.
        for steps in (3, 50):
            aligned = finite_time_lyapunov([matrix] * steps, 4, frame="product")
            np.testing.assert_allclose(aligned.exponents, expected, rtol=0, atol=1e-10)
        # The plain QR method from a random frame: exact up to its O(1/T) transient.
        steps = 1000
        plain = finite_time_lyapunov([matrix] * steps, 4, seed=3)
        np.testing.assert_allclose(plain.exponents, expected, rtol=0, atol=5 / steps)
        assert plain.stretch.shape == (steps, 4)


def test_lyapunov_exponents_of_maps_with_known_expanding_and_contracting_directions():
    # Non-normal: the singular values of one step (5.4 and 0.19) are not what repeats; the
    # exponents are log 2 (expanding along e1) and log 0.5 (contracting along the other axis).
    shear = np.array([[2.0, 5.0], [0.0, 0.5]])
    steps = 1000
    result = finite_time_lyapunov([shear] * steps, 2, seed=0)
    np.testing.assert_allclose(result.exponents, [math.log(2), math.log(0.5)], atol=5 / steps)
    assert np.linalg.svd(shear, compute_uv=False)[0] > 5

    # Nonlinear, in a rotated basis: y -> (2 y1 + sin y2 + y3^2 mod 2 pi, y2 + 0.5 sin y3, 0.5 y3)
    # (a doubling map on a circle, so the state stays bounded) has an upper-triangular Jacobian
    # with diagonal (2, 1, 0.5) everywhere: along any trajectory the exponents are log 2
    # (expanding), 0 (neutral) and log 0.5 (contracting).
    u = torch.as_tensor(random_orthogonal(3, 1))

    def step(x):
        y = u.T @ x
        g = torch.stack(
            [
                torch.remainder(2 * y[0] + torch.sin(y[1]) + y[2] ** 2, 2 * math.pi),
                y[1] + 0.5 * torch.sin(y[2]),
                0.5 * y[2],
            ]
        )
        return u @ g

    x = torch.tensor([0.1, -0.4, 0.7], dtype=torch.float64)
    ops = []
    steps = 400
    for _ in range(steps):
        ops.append(Linearisation(step, x))
        x = step(x)
    result = finite_time_lyapunov(ops, 3, seed=0)
    np.testing.assert_allclose(
        result.exponents, [math.log(2), 0.0, math.log(0.5)], rtol=0, atol=5 / steps
    )


def test_aligned_exponents_are_the_singular_values_of_the_product():
    rng = np.random.default_rng(2)
    matrices = [np.eye(8) + 0.5 * rng.normal(size=(8, 8)) for _ in range(6)]
    product = np.linalg.multi_dot(matrices[::-1])
    expected = np.log(np.linalg.svd(product, compute_uv=False)[:3]) / len(matrices)
    result = finite_time_lyapunov(matrices, 3, frame="product")
    np.testing.assert_allclose(result.exponents, expected, rtol=0, atol=1e-10)


def test_non_normality_and_antisymmetric_share():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    symmetric = torch.as_tensor(a + a.T)
    assert frobenius_ratios(symmetric)["non_normality"] < 1e-14
    assert frobenius_ratios(symmetric)["antisymmetric_share"] < 1e-30
    s = 0.7
    shear = torch.tensor([[1.0, s], [0.0, 1.0]], dtype=torch.float64)
    ratios = frobenius_ratios(shear)
    assert ratios["non_normality"] == pytest.approx(math.sqrt(2) * s**2 / (2 + s**2), rel=1e-12)
    assert ratios["antisymmetric_share"] == pytest.approx(s**2 / 2 / (2 + s**2), rel=1e-12)
    theta = 0.4
    rotation = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
        dtype=torch.float64,
    )
    ratios = frobenius_ratios(rotation)
    assert ratios["non_normality"] < 1e-15  # rotations are normal
    assert ratios["antisymmetric_share"] == pytest.approx(math.sin(theta) ** 2, rel=1e-12)


def test_matrix_free_ratios_estimate_the_exact_ones():
    rng = np.random.default_rng(4)
    d = 200
    j = np.eye(d) + rng.normal(size=(d, d)) / math.sqrt(d) + np.triu(rng.normal(size=(d, d))) / d
    exact = dense_measures(torch.as_tensor(j), 4)
    estimated = estimated_frobenius_ratios(MatrixMap(j), probes=64, seed=0)
    for name, value in estimated.items():
        assert value == pytest.approx(exact[name], rel=0.05), name


def test_rotation_angles_are_recovered():
    def planar(angle, radius=1.0):
        c, s = math.cos(angle), math.sin(angle)
        return radius * np.array([[c, -s], [s, c]])

    j = np.zeros((5, 5))
    j[:2, :2] = planar(0.3)
    j[2:4, 2:4] = planar(1.1, radius=0.8)
    j[4, 4] = 1.2
    u = random_orthogonal(5, 5)
    j = torch.as_tensor(u @ j @ u.T)
    angles = rotation_angles(torch.linalg.eigvals(j))
    np.testing.assert_allclose(angles.numpy(), [0.3, 1.1], rtol=0, atol=1e-12)
    measures = eigen_measures(j, 5)
    assert measures["spectral_radius"] == pytest.approx(1.2, rel=1e-12)
    assert measures["complex_share"] == pytest.approx(4 / 5)
    assert measures["rotation_angle_max"] == pytest.approx(1.1, rel=1e-12)
    assert measures["rotation_angle_mean"] == pytest.approx(0.7, rel=1e-12)
    np.testing.assert_allclose(np.abs(measures["eig_angle"][1:3]), [0.3, 0.3], atol=1e-12)


def test_local_dynamics_dataset_over_text_transition_and_k(tiny):
    model, ids = tiny("llama")  # the entry is family-agnostic; the maps are tested per family
    texts = [ids, ids[:6]]
    attention = model.config._attn_implementation
    full = local_dynamics(model, texts, text_ids=["a", "b"], k=4)
    assert model.config._attn_implementation == attention  # eager only while measuring
    assert dict(full.sizes) == {"text": 2, "transition": 4, "k": 4}
    assert list(full["transition"].values) == [
        "attn0->mlp0",
        "mlp0->attn1",
        "attn1->mlp1",
        "mlp1->final",
    ]
    assert full.attrs["method"] == "full"
    assert full["sigma_top"].dims == ("text", "transition", "k")
    assert full["lyapunov"].dims == ("text", "k")
    assert np.isfinite(full["spectral_radius"]).all()
    # Exponents are those of the product of the text's Jacobians.
    maps = SublayerMaps(model, texts[1])
    product = torch.linalg.multi_dot([maps.linearisation(t).matrix() for t in range(4)][::-1])
    expected = torch.linalg.svdvals(product)[:4].log().numpy() / 4
    np.testing.assert_allclose(full["lyapunov"].sel(text="b"), expected, rtol=0, atol=1e-8)
    np.testing.assert_allclose(full["lyapunov_mean"], full["lyapunov"].mean("text"))
    assert (full["lyapunov_ci_low"] <= full["lyapunov_mean"]).all()
    # Matrix-free: the same singular values, no eigenvalues, estimated ratios.
    free = local_dynamics(model, texts, text_ids=["a", "b"], k=4, full_max_d=0, probes=64, tol=1e-7)
    assert free.attrs["method"] == "matrix-free"
    np.testing.assert_allclose(free["sigma_top"], full["sigma_top"], rtol=1e-6)
    np.testing.assert_allclose(free["lyapunov"], full["lyapunov"], rtol=0, atol=1e-8)
    assert np.isnan(free["spectral_radius"]).all()
    resolved = np.isfinite(free["sigma_bottom"])
    error = np.abs(free["sigma_bottom"] - full["sigma_bottom"]).where(resolved, 0)
    assert (error <= free["sigma_bottom_bound"]).all()
    np.testing.assert_allclose(free["non_normality"], full["non_normality"], rtol=0.25)

"""Talking Heads: composition scores against a plain computation, the component algebra, the
weight layout against GPT-2's forward pass, a planted low-rank channel, the interventions, and the
module end to end on a tiny GPT-2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from test_laundry_list import laundry_tokenizer, tiny_gpt2

from residual_dynamics.config.schema import model_key
from residual_dynamics.config.validate import validate_config
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.studies.talking_heads import config as th_config
from residual_dynamics.studies.talking_heads.figures import write_figures
from residual_dynamics.studies.talking_heads.laundry import laundry_list_analysis
from residual_dynamics.studies.talking_heads.runner import (
    Runner,
    component_removed,
    head_write_projection,
    last_token_attention,
    residual_at_layer,
    steered,
)
from residual_dynamics.studies.talking_heads.section import write_section
from residual_dynamics.studies.talking_heads.weights import (
    KINDS,
    HeadWeights,
    TalkingHeadsError,
    add_twin_null,
    check_gpt2,
    composition_analysis,
    dominant_component,
    flag_components,
    flag_summary,
    gram_core,
    head_weights,
    select_heads,
    top_outliers,
    upper_p,
    weights_analysis,
)
from tiny_models import make_tokenizer, save_tiny_model

REPO = Path(__file__).resolve().parents[1]


def random_weights(n_layers=3, n_heads=2, d=12, dh=4, seed=0) -> HeadWeights:
    rng = np.random.default_rng(seed)
    draw = lambda *shape: rng.normal(size=shape)  # noqa: E731
    return HeadWeights(
        W_Q=draw(n_layers, n_heads, d, dh),
        W_K=draw(n_layers, n_heads, d, dh),
        W_V=draw(n_layers, n_heads, d, dh),
        W_O=draw(n_layers, n_heads, dh, d),
        gamma=np.ones((n_layers, d)),
    )


def plain_cs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- weights-only scores -----------------------------------------------------------------------


def test_composition_scores_equal_a_plain_loop_over_full_matrices():
    """Independent: d x d matrices, numpy SVD, Elhage et al.'s column-vector formulas."""
    w = random_weights()
    data = composition_analysis(w)
    for l1 in range(3):
        for h1 in range(2):
            # Column-vector convention: W_OV = (our OV)^T, W_QK = our QK.
            ov1_col = (w.W_V[l1, h1] @ w.W_O[l1, h1]).T
            u, s, vt = np.linalg.svd(w.W_V[l1, h1] @ w.W_O[l1, h1])
            for l2 in range(3):
                for h2 in range(2):
                    got = data["composition"].sel(source=f"{l1}.{h1}", target=f"{l2}.{h2}").values
                    if l2 <= l1:
                        assert np.isnan(got).all()
                        continue
                    qk2 = w.W_Q[l2, h2] @ w.W_K[l2, h2].T
                    ov2_col = (w.W_V[l2, h2] @ w.W_O[l2, h2]).T
                    expected = [
                        plain_cs(qk2.T, ov1_col),  # Q: |W_QK^T W_OV|
                        plain_cs(qk2, ov1_col),  # K: |W_QK W_OV|
                        plain_cs(ov2_col, ov1_col),  # V: |W_OV2 W_OV1|
                    ]
                    np.testing.assert_allclose(got, expected, rtol=1e-5)
                    comps = data["component_score"].sel(source=f"{l1}.{h1}", target=f"{l2}.{h2}")
                    for i in range(4):
                        part = s[i] * np.outer(u[:, i], vt[i])
                        expected_i = [
                            plain_cs(part, qk2),
                            plain_cs(part, qk2.T),
                            plain_cs(part, ov2_col.T),
                        ]
                        np.testing.assert_allclose(
                            comps.sel(component=i).values, expected_i, rtol=1e-5
                        )


def test_component_scores_add_up_as_the_algebra_says():
    w = random_weights(seed=1)
    data = composition_analysis(w)
    for source in ("0.0", "0.1", "1.1"):
        layer, head = (int(x) for x in source.split("."))
        ov = w.ov(layer, head)
        u = data["read_direction"].sel(source=source).values.astype(float)  # (component, unit)
        v = data["write_direction"].sel(source=source).values.astype(float)
        s = data["singular_value"].sel(source=source).values.astype(float)
        parts = [s[i] * np.outer(u[i], v[i]) for i in range(len(s))]
        np.testing.assert_allclose(sum(parts), ov, atol=1e-4 * np.abs(ov).max())
        np.testing.assert_allclose((s**2).sum(), np.linalg.norm(ov) ** 2, rtol=1e-5)
        qk2 = w.qk(2, 0)
        # W2 times the sum of the parts is W2 times OV, part by part.
        np.testing.assert_allclose(sum(p @ qk2 for p in parts), ov @ qk2, atol=1e-3)
        # Orthogonal parts: squared numerators add, so CS^2 is the s^2-weighted mean of CS_i^2.
        for kind in KINDS:
            whole = float(data["composition"].sel(kind=kind, source=source, target="2.0"))
            comp = data["component_score"].sel(kind=kind, source=source, target="2.0").values
            np.testing.assert_allclose(whole**2, (s**2 * comp**2).sum() / (s**2).sum(), rtol=1e-4)
        z = data["component_z"].sel(kind="q", source=source, target="2.0").values
        np.testing.assert_allclose([z.mean(), z.std()], [0, 1], atol=1e-5)


def test_gram_core_handles_rank_deficient_factors():
    rng = np.random.default_rng(0)
    factor = np.zeros((10, 4))
    factor[:, 0] = rng.normal(size=10)
    core = gram_core(factor)
    x = rng.normal(size=(4, 7))
    np.testing.assert_allclose(np.linalg.norm(core @ x), np.linalg.norm(factor @ x), rtol=1e-10)


# --- the weight layout against GPT-2's forward pass --------------------------------------------


def gpt2_without_biases(seed=0, n_layers=2):
    tokenizer = laundry_tokenizer()
    model = tiny_gpt2(tokenizer, n_layers=n_layers, seed=seed)
    model.set_attn_implementation("eager")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.transformer.h:
            block.ln_1.weight.copy_(0.5 + torch.rand(block.ln_1.weight.shape, generator=g))
            block.ln_1.bias.zero_()
            block.attn.c_attn.bias.zero_()
            block.attn.c_proj.bias.zero_()
    return model, tokenizer


def capture(module, fn):
    store = {}
    handles = [
        module.register_forward_pre_hook(lambda m, a: store.__setitem__("in", a[0].detach())),
        module.register_forward_hook(lambda m, a, o: store.__setitem__("out", o)),
    ]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return store


def normalised(x, eps):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(
        x.var(-1, unbiased=False, keepdim=True) + eps
    )


@pytest.mark.parametrize("fold", ["scale", "transformer_lens"])
def test_ov_from_the_weights_equals_the_models_attention_output(fold):
    """One token attends only to itself: attention output = n(x) @ sum_h OV_h (biases zero);
    with TransformerLens's fold, W_O is centred, so the output less its mean over d_model."""
    model, _ = gpt2_without_biases()
    w = head_weights(model, fold=fold)
    block = model.transformer.h[1]
    ln = capture(block.ln_1, lambda: model(input_ids=torch.tensor([[7]])))
    attn = capture(block.attn, lambda: model(input_ids=torch.tensor([[7]])))
    x = normalised(ln["in"][0, 0].double(), block.ln_1.eps).numpy()
    expected = x @ sum(w.ov(1, h) for h in range(w.n_heads))
    out = attn["out"][0][0, 0].double().numpy()
    if fold == "transformer_lens":
        out = out - out.mean()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # One head's own write, projected on a direction, as the steering scale reads it (a
    # direction with no all-ones part, which the centred W_O cannot write).
    direction = np.random.default_rng(0).normal(size=32)
    direction -= direction.mean()
    runner = Runner(model, pad_id=0)
    projection = head_write_projection(runner, [[7]], 1, 2, direction)
    np.testing.assert_allclose(projection, [x @ w.ov(1, 2) @ direction], rtol=1e-4)


@pytest.mark.parametrize("fold", ["scale", "transformer_lens"])
def test_qk_from_the_weights_gives_the_models_attention_pattern(fold):
    model, _ = gpt2_without_biases(seed=2)
    w = head_weights(model, fold=fold)
    ids = torch.tensor([[5, 9, 12, 30]])
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    block = model.transformer.h[1]
    ln = capture(block.ln_1, lambda: model(input_ids=ids))
    x = normalised(ln["in"][0].double(), block.ln_1.eps).numpy()  # (T, d)
    for head in range(w.n_heads):
        scores = x[-1] @ w.qk(1, head) @ x.T * block.attn.scaling
        pattern = np.exp(scores - scores.max())
        pattern /= pattern.sum()
        np.testing.assert_allclose(out.attentions[1][0, head, -1].numpy(), pattern, atol=1e-5)


def test_last_token_attention_equals_the_model_with_biases():
    tokenizer = laundry_tokenizer()
    model = tiny_gpt2(tokenizer, seed=4)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    ids = [[2, 10, 11, 12, 13, 14]]
    runner = Runner(model, tokenizer.pad_token_id)
    resid = residual_at_layer(runner, ids, 1)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), output_attentions=True)
    for head in range(4):
        mine = last_token_attention(model, 1, head, resid[0], 5)
        np.testing.assert_allclose(
            mine[0].numpy(), out.attentions[1][0, head, -1].numpy(), atol=1e-5
        )


# --- TransformerLens's LayerNorm fold ----------------------------------------------------------


def gpt2_with_layernorm_parameters(seed=0):
    """A tiny GPT-2 LM with non-trivial LayerNorm scales and biases and attention biases."""
    tokenizer = laundry_tokenizer()
    model = tiny_gpt2(tokenizer, n_layers=3, seed=seed)
    model.set_attn_implementation("eager")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                base = 1.0 if name.endswith("ln_1.weight") or "ln_2.weight" in name else 0.0
                param.copy_(base + 0.3 * torch.randn(param.shape, generator=g))
    return model


def test_transformer_lens_fold_reads_the_uncentred_stream():
    """Independent of TransformerLens: with ln_1's and c_attn's biases zero, the model's q, k, v
    of head h are (x / sigma(x)) @ W_{Q,K,V}[h] for the raw, uncentred residual x exactly when
    the reading weights carry the scale and are centred over d_model (the fold is exact); the
    scale-only fold misses the mean of x."""
    model = gpt2_with_layernorm_parameters()
    with torch.no_grad():
        model.transformer.wte.weight.add_(0.5)  # a stream with a clear mean over d_model
        for block in model.transformer.h:
            block.ln_1.bias.zero_()
            block.attn.c_attn.bias.zero_()
    ids = torch.tensor([[5, 9, 12, 30, 7]])
    d, dh = 32, 8
    for fold, exact in (("transformer_lens", True), ("scale", False)):
        w = head_weights(model, fold=fold)
        for layer in (0, 2):
            block = model.transformer.h[layer]
            seen = capture(block.ln_1, lambda: model(input_ids=ids))
            qkv = capture(block.attn.c_attn, lambda: model(input_ids=ids))["out"][0].double()
            x = seen["in"][0].double()
            x = x / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + block.ln_1.eps)
            assert x.mean(-1).abs().min() > 0.2  # the stream has a mean for the fold to remove
            for head in range(4):
                for part, name in enumerate(("W_Q", "W_K", "W_V")):
                    got = x.numpy() @ getattr(w, name)[layer, head]
                    cols = slice(part * d + head * dh, part * d + (head + 1) * dh)
                    close = np.allclose(got, qkv[:, cols].numpy(), atol=1e-5)
                    assert close == exact, (fold, layer, head, name)


def test_centred_writing_weights_leave_the_logits_unchanged():
    """TransformerLens's centred W_O (and output bias) put in place of GPT-2's c_proj give the same
    logits: every reader of the stream is a LayerNorm, blind to the all-ones direction. The
    same swap with W_O changed off that direction does change them."""
    model = gpt2_with_layernorm_parameters(seed=3)
    ids = torch.tensor([[2, 10, 20, 30, 11]])
    with torch.no_grad():
        before = model(input_ids=ids).logits.clone()
    w = head_weights(model, fold="transformer_lens")
    np.testing.assert_allclose(w.W_O.sum(axis=-1), 0, atol=1e-12)  # rows centred
    raw = [
        b.attn.c_proj.weight.detach().double().numpy().reshape(4, 8, 32)
        for b in model.transformer.h
    ]
    # The centred rows differ from the raw ones by a multiple of the all-ones vector only.
    for layer, matrix in enumerate(raw):
        difference = matrix - w.W_O[layer]
        np.testing.assert_allclose(difference, difference[..., :1].repeat(32, -1), atol=1e-12)
    with torch.no_grad():
        for layer, block in enumerate(model.transformer.h):
            block.attn.c_proj.weight.copy_(torch.from_numpy(w.W_O[layer].reshape(32, 32)))
            block.attn.c_proj.bias.sub_(block.attn.c_proj.bias.mean())
        after = model(input_ids=ids).logits
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
        block = model.transformer.h[1]
        block.attn.c_proj.weight.add_(0.5 * torch.randn(32, 32))
        assert (model(input_ids=ids).logits - before).abs().max() > 1e-3


# --- the nulls for component z -----------------------------------------------------------------


def test_upper_p_counts_the_null_at_or_above():
    rng = np.random.default_rng(0)
    null = rng.normal(size=(5, 40))
    null[2, :3] = np.nan
    observed = rng.normal(size=(5, 6))
    observed[1, 0] = null[1, 7]  # ties count as at or above
    observed[3, 1] = np.nan
    p = upper_p(observed, null)
    for row in range(5):
        for col in range(6):
            x = observed[row, col]
            if np.isnan(x):
                assert np.isnan(p[row, col])
                continue
            count = np.sum(np.nan_to_num(null[row], nan=-np.inf) >= x)
            assert p[row, col] == pytest.approx((1 + count) / 41)


# GPT-2 small's width (d_model 768, 12 heads of 64); 4 of its 12 layers keep each test well under
# 30 s on two cores (12 layers: 9504 head pairs, several minutes there); the null is per head pair,
# so its calibration does not depend on the depth.
GPT2_SMALL = {"n_embd": 768, "n_head": 12, "n_layer": 4}
ROTATIONS = 100  # the family-wise p can reach 1 / 101 < 0.01


@pytest.fixture(scope="module")
def gpt2_small_shaped():
    """A randomly initialised GPT-2 of GPT-2 small's width (no download), its weights and their
    composition analysis with the rotation null."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    model = GPT2Model(
        GPT2Config(vocab_size=16, n_positions=16, bos_token_id=0, eos_token_id=0, **GPT2_SMALL)
    )
    weights = head_weights(model, fold="transformer_lens")
    data = composition_analysis(weights, "random", null_rotations=ROTATIONS, null_seed=0)
    return weights, flag_components(data, 0.01)


def test_rotation_null_flags_about_one_percent_of_random_gpt2_small_components(gpt2_small_shaped):
    """z alone has no null (random weights reach ~4.5 SD here, ~5 at GPT-2 small's depth); at the
    rotation null's 1 % level at most 2 % of random weights' components are flagged."""
    _, data = gpt2_small_shaped
    for kind in KINDS:
        assert float(data["component_z"].sel(kind=kind).max()) > 3.5
        summary = flag_summary(data, kind)
        assert summary["n_components"] == 64 * 144 * 6  # (12 x 6 later-layer heads) x 64 x 12
        assert 0.003 <= summary["share_flagged"] <= 0.02, (kind, summary)
    p = data["component_p"].values
    assert np.nanmin(p) == pytest.approx(1 / (1 + ROTATIONS * 64))
    # Picking the top of all components feeding a head needs the family-wise null: at a
    # per-component 1 % the top one into every last-layer head would pass.
    last = [f"3.{h}" for h in range(12)]
    assert all(data["component_p"].sel(kind="q", target=t).min() <= 0.01 for t in last)
    verdicts = [dominant_component(data, "q", t)["verdict"] for t in last]
    assert verdicts.count("reproduced") <= 1, verdicts


def test_planted_component_in_gpt2_small_is_the_top_outlier_and_flagged(gpt2_small_shaped):
    """Head 1.5 gets a component writing along e (not its largest), and head 3.7's query reads e:
    the top Q-composition outlier of the whole model, flagged by the rotation null and by the
    untrained twin (the unplanted random model)."""
    weights, twin = gpt2_small_shaped
    planted = HeadWeights(
        *(a.copy() for a in (weights.W_Q, weights.W_K, weights.W_V, weights.W_O, weights.gamma)),
        fold=weights.fold,
    )
    rng = np.random.default_rng(1)

    def unit_outside(others):
        """A unit vector orthogonal to the all-ones vector (the fold centres) and to ``others``."""
        basis, _ = np.linalg.qr(np.column_stack([np.ones(768), *others]))
        v = rng.normal(size=768)
        v -= basis @ (basis.T @ v)
        return v / np.linalg.norm(v)

    # Head 1.5's component 3 becomes read -> e exactly, orthogonal to the rest of its OV, with a
    # singular value in the middle of the head's spectrum (not the largest).
    v_rest = np.delete(weights.W_V[1, 5], 3, axis=1)
    o_rest = np.delete(weights.W_O[1, 5], 3, axis=0)
    read, e = unit_outside(v_rest.T), unit_outside(o_rest)
    rest = np.linalg.svd(v_rest @ o_rest, compute_uv=False)[:63]
    middle = float(rest[20] + rest[21]) / 2  # between two of the rest's: no tie to mix them
    planted.W_V[1, 5][:, 3] = np.sqrt(middle) * read
    planted.W_O[1, 5][3] = np.sqrt(middle) * e
    # Head 3.7's query reads e (one of its 64 columns, at twice the columns' mean norm).
    column_norm = np.linalg.norm(weights.W_Q[3, 7], axis=0).mean()
    planted.W_Q[3, 7][:, 0] = 2 * column_norm * e
    data = composition_analysis(planted, "planted", null_rotations=ROTATIONS, null_seed=0)
    data = flag_components(add_twin_null(data, twin), 0.01)
    s = data["singular_value"].sel(source="1.5").values
    top = top_outliers(data, kind="q", n=2)
    first = top[0]
    assert (first["source"], first["target"]) == ("1.5", "3.7")
    direction = data["write_direction"].sel(source="1.5", component=first["component"]).values
    assert abs(direction @ e) > 0.999
    assert first["component"] > 0 and s[first["component"]] < s[0]  # found by score, not index
    assert first["flagged"] and first["p"] < 0.001 and first["p_twin"] < 0.001
    assert first["z"] > top[1]["z"] + 1
    claim = dominant_component(data, "q", "3.7")
    assert claim["label"] == first["label"] and claim["verdict"] == "reproduced"
    assert claim["family_p"] == pytest.approx(1 / (1 + ROTATIONS))
    assert claim["z"] > claim["twin_max_z"]


# --- the planted channel -----------------------------------------------------------------------


def planted_gpt2(seed=0):
    """Layer-0 head 1 writes along e (its second-largest OV component); layer-1 head 2's query
    reads exactly e. Everything else is small random."""
    tokenizer = laundry_tokenizer()
    model = tiny_gpt2(tokenizer, n_layers=2, seed=seed, n_embd=64, n_head=4)
    d, dh = 64, 16
    g = torch.Generator().manual_seed(seed)
    unit = lambda: torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)  # noqa: E731
    e, read, other_read, other_write, key = (unit() for _ in range(5))
    other_write -= (other_write @ e) * e  # the louder component writes orthogonally to e
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.copy_(0.02 * torch.randn(d, 3 * d, generator=g))
            block.attn.c_proj.weight.copy_(0.02 * torch.randn(d, d, generator=g))
        a0, a1 = model.transformer.h[0].attn, model.transformer.h[1].attn
        head = 1
        a0.c_attn.weight[:, 2 * d + head * dh] = 3 * read  # W_V column 0 of head 0.1
        a0.c_proj.weight[head * dh] = 3 * e  # W_O row 0: writes e (s = 9)
        a0.c_attn.weight[:, 2 * d + head * dh + 1] = 5 * other_read
        a0.c_proj.weight[head * dh + 1] = 5 * other_write / other_write.norm()  # s = 25
        head = 2
        a1.c_attn.weight[:, head * dh] = 3 * e  # W_Q column 0 of head 1.2 reads e
        a1.c_attn.weight[:, d + head * dh] = 3 * key
    return model, e.numpy()


def test_planted_channel_is_the_top_outlier():
    model, e = planted_gpt2()
    data = composition_analysis(head_weights(model))
    top = top_outliers(data, kind="q", n=3)
    first = top[0]
    assert (first["source"], first["target"]) == ("0.1", "1.2")
    assert first["component"] == 1  # not the largest singular value: found by score, not index
    assert first["z"] > 3.5 and first["score"] > 0.9
    assert top[1]["z"] < first["z"] - 0.5
    direction = data["write_direction"].sel(source="0.1", component=1).values
    assert abs(direction @ e) > 0.99
    q = data["composition"].sel(kind="q")
    assert np.unravel_index(np.nanargmax(q.values), q.shape) == (1, 6)  # 0.1 -> 1.2
    heads = select_heads(data, None, None, 2, "q")
    assert heads["mover"] == "1.2" and heads["inhibition"][0] == "0.1"


# --- interventions -----------------------------------------------------------------------------


def test_component_removal_rebuilds_the_weights_exactly_and_restores_them():
    tokenizer = laundry_tokenizer()
    model = tiny_gpt2(tokenizer, seed=5)
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.bias.normal_()
    data = composition_analysis(head_weights(model))
    before = head_weights(model)
    ids = torch.tensor([[2, 10, 20, 30]])
    original = model(input_ids=ids).logits
    attn0 = model.transformer.h[0].attn
    out_before = capture(attn0, lambda: model(input_ids=ids))["out"][0]
    u = data["read_direction"].sel(source="0.3", component=2).values.astype(float)
    v = data["write_direction"].sel(source="0.3", component=2).values.astype(float)
    s = float(data["singular_value"].sel(source="0.3", component=2))
    with component_removed(model, 0, 3, v):
        after = head_weights(model)
        out_after = capture(attn0, lambda: model(input_ids=ids))["out"][0]
    np.testing.assert_allclose(after.ov(0, 3), before.ov(0, 3) - s * np.outer(u, v), atol=1e-5)
    for h in range(3):
        np.testing.assert_allclose(after.ov(0, h), before.ov(0, h))
    # The change is along v only, and the value bias's share is kept (moved into c_proj's bias):
    # without it the difference would include b_V W_O v at every position.
    diff = (out_after - out_before)[0].double().numpy()
    along = diff @ v
    np.testing.assert_allclose(diff, np.outer(along, v), atol=1e-5)
    ln = capture(model.transformer.h[0].ln_1, lambda: model(input_ids=ids))
    x0 = model.transformer.h[0].ln_1(ln["in"])[0, 0].double().detach().numpy()
    x0 = x0 - model.transformer.h[0].ln_1.bias.detach().double().numpy()  # LN bias: ignored
    np.testing.assert_allclose(along[0], -s * (x0 @ u), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(model(input_ids=ids).logits, original)


def test_steering_adds_the_vector_at_each_last_token_only():
    tokenizer = laundry_tokenizer()
    model = tiny_gpt2(tokenizer, seed=6)
    runner = Runner(model, tokenizer.pad_token_id)
    ids = [[2, 10, 11], [2, 12, 13, 14, 15]]
    vector = np.linspace(-1, 1, 32)
    seen = {}
    attn = model.transformer.h[1].attn
    plain = capture(attn, lambda: runner(ids))["out"][0]
    with steered(runner, 1, vector):
        handle = attn.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o[0]))
        runner(ids)
        handle.remove()
    diff = (seen["out"] - plain).detach().numpy()
    for row, seq in enumerate(ids):
        np.testing.assert_allclose(diff[row, len(seq) - 1], vector, atol=1e-6)
        diff[row, len(seq) - 1] = 0
    assert np.abs(diff).max() < 1e-6
    unsteered = runner(ids)
    with steered(runner, 1, 0 * vector):
        by_zero = runner(ids)
    np.testing.assert_allclose(by_zero, unsteered, atol=1e-6)
    with steered(runner, 1, vector):
        by_vector = runner(ids)
    assert np.abs(by_vector - unsteered).max() > 1e-3  # the comparison above can fail
    np.testing.assert_allclose(runner(ids), unsteered, atol=1e-6)  # the hook is removed on exit


# --- head selection and config checks ----------------------------------------------------------


def test_head_selection_errors_name_the_key():
    data = composition_analysis(random_weights())
    data.attrs.update(n_layers=3, n_heads=2)
    with pytest.raises(TalkingHeadsError, match=r"heads.mover_head: a layer-0 head"):
        select_heads(data, "0.1", None, 2, "q")
    with pytest.raises(TalkingHeadsError, match=r"heads.mover_head: head '5.0' does not exist"):
        select_heads(data, "5.0", None, 2, "q")
    with pytest.raises(TalkingHeadsError, match=r"inhibition_heads\[1\]: head '2.0' is not"):
        select_heads(data, "2.1", ["1.0", "2.0"], 2, "q")
    chosen = select_heads(data, "2.1", None, 3, "k")
    k = data["composition"].sel(kind="k", target="2.1").values
    assert chosen["inhibition"] == [
        f"{i // 2}.{i % 2}" for i in np.argsort(-np.nan_to_num(k, nan=-1))[:3]
    ]


def test_config_checks(tmp_path):
    llama = save_tiny_model("llama", tmp_path / "llama")
    gpt2 = save_tiny_model("gpt2", tmp_path / "gpt2")
    config = {
        "models": {
            "llama": {"path": str(llama)},
            "gpt2": {"path": str(gpt2)},
            "trained_gpt2": {"train": {"data": "x"}},
            "trained_llama": {"train": {"data": "x", "architecture": "llama"}},
        },
        "talking_heads": {
            "enabled": True,
            "models": ["gpt2", "llama", "nope", "trained_gpt2", "trained_llama"],
            "laundry_list": {"n_min": 9, "n_max": 4},
        },
    }
    problems = th_config.check_config(config)
    assert any(
        p.startswith("talking_heads.models[1]: 'llama' is a 'llama' model") for p in problems
    )
    assert any(p.startswith("talking_heads.models[2]: 'nope' is not defined") for p in problems)
    assert any(
        p.startswith("talking_heads.models[4]: 'trained_llama' is trained") for p in problems
    )
    assert any("n_min (9) must not exceed n_max (4)" in p for p in problems)
    assert len(problems) == 4
    assert model_key(config, "talking_heads", "llama") == "talking_heads.models[1]"
    config["talking_heads"]["models"] = []
    assert "talking_heads.models: empty" in th_config.check_config(config)[0]
    config["talking_heads"]["enabled"] = False
    assert th_config.check_config(config) == []


def test_gpt2_config_validates_without_the_network():
    config = yaml.safe_load((REPO / "config" / "gpt2.yaml").read_text())
    filled = validate_config(config, base_dir=REPO)
    block = filled["talking_heads"]
    assert block["enabled"] and block["models"] == ["gpt2"]
    assert filled["models"]["gpt2"]["hub"] == "openai-community/gpt2"
    assert block["heads"]["mover_head"] == "9.9"
    assert block["heads"]["inhibition_heads"] == ["7.3", "7.9", "8.6", "8.10"]
    assert th_config.check_config(filled, REPO) == []


# --- the module end to end ---------------------------------------------------------------------


# The parts of the talking_heads config block each rule passes on.
WEIGHTS_SETTINGS = {
    "fold": "transformer_lens",
    "nulls": {"rotations": 20, "seed": 0, "alpha": 0.01},
    "heads": {"mover_head": None, "inhibition_heads": None, "n_inhibition_heads": 2, "kind": "q"},
}
LAUNDRY_SETTINGS = {
    "laundry_list": {"n_min": 3, "n_max": 6, "prompts_per_n": 6, "seed": 0, "batch_size": 8},
    "interventions": {
        "enabled": True,
        "n_items": 3,
        "n_prompts": 9,
        "seed": 1,
        "steering_scales": [-2, 0, 2],
        "grid_points": 3,
        "grid_extent": 2.0,
        "grid_prompts": 2,
    },
}


def test_module_end_to_end_on_a_tiny_gpt2(tmp_path):
    from residual_dynamics.report.page import read_section_manifest

    tokenizer = laundry_tokenizer()
    model = tiny_gpt2(tokenizer, n_layers=3, seed=7)
    twin = tiny_gpt2(tokenizer, n_layers=3, seed=8)
    weights = weights_analysis(model, "tiny", **WEIGHTS_SETTINGS, twin=twin)
    assert weights.attrs["heads_automatic"] == ["mover", "inhibition"]
    assert weights.attrs["fold"] == "transformer_lens"
    assert {"component_p", "component_p_twin", "component_flagged"} <= set(weights)
    assert {"null_max_z", "twin_max_z", "twin_share_flagged"} <= set(weights)
    assert weights.attrs["mover_head"].startswith("2.")
    write_dataset_atomic(weights, tmp_path / "weights.zarr", text_as_object=True)
    weights = xr.open_zarr(tmp_path / "weights.zarr").load()
    result = laundry_list_analysis(
        model,
        tokenizer,
        weights,
        **LAUNDRY_SETTINGS,
        model_name="tiny",
        add_bos=False,
        max_tokens=256,
    )
    assert not result.attrs["skipped"]
    assert list(result["n_items"].values) == [3, 4, 5, 6]
    assert result.sizes["removal"] == 4 and result.sizes["scale"] == 3
    # Steering by 0 SD is no intervention.
    assert (
        float(result["steering_accuracy_vocab"].sel(scale=0))
        == result.attrs["baseline_accuracy_vocab"]
    )
    assert result["grid_attended_index"].shape == (2, 27)
    assert result["grid_attended_index"].values.max() < 3
    write_dataset_atomic(result, tmp_path / "laundry.zarr", text_as_object=True)
    result = xr.open_zarr(tmp_path / "laundry.zarr").load()
    outputs = write_figures(weights, result, tmp_path / "fig", ["png"], dpi=50, model="tiny")
    assert all(Path(p).stat().st_size > 0 for p in outputs.values())
    write_section(
        tmp_path / "section.json",
        models=["tiny"],
        weights=[weights],
        results=[result],
        figures=[outputs],
        n_outliers=5,
    )
    section = read_section_manifest(tmp_path / "section.json")
    assert [f.figure_id for f in section.figures] == [
        "tiny-composition",
        "tiny-components",
        "tiny-laundry",
        "tiny-interventions",
        "tiny-grid",
    ]
    assert "64 %" in section.figures[2].caption and "86 %" in section.figures[3].caption
    assert "flagged" in section.figures[1].caption and "Verdict" in section.figures[1].caption
    outliers = section.tables[0]
    assert outliers.columns[-3:] == ["p (rotations)", "p (untrained twin)", "flagged"]
    assert all(row[-1] in ("yes", "no") for row in outliers.rows)
    assert any("fold: transformer_lens</code> (the default" in note for note in section.notes)
    assert any("rotated at random" in note for note in section.notes)


def test_laundry_list_is_skipped_on_a_tokenizer_without_the_objects(tmp_path, caplog):
    tokenizer = make_tokenizer("causal")  # the shared tiny vocabulary: no object words
    model = tiny_gpt2(tokenizer, n_layers=2)
    weights = weights_analysis(model, "residues", **WEIGHTS_SETTINGS)
    result = laundry_list_analysis(
        model,
        tokenizer,
        weights,
        **LAUNDRY_SETTINGS,
        model_name="residues",
        add_bos=False,
        max_tokens=64,
    )
    assert result.attrs["skipped"] and "unknown to the tokenizer" in result.attrs["reason"]
    assert "unknown to the tokenizer" in caplog.text
    outputs = write_figures(weights, result, tmp_path, ["png"], dpi=50, model="residues")
    write_section(
        tmp_path / "s.json",
        models=["residues"],
        weights=[weights],
        results=[result],
        figures=[outputs],
        n_outliers=3,
    )
    from residual_dynamics.report.page import read_section_manifest

    section = read_section_manifest(tmp_path / "s.json")
    assert len(section.figures) == 2
    assert any("Laundry List skipped" in note for note in section.notes)


def test_non_gpt2_model_is_refused_with_the_key():
    from transformers import AutoModelForCausalLM

    from tiny_models import make_config

    model = AutoModelForCausalLM.from_config(make_config("llama", vocab_size=50))
    with pytest.raises(TalkingHeadsError, match=r"model_type 'gpt2'\), this one is 'llama'"):
        head_weights(model)
    with pytest.raises(TalkingHeadsError, match=r"talking_heads.models\[0\]"):
        check_gpt2(model.config, "talking_heads.models[0]")

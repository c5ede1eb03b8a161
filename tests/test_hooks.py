"""Hook points per architecture family: every recorded row equals an independent computation.

The references never use the recorder's hooks: block inputs come from HF's own
``output_hidden_states``, the pre-MLP state is rebuilt from the attention submodule's output
(read with a plain forward hook on a different module), and the final state is the last block's
output. Each sequence is run alone for the reference and in a padded batch for the recorder.
"""

from __future__ import annotations

import operator
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPTNeoXModel

from residual_dynamics.inputs.models import load_model
from residual_dynamics.recording.extract import Extractor, pad_token_id
from residual_dynamics.recording.hooks import (
    ARCHITECTURES,
    ResidualRecorder,
    UnsupportedArchitectureError,
    architecture_for,
    sublayer_names,
)
from tiny_models import FAMILIES, make_config, make_tokenizer, save_tiny_model

TEXTS = (
    "the a of to and in is it that was",
    "for on are",
    "with as his they be at one have this from or had by",
)
PARALLEL = ("gpt_neox", "falcon")
# family -> (attention submodule of a block, final norm of the base model)
ATTENTION = {
    "llama": "self_attn",
    "mistral": "self_attn",
    "qwen2": "self_attn",
    "gemma2": "self_attn",
    "gpt2": "attn",
    "bert": "attention",
    "gpt_neox": "attention",
    "falcon": "self_attention",
}
FINAL_NORM = {
    "llama": "norm",
    "mistral": "norm",
    "qwen2": "norm",
    "gemma2": "norm",
    "gpt2": "ln_f",
    "gpt_neox": "final_layer_norm",
    "falcon": "ln_f",
    "bert": None,  # post-norm: each block already ends in a LayerNorm, there is no final norm
}
ATOL = 1e-5


def first(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def blocks_of(model) -> nn.ModuleList:
    return operator.attrgetter(architecture_for(model.config).layers)(model.base_model)


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory):
    """One tiny model per family, saved and loaded through the same path a user's model takes."""
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    return load_model(request.param, {"path": str(path)}, device="cpu")


def token_ids(loaded_model) -> list[list[int]]:
    # The word-level tokenizer the model was saved with, not the reloaded one: transformers 5
    # reloads the qwen2 one as Qwen2Tokenizer, whose byte-level pre-tokenizer maps these words
    # to <unk>, and sequences of one repeated id would make a weak test.
    kind = "bert" if loaded_model.model.config.model_type == "bert" else "causal"
    tokenizer = make_tokenizer(kind)
    return [list(tokenizer(t)["input_ids"]) for t in TEXTS]


@torch.inference_mode()
def reference(model, seq: list[int], family: str) -> dict[str, torch.Tensor]:
    """Residual stream at every hook point of one sequence, run alone, (seq, d) per point."""
    blocks = blocks_of(model)
    attn_out: dict[int, torch.Tensor] = {}
    handles = []
    for index, block in enumerate(blocks):
        attention = getattr(block, ATTENTION[family])

        def keep(_module, _args, output, index=index):
            attn_out[index] = first(output)[0]

        handles.append(attention.register_forward_hook(keep))
    last_out: list[torch.Tensor] = []
    handles.append(blocks[-1].register_forward_hook(lambda _m, _a, o: last_out.append(first(o)[0])))
    try:
        out = model(torch.tensor([seq]), output_hidden_states=True, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    hidden = [h[0] for h in out.hidden_states]
    # hidden_states has the embedding output plus one entry per block.
    assert len(hidden) == len(blocks) + 1
    points: dict[str, torch.Tensor] = {}
    for layer, block in enumerate(blocks):
        # hidden_states[l] is the input of block l (hidden_states[0]: the embedding output).
        points[f"attn{layer}"] = hidden[layer]
        if family in ("llama", "mistral", "qwen2", "gpt2"):
            points[f"mlp{layer}"] = hidden[layer] + attn_out[layer]
        elif family == "gemma2":
            # Gemma 2 normalises the attention output before adding it back.
            points[f"mlp{layer}"] = hidden[layer] + block.post_attention_layernorm(attn_out[layer])
        elif family == "bert":
            # BertAttention's output is already LayerNorm(input + self-attention).
            points[f"mlp{layer}"] = attn_out[layer]
    points["final"] = last_out[0]
    points["_hf_last"] = hidden[-1]
    return points


def test_names_interleave_attention_and_mlp_points():
    sequential, parallel = ARCHITECTURES["llama"], ARCHITECTURES["falcon"]
    assert sublayer_names(3, sequential, include_final=True) == [
        "attn0", "mlp0", "attn1", "mlp1", "attn2", "mlp2", "final",
    ]  # fmt: skip
    assert sublayer_names(2, sequential, include_final=False) == ["attn0", "mlp0", "attn1", "mlp1"]
    assert sublayer_names(3, parallel, include_final=True) == ["attn0", "attn1", "attn2", "final"]


def test_recorded_rows_equal_an_independent_computation(loaded):
    """All positions of three sequences of different lengths, recorded in one padded batch."""
    family = loaded.model.config.model_type
    model = loaded.model
    seqs = token_ids(loaded)
    assert len({len(s) for s in seqs}) == len(seqs), "the batch must need padding"
    extractor = Extractor(model, pad_token_id(loaded.tokenizer))
    rows = extractor.run_batch(seqs, [list(range(len(s))) for s in seqs])

    n_layers = model.config.num_hidden_layers
    if family in PARALLEL:
        expected_names = [f"attn{i}" for i in range(n_layers)] + ["final"]
    else:
        expected_names = sublayer_names(n_layers, ARCHITECTURES["llama"], include_final=True)
    assert extractor.sublayers == expected_names
    assert rows.shape == (sum(map(len, seqs)), len(expected_names), model.config.hidden_size)
    assert rows.dtype == torch.float32

    start = 0
    for seq in seqs:
        ref = reference(model, seq, family)
        got = rows[start : start + len(seq)]
        start += len(seq)
        for index, name in enumerate(expected_names):
            torch.testing.assert_close(got[:, index], ref[name], atol=ATOL, rtol=1e-5, msg=name)
        # Adjacent points must be far apart, or a hook on the wrong module could still pass.
        for index in range(len(expected_names) - 1):
            gap = (ref[expected_names[index + 1]] - ref[expected_names[index]]).abs().max()
            assert gap > 100 * ATOL, (expected_names[index], expected_names[index + 1])


def test_final_point_is_the_input_of_the_final_norm(loaded):
    """HF's last hidden state is after the final norm (pre-norm) or the last block's output
    (BERT, post-norm): the recorded 'final' row is before that norm in every family."""
    family = loaded.model.config.model_type
    model = loaded.model
    seq = token_ids(loaded)[0]
    rows = Extractor(model, pad_token_id(loaded.tokenizer)).run_batch([seq], [range(len(seq))])
    final = rows[:, -1]
    hf_last = reference(model, seq, family)["_hf_last"]
    norm_path = FINAL_NORM[family]
    assert architecture_for(model.config).final_norm == norm_path
    if norm_path is None:
        torch.testing.assert_close(final, hf_last, atol=ATOL, rtol=1e-5)
    else:
        norm = operator.attrgetter(norm_path)(model.base_model)
        with torch.inference_mode():
            torch.testing.assert_close(norm(final), hf_last, atol=ATOL, rtol=1e-5)
        # ... and the norm does change it, so the two are not confused.
        assert (final - hf_last).abs().max() > 100 * ATOL


def test_include_final_false_drops_only_the_final_point(loaded):
    model = loaded.model
    seq = token_ids(loaded)[1]
    full = Extractor(model, pad_token_id(loaded.tokenizer)).run_batch([seq], [[len(seq) - 1]])
    short_extractor = Extractor(model, pad_token_id(loaded.tokenizer), include_final=False)
    short = short_extractor.run_batch([seq], [[len(seq) - 1]])
    assert "final" not in short_extractor.sublayers
    torch.testing.assert_close(short, full[:, :-1], atol=0, rtol=0)


def test_hooks_are_removed_after_a_batch(loaded):
    """The recorder must leave the model as it found it (other code reuses the model)."""
    model = loaded.model

    def n_hooks() -> int:
        return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())

    before = n_hooks()
    seq = token_ids(loaded)[0]
    Extractor(model, pad_token_id(loaded.tokenizer)).run_batch([seq], [[0]])
    assert n_hooks() == before


def test_sequential_gpt_neox_records_the_pre_mlp_state():
    """use_parallel_residual=False makes GPT-NeoX sequential: mlp{l} = input + attention out."""
    config = make_config("gpt_neox", vocab_size=64)
    config.use_parallel_residual = False
    torch.manual_seed(0)
    model = GPTNeoXModel(config).eval()
    seq = [2, 5, 9, 11, 40, 7, 3]
    extractor = Extractor(model, pad_id=0)
    assert extractor.sublayers == ["attn0", "mlp0", "attn1", "mlp1", "final"]
    rows = extractor.run_batch([seq], [list(range(len(seq)))])

    attn_out: dict[int, torch.Tensor] = {}
    handles = [
        block.attention.register_forward_hook(
            lambda _m, _a, o, i=i: attn_out.__setitem__(i, first(o)[0])
        )
        for i, block in enumerate(model.layers)
    ]
    with torch.inference_mode():
        hidden = model(torch.tensor([seq]), output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    for layer in range(config.num_hidden_layers):
        torch.testing.assert_close(rows[:, 2 * layer], hidden[layer][0], atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(
            rows[:, 2 * layer + 1], hidden[layer][0] + attn_out[layer], atol=ATOL, rtol=1e-5
        )


class _MadeUpModel(nn.Module):
    """A module whose config names an architecture the hook table does not know."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="made_up")
        self.layers = nn.ModuleList([nn.Linear(4, 4)])

    @property
    def base_model(self):
        return self


def test_unknown_architecture_says_where_to_add_it():
    with pytest.raises(UnsupportedArchitectureError) as info:
        ResidualRecorder(_MadeUpModel())
    message = str(info.value)
    assert "made_up" in message
    assert "hooks.py" in message and "ARCHITECTURES" in message
    # It is a ValueError, so callers that validate inputs catch it with the rest.
    assert isinstance(info.value, ValueError)


def test_sequential_falcon_is_refused_rather_than_mis_recorded():
    config = make_config("falcon", vocab_size=64)
    config.parallel_attn = False
    with pytest.raises(UnsupportedArchitectureError, match="ARCHITECTURES"):
        architecture_for(config)

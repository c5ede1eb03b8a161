"""The Laundry List task: prompts well formed for every N, scoring against known answers, and the
accuracy curve end to end on a tiny GPT-2 whose word-level tokenizer knows the task's words."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from residual_dynamics.recording.extract import resolve_add_bos
from residual_dynamics.studies.talking_heads import laundry_task as ll
from tiny_models import make_tokenizer

N_ALL = range(2, ll.MAX_ITEMS + 1)


def laundry_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: every object, opener and template word is one token; BOS first."""
    words = set(ll.OBJECTS)
    for text in (*ll.LIST_OPENERS, *ll.ORDER_OPENERS, ll.LIST_VERB, ll.ORDER_VERB):
        words.update(re.findall(r"[A-Za-z]+", text))
    words.update(["then", "the", "and", "a", "an", "some", "more"])
    vocab = ["<pad>", "<unk>", "<s>", "</s>", ",", ".", *sorted(words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=256,
    )


def tiny_gpt2(tokenizer, n_layers: int = 2, seed: int = 0, n_embd: int = 32, n_head: int = 4):
    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=n_embd,
        n_head=n_head,
        n_layer=n_layers,
        n_positions=256,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config).eval()


# --- the generator -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_items", N_ALL)
def test_prompts_are_well_formed_for_every_n(n_items):
    prompts = ll.generate_prompts(n_items, 40, seed=3)
    assert len(prompts) == 40
    for p in prompts:
        listed, order = ll.parse_prompt(p.text)
        assert listed == list(p.objects) and order == list(p.order)
        assert len(set(listed)) == n_items and set(listed) <= set(ll.OBJECTS)
        assert len(order) == n_items - 1 and len(set(order)) == n_items - 1
        assert set(order) == set(listed) - {p.missing}
        assert p.missing in listed and p.missing not in order
        assert p.list_opener in ll.LIST_OPENERS and p.order_opener in ll.ORDER_OPENERS
        assert p.text.endswith(", and then the") and p.last_mentioned == order[-1]
        for obj, start in zip(p.objects, p.object_starts, strict=True):
            assert p.text[start : start + len(obj)] == obj
            assert p.text[start + len(obj)] in ",. "
    # The missing item's position is balanced over the list: each position within one count.
    counts = np.bincount([p.missing_index for p in prompts], minlength=n_items)
    assert counts.max() - counts.min() <= 1


def test_generator_is_seeded():
    a = [p.text for p in ll.generate_prompts(5, 30, seed=0)]
    b = [p.text for p in ll.generate_prompts(5, 30, seed=0)]
    c = [p.text for p in ll.generate_prompts(5, 30, seed=1)]
    assert a == b and a != c
    # Different N from one seed are different draws, not prefixes of each other.
    assert ll.generate_prompts(4, 1, 0)[0].objects[:3] != ll.generate_prompts(3, 1, 0)[0].objects


def test_articles_and_openers_render_as_sentences():
    text, _ = ll.render(["apple", "cup", "orange"], ["orange", "apple"], " Today,", " First,")
    assert text == (
        "Today, I need to buy an apple, a cup, and an orange. First, I will buy the orange, "
        "then the apple, and then the"
    )
    text, _ = ll.render(["cup", "pen"], ["pen"], "", " I think")
    assert text == "I need to buy a cup and a pen. I think I will buy the pen, and then the"
    with pytest.raises(ValueError):
        ll.parse_prompt("I need to buy a apple. First, I will buy the pen, and then the")
    with pytest.raises(ValueError):
        ll.generate_prompts(ll.MAX_ITEMS + 1, 1, 0)


# --- scoring against known answers -------------------------------------------------------------


def stub_logits(prompts, tokens, pick, vocab=100):
    logits = np.zeros((len(prompts), vocab))
    for row, p in enumerate(prompts):
        logits[row, tokens[pick(p)]] = 1.0
    return logits


TOKENS = {obj: 10 + i for i, obj in enumerate(ll.OBJECTS)}


@pytest.mark.parametrize("n_items", [3, 7, 20])
def test_oracle_scores_everything_and_last_item_stub_nothing(n_items):
    prompts = ll.generate_prompts(n_items, 5 * n_items, seed=0)
    oracle = ll.summarise(
        ll.score_logits(prompts, stub_logits(prompts, TOKENS, lambda p: p.missing), TOKENS)
    )
    assert oracle["accuracy_vocab"] == 1.0 and oracle["accuracy_listed"] == 1.0
    assert oracle["last_item_rate"] == 0.0
    last = ll.summarise(
        ll.score_logits(prompts, stub_logits(prompts, TOKENS, lambda p: p.last_mentioned), TOKENS)
    )
    assert last["accuracy_vocab"] == 0.0 and last["accuracy_listed"] == 0.0
    assert last["last_item_rate"] == 1.0
    assert last["last_item_bias"] == pytest.approx(1 - 1 / n_items)
    # Always the first listed object: right exactly when the missing one is first (balanced: 1/N).
    first = ll.summarise(
        ll.score_logits(prompts, stub_logits(prompts, TOKENS, lambda p: p.objects[0]), TOKENS)
    )
    assert first["accuracy_listed"] == pytest.approx(1 / n_items)


def test_top1_over_vocabulary_differs_from_among_listed():
    """A non-object token on top: wrong over the vocabulary, still right among the listed."""
    prompts = ll.generate_prompts(4, 8, seed=0)
    logits = stub_logits(prompts, TOKENS, lambda p: p.missing)
    logits[:, 0] = 5.0
    outcome = ll.summarise(ll.score_logits(prompts, logits, TOKENS))
    assert outcome["accuracy_vocab"] == 0.0 and outcome["accuracy_listed"] == 1.0


# --- tokens and the model end to end -----------------------------------------------------------


def test_vocabulary_check():
    assert ll.check_vocabulary(laundry_tokenizer()) == []
    problems = ll.check_vocabulary(make_tokenizer("causal"))
    assert problems and "unknown to the tokenizer" in problems[0]

    class FirstLetter:  # every word's first token is its first letter: pen/pencil/... clash
        unk_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(text.strip()[0])]}

    clash = ll.check_vocabulary(FirstLetter())
    assert clash and "pencil" in clash[0] and "plate" in clash[0]


def test_encoded_object_positions_point_at_the_objects():
    tokenizer = laundry_tokenizer()
    prompts = ll.generate_prompts(6, 10, seed=2)
    tokens = ll.first_token_ids(tokenizer, ll.OBJECTS)
    for add_bos in (True, False):
        ids, positions = ll.encode_prompts(tokenizer, prompts, add_bos=add_bos)
        for seq, pos, p in zip(ids, positions, prompts, strict=True):
            assert seq[0] == tokenizer.bos_token_id  # the template adds it; never twice
            assert seq[1] != tokenizer.bos_token_id
            assert [seq[i] for i in pos] == [tokens[o] for o in p.objects]


def missing_by_counting(tokenizer):
    """An oracle 'model' that reads the token ids: the object seen once is the missing one."""
    object_ids = set(ll.first_token_ids(tokenizer, ll.OBJECTS).values())

    def next_logits(batch):
        logits = np.zeros((len(batch), len(tokenizer)))
        for row, seq in enumerate(batch):
            seen = [t for t in seq if t in object_ids]
            once = [t for t in seen if seen.count(t) == 1]
            assert len(once) == 1
            logits[row, once[0]] = 1.0
        return logits

    return next_logits


def test_accuracy_curve_with_an_oracle_and_a_length_limit():
    tokenizer = laundry_tokenizer()
    rows = ll.accuracy_curve(
        tokenizer,
        missing_by_counting(tokenizer),
        n_values=[3, 4, 20],
        prompts_per_n=12,
        seed=0,
        add_bos=True,
        max_tokens=60,
    )
    assert [r["n_items"] for r in rows] == [3, 4]  # N = 20 does not fit 60 tokens: skipped
    for r in rows:
        assert r["accuracy_vocab"] == 1.0 and r["accuracy_by_position"] == [1.0] * r["n_items"]


def test_accuracy_curve_on_a_tiny_gpt2_end_to_end():
    from residual_dynamics.studies.talking_heads.runner import Runner

    tokenizer = laundry_tokenizer()
    model = tiny_gpt2(tokenizer)
    runner = Runner(model, tokenizer.pad_token_id)
    rows = ll.accuracy_curve(
        tokenizer,
        runner,
        n_values=range(3, 21),
        prompts_per_n=6,
        seed=0,
        add_bos=resolve_add_bos(tokenizer, "auto"),
        batch_size=8,
        max_tokens=256,
    )
    assert [r["n_items"] for r in rows] == list(range(3, 21))
    for r in rows:
        assert 0 <= r["accuracy_listed"] <= 1 and 0 <= r["last_item_rate"] <= 1
    # Batched right-padded logits equal running each prompt alone.
    prompts = ll.generate_prompts(5, 3, seed=0)
    ids, _ = ll.encode_prompts(tokenizer, prompts, add_bos=False)
    batched = runner(ids)
    alone = np.concatenate([runner([s]) for s in ids])
    np.testing.assert_allclose(batched, alone, atol=1e-5)

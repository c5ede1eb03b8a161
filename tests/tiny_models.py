"""Tiny random models of each architecture family, saved with save_pretrained, for the tests.

No model hub here: every test model is built from a config, with a small word-level tokenizer
trained on a few sentences, and saved to a directory so it is loaded through the same
``from_pretrained(path)`` code path a user's model takes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedTokenizerFast

WORDS = (
    "the a of to and in is it that was for on are with as his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how said "
    "an each she which do their time if will way about many then them write would like so these"
).split()
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(0, len(WORDS), 7)]

FAMILIES = ("llama", "mistral", "qwen2", "gemma2", "gpt2", "bert", "gpt_neox", "falcon")
CAUSAL = tuple(f for f in FAMILIES if f != "bert")


def make_tokenizer(kind: str = "causal") -> PreTrainedTokenizerFast:
    """A word-level tokenizer: BOS-first for causal models, [CLS] ... [SEP] for BERT."""
    if kind == "bert":
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        unk = "[UNK]"
    else:
        special = ["<pad>", "<unk>", "<s>", "</s>"]
        unk = "<unk>"
    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=special))
    if kind == "bert":
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=64,
        )
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=64,
    )


def make_config(family: str, vocab_size: int, n_layers: int = 2):
    """A transformers config of the family with tiny dimensions."""
    from transformers import (
        BertConfig,
        FalconConfig,
        Gemma2Config,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    common = dict(vocab_size=vocab_size, num_hidden_layers=n_layers)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[family]
        return cls(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **common,
        )
    if family == "gemma2":
        return Gemma2Config(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=64,
            sliding_window=16,
            **common,
        )
    if family == "gpt2":
        return GPT2Config(
            n_embd=32, n_head=4, n_positions=64, n_layer=n_layers, vocab_size=vocab_size
        )
    if family == "bert":
        return BertConfig(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            max_position_embeddings=64,
            **common,
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            max_position_embeddings=64,
            use_parallel_residual=True,
            **common,
        )
    if family == "falcon":
        return FalconConfig(
            hidden_size=32,
            num_attention_heads=4,
            parallel_attn=True,
            new_decoder_architecture=False,
            max_position_embeddings=64,
            **common,
        )
    raise ValueError(family)


def save_tiny_model(family: str, path: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """Build a tiny random model of ``family`` with its tokenizer and save both at ``path``."""
    tokenizer = make_tokenizer("bert" if family == "bert" else "causal")
    config = make_config(family, vocab_size=len(tokenizer), n_layers=n_layers)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setattr(config, key, value)
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)

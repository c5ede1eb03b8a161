"""Models the workflow trains itself (``train:`` model sources).

A ``train:`` spec names the dataset it learns from (``train.data``) and the architecture:

* a task dataset (``task: {kind: affine, ...}``): a GPT-2-style decoder learns next-value
  prediction on sequences from the task's *training* (a, b) pairs, and is evaluated on the
  *held-out* pairs (accuracy per position);
* a text dataset (e.g. the builtin ``pydoc_topics`` corpus): a language model (``llama`` for the
  paper's exact hook points, or ``gpt2``) with a byte-level BPE tokenizer trained with
  ``tokenizers`` on the training texts; a seeded share of the texts is held out for the
  validation perplexity.

The result is a directory written by ``save_pretrained`` (model and tokenizer) plus
``training.json`` (settings, history, final metrics), so every other rule loads it like any
Hugging Face model (``models.load_model``). ``init: random`` gives the untrained twin: the same
architecture and tokenizer, saved without training (it never waits on the trained model).

Determinism: the weights are initialised from ``train.seed``; the batch of step ``s`` is drawn
from a generator seeded with ``(seed, s)``, so a run resumed from a checkpoint sees exactly the
batches an uninterrupted one would; there is no dropout by default. Checkpoints (model,
optimiser, history) are written every ``checkpoint_every`` steps with ``torch.save`` and read
with ``torch.load(weights_only=True)``; a checkpoint is used only when its spec hash matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from residual_dynamics.config.schema import training_threads
from residual_dynamics.inputs.tasks import AffineTask, task_tokenizer
from residual_dynamics.io.atomic import move_into_place, partial_path
from residual_dynamics.io.checkpoints import load_tensors

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
ARCHITECTURES = ("gpt2", "llama")


class TrainingError(ValueError):
    """A train spec cannot be used; the message names the key."""


@dataclass(frozen=True)
class TrainSettings:
    """The ``train:`` block of a model spec, defaults filled: the schema's own defaults
    (``tests/test_training.py`` keeps the two in step), so that a spec built in Python trains
    as the workflow's would."""

    data: str
    architecture: str = "gpt2"
    n_layers: int = 3
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    context: int = 32
    vocab_size: int = 2048
    steps: int = 400
    batch_size: int = 128
    micro_batches: int = 4
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    dropout: float = 0.0
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 100
    validation_fraction: float = 0.1
    n_eval: int = 1000

    @classmethod
    def from_spec(cls, train: dict, where: str = "train") -> TrainSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(train) - known)
        if unknown:
            raise TrainingError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        if "data" not in train:
            raise TrainingError(f"{where}.data: name the dataset to train on")
        settings = cls(**train)
        if settings.architecture not in ARCHITECTURES:
            raise TrainingError(
                f"{where}.architecture: {settings.architecture!r} is not one of {ARCHITECTURES}"
            )
        if settings.d_model % settings.n_heads:
            raise TrainingError(
                f"{where}.d_model ({settings.d_model}) must be a multiple of "
                f"{where}.n_heads ({settings.n_heads})"
            )
        return settings

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# data


class TaskData:
    """Training batches from the task's training pairs; evaluation on held-out pairs."""

    kind = "task"

    def __init__(self, task: AffineTask, settings: TrainSettings):
        self.task = task
        self.settings = settings
        self.train_pairs, self.heldout_pairs = task.split()
        self.tokenizer = task_tokenizer(task, max_length=settings.context)
        if task.length + 1 > settings.context:
            raise TrainingError(
                f"train.context ({settings.context}) is shorter than a task sequence with BOS "
                f"({task.length + 1} tokens); raise train.context"
            )
        rng = np.random.default_rng([settings.seed, 2**31 - 1])
        self.eval_values, _ = task.generate(self.heldout_pairs, settings.n_eval, rng)

    def ids(self, values: np.ndarray) -> torch.Tensor:
        bos = self.tokenizer.bos_token_id
        offset = self.tokenizer.convert_tokens_to_ids("0")
        return torch.from_numpy(
            np.concatenate([np.full((len(values), 1), bos), values + offset], 1)
        )

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.settings.seed, step])
        values, _ = self.task.generate(self.train_pairs, self.settings.batch_size, rng)
        ids = self.ids(values)
        return ids, torch.ones_like(ids)

    def micro_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.batch(step)]  # equal lengths: nothing to gain from groups

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        ids = self.ids(self.eval_values)
        per_position = sequence_accuracy(model, ids)
        return {
            "accuracy_per_position": per_position.tolist(),
            "accuracy_from_3": float(per_position[3:].mean()),
        }


class TextData:
    """Whole passages (BOS first, as extraction feeds them), a seeded validation share held out."""

    kind = "text"

    def __init__(self, texts: list[str], settings: TrainSettings):
        self.settings = settings
        order = np.random.default_rng([settings.seed, 1]).permutation(len(texts))
        n_val = max(1, round(settings.validation_fraction * len(texts)))
        if len(texts) - n_val < 1:
            raise TrainingError(
                f"train.data has {len(texts)} texts: too few to hold out "
                f"{settings.validation_fraction:.0%} for validation"
            )
        self.val_texts = [texts[i] for i in np.sort(order[:n_val])]
        self.train_texts = [texts[i] for i in np.sort(order[n_val:])]
        self.tokenizer = bpe_tokenizer(self.train_texts, settings.vocab_size, settings.context)
        self.train_ids = self._encode(self.train_texts)
        self.val_ids = self._encode(self.val_texts)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [
            self.tokenizer(t, add_special_tokens=True)["input_ids"][: self.settings.context]
            for t in texts
        ]

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids, mask

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pad([self.train_ids[i] for i in self.pick(step)])

    def pick(self, step: int) -> np.ndarray:
        """The texts of batch ``step``: seeded draws, a function of (seed, step) alone."""
        rng = np.random.default_rng([self.settings.seed, step])
        return rng.integers(0, len(self.train_ids), size=self.settings.batch_size)

    def micro_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batch ``step``'s texts sorted by length and cut into ``micro_batches`` groups, each
        padded to its own longest: the same texts as :meth:`batch`, with less padding."""
        pick = self.pick(step)
        by_length = pick[np.argsort([len(self.train_ids[i]) for i in pick], kind="stable")]
        groups = np.array_split(by_length, min(self.settings.micro_batches, len(pick)))
        return [self._pad([self.train_ids[i] for i in group]) for group in groups]

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        total, count = 0.0, 0
        for start in range(0, len(self.val_ids), 64):
            ids, mask = self._pad(self.val_ids[start : start + 64])
            loss, n = causal_lm_loss(model, ids, mask, reduction="sum")
            total += float(loss)
            count += n
        nll = total / max(count, 1)
        return {"validation_loss": nll, "validation_perplexity": math.exp(nll)}


def bpe_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """Byte-level BPE trained on ``texts`` (deterministic), BOS prepended like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
    )


def make_data(settings: TrainSettings, data_spec: dict, texts: list[str] | None):
    """The training data of a spec: a task (from its spec) or texts (the prepared dataset)."""
    if "task" in data_spec:
        return TaskData(
            AffineTask.from_spec(data_spec["task"], f"datasets.{settings.data}.task"), settings
        )
    if not texts:
        raise TrainingError(f"train.data: dataset {settings.data!r} holds no texts")
    return TextData(list(texts), settings)


# --------------------------------------------------------------------------------------------
# model


def model_config(settings: TrainSettings, tokenizer):
    """A transformers config of the architecture, sized by the settings and the tokenizer."""
    from transformers import GPT2Config, LlamaConfig

    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id
        if tokenizer.eos_token_id is not None
        else tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    if settings.architecture == "gpt2":
        return GPT2Config(
            n_positions=settings.context,
            n_embd=settings.d_model,
            n_layer=settings.n_layers,
            n_head=settings.n_heads,
            n_inner=settings.d_mlp,
            resid_pdrop=settings.dropout,
            embd_pdrop=settings.dropout,
            attn_pdrop=settings.dropout,
            # GPT-2's tanh-approximated GELU (gelu_new's function) as one fused kernel: a step of
            # the default affine model 0.148 s -> 0.121 s on one thread.
            activation_function="gelu_pytorch_tanh",
            **ids,
        )
    return LlamaConfig(
        hidden_size=settings.d_model,
        intermediate_size=settings.d_mlp,
        num_hidden_layers=settings.n_layers,
        num_attention_heads=settings.n_heads,
        num_key_value_heads=settings.n_heads,
        max_position_embeddings=settings.context,
        attention_dropout=settings.dropout,
        **ids,
    )


def build_model(settings: TrainSettings, tokenizer, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        model_config(settings, tokenizer), dtype=torch.float32, attn_implementation="eager"
    )


def causal_lm_loss(model, ids: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"):
    """Next-token cross-entropy over real (non-pad) targets; (loss, number of targets)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction
    )
    return loss, int((targets != -100).sum())


def accumulate_gradients(model, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Backpropagate the mean next-token loss over all real targets of ``parts`` (the groups of
    one batch): each group's summed loss over the batch's target count, so the gradients add up
    to the whole batch's. Returns that mean loss (detached)."""
    if len(parts) == 1:
        loss, _ = causal_lm_loss(model, *parts[0])
        loss.backward()
        return loss.detach()
    n_targets = sum(int(mask[:, 1:].sum()) for _, mask in parts)
    total = torch.zeros(())
    for ids, mask in parts:
        loss_sum, _ = causal_lm_loss(model, ids, mask, reduction="sum")
        (loss_sum / n_targets).backward()
        total += loss_sum.detach()
    return total / n_targets


@torch.no_grad()
def sequence_accuracy(model, ids: torch.Tensor, batch: int = 512) -> np.ndarray:
    """Top-1 accuracy of predicting each value of BOS-first sequences: entry i is x_i."""
    hits = []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        logits = model(input_ids=chunk).logits[:, :-1]
        hits.append((logits.argmax(-1) == chunk[:, 1:]).float())
    return torch.cat(hits).mean(0).numpy()


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimizer(model, settings: TrainSettings):
    # No weight decay on biases, norms and embeddings' position rows: the usual GPT recipe.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and "wpe" not in name else no_decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        betas=(0.9, 0.98),
    )


# --------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, step: int, model, optimizer, history: list, digest: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    torch.save(
        {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": json.dumps(history),
            "digest": digest,
            # Dropout draws from torch's generator: restoring it keeps a resumed run identical.
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, optimizer, digest: str) -> tuple[int, list]:
    """Restore a checkpoint of the same spec: (next step, history); (0, []) if none applies."""
    if not path.exists():
        return 0, []
    state = load_tensors(path)
    if state.get("digest") != digest:
        log.warning("checkpoint %s is of other settings; starting afresh", path)
        return 0, []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming from %s at step %d", path, state["step"])
    return int(state["step"]), json.loads(state["history"])


# --------------------------------------------------------------------------------------------
# the rule's entry point


def train_model(
    name: str,
    spec: dict,
    data_spec: dict,
    texts: list[str] | None,
    out_dir: Path | str,
    checkpoint_dir: Path | str | None = None,
    threads: int = 1,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Train (or, for ``init: random``, only build) model ``name`` and save it at ``out_dir``.

    ``stop_after`` ends the run early after that many steps, leaving only the checkpoint (used
    to test resumption). Returns the summary written to ``training.json``.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    settings = TrainSettings.from_spec(spec["train"], f"models.{name}.train")
    torch.set_num_threads(training_threads(settings.d_model, threads))
    torch.use_deterministic_algorithms(True)
    started, cpu_started = time.perf_counter(), time.process_time()
    data = make_data(settings, data_spec, texts)
    untrained = spec.get("init", "pretrained") == "random"
    seed = spec.get("init_seed", 0) if untrained else settings.seed
    model = build_model(settings, data.tokenizer, seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "models.%s: %s, %d layers, d_model %d, %d heads, %d parameters, data %s (%s)",
        name,
        settings.architecture,
        settings.n_layers,
        settings.d_model,
        settings.n_heads,
        n_params,
        settings.data,
        data.kind,
    )
    history: list[dict] = []
    checkpoint = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
    if not untrained:
        optimizer = _optimizer(model, settings)
        start = 0
        if checkpoint is not None:
            start, history = load_checkpoint(checkpoint, model, optimizer, settings.digest())
        model.train()
        bar = tqdm(
            total=settings.steps,
            initial=start,
            desc=f"train {name}",
            file=sys.stderr,
            mininterval=1.0,
            disable=not progress,
        )
        end = settings.steps if stop_after is None else min(settings.steps, start + stop_after)
        for step in range(start, end):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, settings)
            optimizer.zero_grad(set_to_none=True)
            loss = accumulate_gradients(model, data.micro_batches(step))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            postfix = {"loss": f"{loss.item():.3f}"}
            if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
                model.eval()
                metrics = data.evaluate(model)
                model.train()
                record = {"step": step + 1, "loss": float(loss.item()), **_headline(metrics)}
                history.append(record)
                postfix.update({k: f"{v:.3f}" for k, v in _headline(metrics).items()})
                log.info("models.%s step %d: %s", name, step + 1, record)
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            done = step + 1
            if (
                checkpoint is not None
                and (done % settings.checkpoint_every == 0 or done == end)
                and done < settings.steps
            ):
                save_checkpoint(checkpoint, done, model, optimizer, history, settings.digest())
        bar.close()
        if end < settings.steps:
            return {"stopped_at": end}
    model.eval()
    metrics = data.evaluate(model)
    summary = {
        "model": name,
        "init": "random" if untrained else "trained",
        "seed": seed,
        "settings": asdict(settings),
        "data_kind": data.kind,
        "n_parameters": n_params,
        "threads": threads,
        "intra_op_threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - started,
        # CPU time is the fairer cost on a shared machine (wall time counts others' jobs).
        "cpu_seconds": time.process_time() - cpu_started,
        "metrics": metrics,
        "history": history,
        "weights_sha256": weights_digest(model),
        "torch": torch.__version__,
    }
    summary["vocab_size"] = len(data.tokenizer)
    if isinstance(data, TaskData):
        summary["bayes_accuracy_per_position"] = data.task.bayes_accuracy(
            data.eval_values[:200]
        ).tolist()
    else:
        summary["n_train_texts"] = len(data.train_texts)
        summary["n_validation_texts"] = len(data.val_texts)
    log.info("models.%s: final %s", name, _headline(metrics))
    tmp = partial_path(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    data.tokenizer.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(summary, indent=1))
    move_into_place(tmp, out_dir)
    if checkpoint is not None and checkpoint.parent.exists():
        shutil.rmtree(checkpoint.parent)
    return summary


def weights_digest(model) -> str:
    """sha256 over every parameter and buffer, in name order: equal digests, equal weights."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _headline(metrics: dict) -> dict:
    keys = ("accuracy_from_3", "validation_perplexity")
    return {k: metrics[k] for k in keys if k in metrics}

"""The Laundry List task (Merullo, Eickhoff & Pavlick, arXiv 2406.09519): recall the one missing item.

Sentence 1 lists N objects to buy; sentence 2 gives the buying order of N - 1 of them, shuffled,
and ends where the missing object must come next::

     Today, I need to buy a cup, an apple, and a pencil. First, I will buy the pencil, then the
     cup, and then the                                              -> " apple"

The objects and openers are the reference lists. The paper's exact sentence template is not
stated in the material we have; the one above is ours and is the same for every N, so accuracy
falls with N only because the list grows.

Scoring works on next-token logits at the last position, so it can be checked with stub "models"
(a function that always gives the right answer scores 100 %, one that always gives the last
mentioned item scores 0 % with a last-item rate of 1):

- ``accuracy_vocab``: the top-1 token over the whole vocabulary is the first token of the missing
  object (the paper's measure; GPT-2 small at N = 3: 64 %);
- ``accuracy_listed``: the arg-max among the first tokens of the N listed objects is the missing one;
- ``last_item_rate``: the arg-max among the listed objects is the object mentioned last in the
  prompt (the recency bias; chance 1/N). ``last_item_bias`` is that rate minus 1/N.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

OBJECTS = (
    "pencil notebook pen cup plate jug mug puzzle textbook leash necklace bracelet bottle ball "
    "envelope lighter bowl apple pear banana orange steak"
).split()
# Sentence-1 openers (before "I need to buy ...") and sentence-2 openers (before "I will buy ...").
LIST_OPENERS = (" Today,", " Tonight,", " Tomorrow,", "")
ORDER_OPENERS = (" First,", " When I go,", " I think")
LIST_VERB = " I need to buy"
ORDER_VERB = " I will buy"
MAX_ITEMS = len(OBJECTS)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class LaundryPrompt:
    """One prompt; ``objects`` in sentence-1 order, ``order`` the N - 1 items of sentence 2."""

    text: str
    objects: tuple[str, ...]
    order: tuple[str, ...]
    missing: str
    list_opener: str
    order_opener: str
    # Character offset of each object (sentence 1) in ``text``: the mover head's targets.
    object_starts: tuple[int, ...] = field(default=())

    @property
    def n_items(self) -> int:
        return len(self.objects)

    @property
    def missing_index(self) -> int:
        """Position (0-based) of the missing object in the sentence-1 list."""
        return self.objects.index(self.missing)

    @property
    def last_mentioned(self) -> str:
        return self.order[-1]


def render(objects: Sequence[str], order: Sequence[str], list_opener: str, order_opener: str):
    """The prompt text and the character offset of each sentence-1 object."""
    text = (list_opener + LIST_VERB).lstrip()
    starts = []
    for i, obj in enumerate(objects):
        if i == len(objects) - 1:
            text += "," * (len(objects) > 2) + " and"
        elif i > 0:
            text += ","
        text += f" {article(obj)} "
        starts.append(len(text))
        text += obj
    text += "." + order_opener + ORDER_VERB
    for i, obj in enumerate(order):
        text += " the " if i == 0 else ", then the "
        text += obj
    text += ", and then the"
    return text, tuple(starts)


def generate_prompts(
    n_items: int,
    n_prompts: int,
    seed: int,
    objects: Sequence[str] = OBJECTS,
    list_openers: Sequence[str] = LIST_OPENERS,
    order_openers: Sequence[str] = ORDER_OPENERS,
) -> list[LaundryPrompt]:
    """``n_prompts`` seeded prompts with ``n_items`` distinct objects each.

    The missing object's list position is balanced (cycled through 0..N-1, then shuffled) so
    accuracy by position is not confounded with sampling noise; objects and openers are drawn
    uniformly.
    """
    if not 2 <= n_items <= len(objects):
        raise ValueError(f"n_items must be in 2..{len(objects)} (objects available), got {n_items}")
    rng = np.random.default_rng([seed, n_items])
    positions = np.resize(np.arange(n_items), n_prompts)
    rng.shuffle(positions)
    prompts = []
    for position in positions:
        chosen = [objects[i] for i in rng.choice(len(objects), size=n_items, replace=False)]
        missing = chosen[int(position)]
        order = [o for o in chosen if o != missing]
        rng.shuffle(order)
        list_opener = list_openers[rng.integers(len(list_openers))]
        order_opener = order_openers[rng.integers(len(order_openers))]
        text, starts = render(chosen, order, list_opener, order_opener)
        prompts.append(
            LaundryPrompt(
                text=text,
                objects=tuple(chosen),
                order=tuple(order),
                missing=missing,
                list_opener=list_opener,
                order_opener=order_opener,
                object_starts=starts,
            )
        )
    return prompts


_PROMPT = re.compile(
    r"^(?P<lo>(?:Today|Tonight|Tomorrow), )?I need to buy (?P<list>.+)\."
    r"(?P<oo> First,| When I go,| I think) I will buy the (?P<order>.+), and then the$"
)


def parse_prompt(text: str) -> tuple[list[str], list[str]]:
    """(sentence-1 objects, sentence-2 order) read back from a prompt's text, or ValueError.

    An independent reading of the template, used by the tests to check the generator.
    """
    match = _PROMPT.match(text)
    if not match:
        raise ValueError(f"not a Laundry List prompt: {text!r}")
    items = re.split(r", and |, | and ", match["list"])
    listed = []
    for item in items:
        art, _, obj = item.partition(" ")
        if art != article(obj):
            raise ValueError(f"wrong article in {item!r}")
        listed.append(obj)
    order = match["order"].split(", then the ")
    return listed, order


# --- tokens ------------------------------------------------------------------------------------


class VocabularyError(ValueError):
    """The tokenizer cannot encode the task's words as known tokens."""


def first_token_ids(tokenizer, words: Sequence[str]) -> dict[str, int]:
    """The first token of `` word`` (with its leading space, as it follows "the" in a prompt)."""
    return {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words}


def check_vocabulary(tokenizer, objects: Sequence[str] = OBJECTS) -> list[str]:
    """Problems that stop the task on this tokenizer (empty when it can run).

    A word-level tokenizer of residues (the affine-recurrence model) maps every object to its
    unknown token; two objects sharing a first token would make the answer ambiguous.
    """
    problems = []
    unk = getattr(tokenizer, "unk_token_id", None)
    words = set(objects)
    for opener in (*LIST_OPENERS, *ORDER_OPENERS, LIST_VERB, ORDER_VERB, " then the and a an"):
        words.update(re.findall(r"[A-Za-z]+", opener))
    unknown = sorted(
        w
        for w in words
        if not (ids := tokenizer(" " + w, add_special_tokens=False)["input_ids"])
        or (unk is not None and unk in ids)
    )
    if unknown:
        shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        problems.append(
            f"{len(unknown)} of the task's words are unknown to the tokenizer ({shown})"
        )
        return problems
    first = first_token_ids(tokenizer, objects)
    by_token: dict[int, list[str]] = {}
    for word, token in first.items():
        by_token.setdefault(token, []).append(word)
    clashes = [ws for ws in by_token.values() if len(ws) > 1]
    if clashes:
        problems.append(
            "objects share a first token, so the answer would be ambiguous: "
            + "; ".join("/".join(ws) for ws in clashes)
        )
    return problems


def encode_prompts(tokenizer, prompts: Sequence[LaundryPrompt], add_bos: bool):
    """Token ids per prompt and the token index of each sentence-1 object's first token."""
    ids, object_positions = [], []
    for prompt in prompts:
        encoded = tokenizer(prompt.text, add_special_tokens=True, return_offsets_mapping=True)
        seq = list(encoded["input_ids"])
        offsets = [tuple(o) for o in encoded["offset_mapping"]]
        if add_bos and (not seq or seq[0] != tokenizer.bos_token_id):
            seq = [tokenizer.bos_token_id, *seq]
            offsets = [(0, 0), *offsets]
        positions = []
        for start in prompt.object_starts:
            # The token whose span covers the object's first character (BPE tokens may carry the
            # leading space, word-level ones do not; both cover it).
            hit = [i for i, (a, b) in enumerate(offsets) if a <= start < b]
            if not hit:
                raise VocabularyError(f"no token covers the object at {start} in {prompt.text!r}")
            positions.append(hit[0])
        ids.append(seq)
        object_positions.append(positions)
    return ids, object_positions


# --- scoring -----------------------------------------------------------------------------------


def score_logits(
    prompts: Sequence[LaundryPrompt], logits: np.ndarray, object_tokens: dict[str, int]
) -> dict[str, np.ndarray]:
    """Per-prompt outcomes from next-token logits (n_prompts, vocab) at the last position."""
    logits = np.asarray(logits)
    if logits.shape[0] != len(prompts):
        raise ValueError(f"{logits.shape[0]} logit rows for {len(prompts)} prompts")
    top = logits.argmax(axis=1)
    correct_vocab = np.empty(len(prompts), bool)
    correct_listed = np.empty(len(prompts), bool)
    picks_last = np.empty(len(prompts), bool)
    picked_index = np.empty(len(prompts), np.int64)
    for row, prompt in enumerate(prompts):
        tokens = [object_tokens[o] for o in prompt.objects]
        pick = int(np.argmax(logits[row, tokens]))
        picked_index[row] = pick
        correct_vocab[row] = top[row] == object_tokens[prompt.missing]
        correct_listed[row] = prompt.objects[pick] == prompt.missing
        picks_last[row] = prompt.objects[pick] == prompt.last_mentioned
    return {
        "correct_vocab": correct_vocab,
        "correct_listed": correct_listed,
        "picks_last": picks_last,
        "picked_index": picked_index,
        "missing_index": np.array([p.missing_index for p in prompts]),
        "n_items": np.array([p.n_items for p in prompts]),
    }


def summarise(outcomes: dict[str, np.ndarray]) -> dict[str, float]:
    n = outcomes["n_items"]
    return {
        "accuracy_vocab": float(outcomes["correct_vocab"].mean()),
        "accuracy_listed": float(outcomes["correct_listed"].mean()),
        "last_item_rate": float(outcomes["picks_last"].mean()),
        "last_item_bias": float(outcomes["picks_last"].mean() - np.mean(1.0 / n)),
        "chance_listed": float(np.mean(1.0 / n)),
        "n_prompts": int(n.size),
    }


LogitsFn = Callable[[list[list[int]]], np.ndarray]


def evaluate(
    prompts: Sequence[LaundryPrompt],
    ids: Sequence[Sequence[int]],
    next_logits: LogitsFn,
    object_tokens: dict[str, int],
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Score ``prompts`` with ``next_logits`` (token-id lists -> last-position logits)."""
    rows = []
    for start in range(0, len(ids), batch_size):
        rows.append(np.asarray(next_logits([list(s) for s in ids[start : start + batch_size]])))
    return score_logits(prompts, np.concatenate(rows), object_tokens)


def accuracy_curve(
    tokenizer,
    next_logits: LogitsFn,
    *,
    n_values: Sequence[int],
    prompts_per_n: int,
    seed: int,
    add_bos: bool,
    batch_size: int = 32,
    max_tokens: int | None = None,
) -> list[dict]:
    """Accuracy and last-item rate per N; N whose prompts exceed ``max_tokens`` are skipped."""
    object_tokens = first_token_ids(tokenizer, OBJECTS)
    rows = []
    for n_items in n_values:
        prompts = generate_prompts(n_items, prompts_per_n, seed)
        ids, _ = encode_prompts(tokenizer, prompts, add_bos)
        longest = max(len(s) for s in ids)
        if max_tokens is not None and longest > max_tokens:
            log.warning(
                "laundry list N = %d skipped: prompts reach %d tokens, the model takes %d",
                n_items,
                longest,
                max_tokens,
            )
            continue
        outcomes = evaluate(prompts, ids, next_logits, object_tokens, batch_size)
        summary = summarise(outcomes)
        # NaN where no prompt had its missing item at that position (prompts_per_n < N).
        hits = np.bincount(
            outcomes["missing_index"], weights=outcomes["correct_vocab"], minlength=n_items
        )
        counts = np.bincount(outcomes["missing_index"], minlength=n_items)
        by_position = [
            float(h / c) if c else float("nan") for h, c in zip(hits, counts, strict=True)
        ]
        rows.append({"n_items": n_items, **summary, "accuracy_by_position": by_position})
        log.info(
            "laundry list N = %d: top-1 %.3f, among listed %.3f, last-item rate %.3f",
            n_items,
            summary["accuracy_vocab"],
            summary["accuracy_listed"],
            summary["last_item_rate"],
        )
    return rows

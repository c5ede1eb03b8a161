"""Prepare text datasets for activation extraction.

A dataset spec (one entry of the ``datasets`` config section, already validated by the JSON
schema with its defaults filled in) names exactly one source:

* ``builtin: pydoc_topics`` -- prose paragraphs of the Python reference manual that ships with
  CPython (``pydoc_data.topics``), so the workflow has a real corpus with no download;
* ``hf: {...}`` -- a Hugging Face dataset loaded with ``datasets.load_dataset``;
* ``file: {...}`` -- a local txt / jsonl / parquet file;
* ``variant_of: <name>`` -- the same texts as another dataset (used for the token-shuffled
  control, ``shuffle_tokens: true``);
* ``task: {...}`` -- generated sequences of a synthetic task (``tasks``: affine recurrences), one
  text per sequence; the length filter, dedupe and ``n_samples`` do not apply (the task block
  says how many), and the frame carries each sequence's (a, b).

The texts are stripped, empty ones dropped, optionally deduplicated, filtered on length
(``min_chars < len(text) < max_chars``, strict as in the paper) and optionally subsampled with a
seeded RNG. The result is a DataFrame with one row per text, written atomically to parquet with
the provenance metadata stored in the file's key-value metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

METADATA_KEY = b"residual_dynamics"
SOURCE_KEYS = ("builtin", "hf", "file", "variant_of", "task")
BUILTINS = ("pydoc_topics",)
COLUMNS = ("text_id", "text", "n_chars", "shuffle_tokens", "shuffle_seed")

_OFFLINE_HINT = (
    "if this machine has no network: pre-download it, set HF_DATASETS_OFFLINE=1 with a filled "
    "cache, or use `file:` with a local copy"
)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# reST section underlines ("*****", "=====") survive in pydoc's plain-text rendering and would
# otherwise be glued onto the heading text.
_UNDERLINE = re.compile(r"^\s*([*=\-~^#\"'`+])\1{2,}\s*$")
_SUFFIX_FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class DatasetError(ValueError):
    """A dataset cannot be prepared as configured; the message names the config key to fix."""


# --------------------------------------------------------------------------------------------
# sources


def _source_key(name: str, spec: dict) -> str:
    present = [k for k in SOURCE_KEYS if spec.get(k) is not None]
    if len(present) != 1:
        raise DatasetError(
            f"datasets.{name}: exactly one source key among {', '.join(SOURCE_KEYS)} is "
            f"required, found {present or 'none'}"
        )
    return present[0]


def _clean(texts: Sequence[Any], name: str, key: str) -> list[str]:
    """Strip every text and drop empty ones; reject values that are not strings."""
    out: list[str] = []
    for i, t in enumerate(texts):
        if t is None:
            continue
        if not isinstance(t, str):
            raise DatasetError(
                f"datasets.{name}: value #{i} of `{key}` is a {type(t).__name__}, not a string; "
                f"point `{key}` at a text column"
            )
        t = t.strip()
        if t:
            out.append(t)
    return out


def _is_prose(text: str, lines: list[str]) -> bool:
    """Sentences, not code: the manual indents both prose (method descriptions) and code blocks, so
    indentation cannot tell them apart; grammar, examples and symbol-heavy lines can."""
    if any(ln.lstrip().startswith((">>>", "...")) for ln in lines) or "::=" in text:
        return False
    if not text.endswith((".", "?", "!", ":", ".)", '."')) or len(text.split()) < 8:
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in text)
    return letters >= 0.85 * len(text)


def pydoc_passages() -> list[str]:
    """Prose paragraphs of CPython's bundled reference manual, in sorted-topic order."""
    from pydoc_data.topics import topics

    passages: list[str] = []
    for key in sorted(topics):
        for para in _BLANK_LINE.split(topics[key].expandtabs()):
            lines = [ln for ln in para.split("\n") if ln.strip() and not _UNDERLINE.match(ln)]
            text = " ".join(" ".join(lines).split())
            if lines and _is_prose(text, lines):
                passages.append(text)
    return passages


def _load_hf(name: str, hf: dict) -> list[str]:
    import datasets as hf_datasets

    path = hf.get("path")
    config_name = hf.get("name")
    split = hf.get("split", "train")
    text_field = hf.get("text_field", "text")
    what = f"Hugging Face dataset {path!r} (name={config_name!r}, split={split!r})"
    try:
        ds = hf_datasets.load_dataset(
            path,
            config_name,
            split=split,
            data_files=hf.get("data_files"),
            revision=hf.get("revision"),
        )
    except Exception as e:  # datasets raises a zoo of types; all mean "could not load"
        raise DatasetError(
            f"datasets.{name}: loading {what} failed: {type(e).__name__}: {e}. "
            f"Check datasets.{name}.hf.path / .name / .split / .data_files; {_OFFLINE_HINT}"
        ) from e
    if not isinstance(ds, hf_datasets.Dataset):
        raise DatasetError(
            f"datasets.{name}: {what} did not load as a single split "
            f"(got {type(ds).__name__}); set datasets.{name}.hf.split"
        )
    if text_field not in ds.column_names:
        raise DatasetError(
            f"datasets.{name}: {what} has no column {text_field!r}; available columns: "
            f"{ds.column_names}. Set datasets.{name}.hf.text_field to one of them"
        )
    return _clean(list(ds[text_field]), name, f"datasets.{name}.hf.text_field")


def _load_file(name: str, spec: dict) -> list[str]:
    path = Path(spec["path"])
    fmt = spec.get("format", "auto")
    text_field = spec.get("text_field", "text")
    split_on = spec.get("split_on", "line")
    field_key = f"datasets.{name}.file.text_field"
    if not path.is_file():
        raise DatasetError(
            f"datasets.{name}.file.path: no such file {str(path)!r} "
            f"(resolved from {os.getcwd()!r}); fix the path or create the file"
        )
    if fmt == "auto":
        fmt = _SUFFIX_FORMATS.get(path.suffix.lower(), "")
        if not fmt:
            raise DatasetError(
                f"datasets.{name}.file.format: cannot infer the format of {str(path)!r} from "
                f"its extension; set it to txt, jsonl or parquet"
            )

    if fmt == "txt":
        content = path.read_text(encoding="utf-8")
        if split_on == "line":
            texts = content.splitlines()
        elif split_on == "blank_line":
            texts = _BLANK_LINE.split(content.replace("\r\n", "\n"))
        else:
            raise DatasetError(
                f"datasets.{name}.file.split_on: {split_on!r} is not one of line, blank_line"
            )
        return _clean(texts, name, f"datasets.{name}.file.path")
    if fmt == "jsonl":
        texts = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(
                        f"datasets.{name}.file.path: {str(path)!r} line {lineno} is not JSON "
                        f"({e}); the file must hold one JSON object per line"
                    ) from e
                if not isinstance(record, dict) or text_field not in record:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise DatasetError(
                        f"datasets.{name}: {str(path)!r} line {lineno} has no field "
                        f"{text_field!r} (it has {keys}); set {field_key}"
                    )
                texts.append(record[text_field])
        return _clean(texts, name, field_key)
    if fmt == "parquet":
        columns = pq.read_schema(path).names
        if text_field not in columns:
            raise DatasetError(
                f"datasets.{name}: {str(path)!r} has no column {text_field!r}; available "
                f"columns: {columns}. Set {field_key} to one of them"
            )
        texts = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
        return _clean(texts, name, field_key)
    raise DatasetError(
        f"datasets.{name}.file.format: {fmt!r} is not one of auto, txt, jsonl, parquet"
    )


def load_texts(name: str, spec: dict) -> list[str]:
    """Raw texts of a dataset's source in corpus order: stripped, empty ones dropped.

    Not for ``variant_of`` specs, whose texts come from the parent's prepared frame.
    """
    source = _source_key(name, spec)
    if source == "builtin":
        if spec["builtin"] not in BUILTINS:
            raise DatasetError(
                f"datasets.{name}.builtin: unknown corpus {spec['builtin']!r}; "
                f"available: {', '.join(BUILTINS)}"
            )
        texts = pydoc_passages()
    elif source == "hf":
        texts = _load_hf(name, spec["hf"])
    elif source == "file":
        texts = _load_file(name, spec["file"])
    elif source == "task":
        from residual_dynamics.inputs.tasks import task_frame

        texts = list(task_frame(name, spec, _check_seed(name, spec.get("seed", 0)))["text"])
    else:
        raise DatasetError(
            f"datasets.{name}: `variant_of` datasets take their texts from the parent "
            f"{spec['variant_of']!r}; prepare that one first and pass it as the parent"
        )
    logger.info("datasets.%s: loaded %d texts from %s", name, len(texts), source)
    return texts


# --------------------------------------------------------------------------------------------
# selection


def filter_texts(texts: Sequence[str], min_chars: int, max_chars: int) -> list[int]:
    """Indices of the texts with ``min_chars < len(text) < max_chars`` (strict, as the paper)."""
    return [i for i, t in enumerate(texts) if min_chars < len(t) < max_chars]


def _dedupe(texts: list[str]) -> list[str]:
    # dict keeps insertion order, so the first occurrence wins
    return list(dict.fromkeys(texts))


def _shuffle_seeds(seed: int, text_ids: np.ndarray) -> np.ndarray:
    # Derived per text rather than from one stream so a text's shuffle does not depend on which
    # other texts were sampled alongside it.
    return np.array(
        [int(np.random.SeedSequence([seed, int(t)]).generate_state(1)[0]) for t in text_ids],
        dtype=np.int64,
    )


def _frame(text_ids: np.ndarray, texts: list[str], shuffle_tokens: bool, seed: int) -> pd.DataFrame:
    text_ids = np.asarray(text_ids, dtype=np.int64)
    return pd.DataFrame(
        {
            "text_id": text_ids,
            "text": pd.Series(list(texts), dtype="str"),
            "n_chars": np.array([len(t) for t in texts], dtype=np.int64),
            "shuffle_tokens": np.full(len(texts), bool(shuffle_tokens), dtype=bool),
            "shuffle_seed": _shuffle_seeds(seed, text_ids),
        },
        columns=list(COLUMNS),
    )


def _check_seed(name: str, seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"datasets.{name}.seed: must be a non-negative integer, got {seed!r}")
    return int(seed)


def prepare_dataset(name: str, spec: dict, parent: pd.DataFrame | None = None) -> pd.DataFrame:
    """Load, dedupe, filter and sample a dataset into one row per text.

    Columns: ``text_id`` (index of the text in the source corpus after dedupe, before the length
    filter, so it is stable across filter and sampling settings), ``text``, ``n_chars``,
    ``shuffle_tokens`` and ``shuffle_seed`` (per-text seed for the token-shuffled control).
    Rows are in corpus order. A ``variant_of`` spec copies ``parent``'s rows and only sets
    ``shuffle_tokens`` and the seeds from its own spec.
    """
    seed = _check_seed(name, spec.get("seed", 0))
    shuffle_tokens = bool(spec.get("shuffle_tokens", False))
    source = _source_key(name, spec)

    if source == "variant_of":
        if parent is None:
            raise DatasetError(
                f"datasets.{name}.variant_of: needs the prepared frame of "
                f"{spec['variant_of']!r} as the parent, none was given"
            )
        missing = [c for c in ("text_id", "text", "n_chars") if c not in parent.columns]
        if missing:
            raise DatasetError(
                f"datasets.{name}.variant_of: the parent frame of {spec['variant_of']!r} lacks "
                f"columns {missing}; re-prepare the parent dataset"
            )
        df = _frame(parent["text_id"].to_numpy(), list(parent["text"]), shuffle_tokens, seed)
        logger.info(
            "datasets.%s: %d texts copied from %s (shuffle_tokens=%s)",
            name,
            len(df),
            spec["variant_of"],
            shuffle_tokens,
        )
        return df

    if source == "task":
        from residual_dynamics.inputs.tasks import task_frame

        frame = task_frame(name, spec, seed)
        extra = _frame(frame["text_id"].to_numpy(), list(frame["text"]), shuffle_tokens, seed)
        for column in ("a", "b"):
            extra[column] = frame[column].to_numpy()
        logger.info("datasets.%s: generated %d task sequences", name, len(extra))
        return extra

    texts = load_texts(name, spec)
    if spec.get("dedupe", True):
        n_before = len(texts)
        texts = _dedupe(texts)
        if len(texts) < n_before:
            logger.info("datasets.%s: dropped %d duplicate texts", name, n_before - len(texts))

    min_chars = spec.get("min_chars", 100)
    max_chars = spec.get("max_chars", 500)
    passing = filter_texts(texts, min_chars, max_chars)
    logger.info(
        "datasets.%s: %d of %d texts pass %d < chars < %d",
        name,
        len(passing),
        len(texts),
        min_chars,
        max_chars,
    )
    if not passing:
        raise DatasetError(
            f"datasets.{name}: none of the {len(texts)} texts pass the length filter "
            f"{min_chars} < chars < {max_chars}; widen datasets.{name}.min_chars / "
            f"datasets.{name}.max_chars or use another source"
        )

    n_samples = spec.get("n_samples")
    chosen = np.asarray(passing, dtype=np.int64)
    if n_samples is not None:
        if isinstance(n_samples, bool) or int(n_samples) < 1:
            raise DatasetError(
                f"datasets.{name}.n_samples: must be a positive integer or null, got {n_samples!r}"
            )
        n_samples = int(n_samples)
        if len(passing) < n_samples:
            msg = (
                f"datasets.{name}: only {len(passing)} texts pass the length filter "
                f"{min_chars} < chars < {max_chars}, but n_samples asks for {n_samples}"
            )
            if not spec.get("allow_fewer", False):
                raise DatasetError(
                    f"{msg}; lower datasets.{name}.n_samples, widen datasets.{name}.min_chars / "
                    f"datasets.{name}.max_chars, or set datasets.{name}.allow_fewer: true"
                )
            logger.warning("%s; allow_fewer is set, keeping all %d", msg, len(passing))
        else:
            rng = np.random.default_rng(seed)
            picked = rng.choice(len(passing), size=n_samples, replace=False)
            chosen = np.sort(chosen[picked])
    logger.info("datasets.%s: sampled %d texts", name, len(chosen))
    return _frame(chosen, [texts[i] for i in chosen], shuffle_tokens, seed)


# --------------------------------------------------------------------------------------------
# storage


def write_dataset(df: pd.DataFrame, path: str | os.PathLike, metadata: dict) -> None:
    """Write ``df`` to parquet at ``path`` with ``metadata`` under the key ``residual_dynamics``.

    Written to a temporary file in the same directory and moved into place with
    ``os.replace``, so readers (and Snakemake after an interrupted job) never see a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    merged = dict(table.schema.metadata or {})
    merged[METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode("utf-8")
    table = table.replace_schema_metadata(merged)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def seeded_sample(frame, n: int | None, seed: int):
    """``n`` of the prepared texts drawn with ``seed``, kept in dataset order (all when ``n`` is
    None or not smaller than the dataset)."""
    if n is None or n >= len(frame):
        return frame
    return frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), n, replace=False))]


def read_dataset(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Read a file written by :func:`write_dataset`; metadata is ``{}`` if the file has none."""
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    metadata = json.loads(raw.decode("utf-8")) if raw is not None else {}
    return table.to_pandas(), metadata


def texts_hash(texts: Sequence[str]) -> str:
    """Order-sensitive sha256 of the texts; each is length-prefixed so boundaries count."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# token-shuffled control


def shuffle_token_ids(input_ids: Sequence[int], keep: Sequence[bool], seed: int) -> list[int]:
    """Permute the tokens at positions where ``keep`` is False; kept positions stay put.

    The paper's control shuffles tokens 1..n and keeps BOS at 0; marking every special token
    (BOS, [CLS], [SEP], ...) as kept generalises that to any tokenizer.
    """
    if len(input_ids) != len(keep):
        raise ValueError(f"input_ids has {len(input_ids)} entries but keep has {len(keep)}")
    free = [i for i, k in enumerate(keep) if not k]
    out = list(input_ids)
    if len(free) < 2:
        return out
    perm = np.random.default_rng(seed).permutation(len(free))
    for dst, src in zip(free, perm, strict=True):
        out[dst] = input_ids[free[src]]
    return out

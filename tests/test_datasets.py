"""Tests for residual_dynamics.datasets: sources, filtering, sampling, storage, token shuffling."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from residual_dynamics.inputs import datasets
from residual_dynamics.inputs.datasets import DatasetError


def make_spec(**overrides):
    """A spec as the schema would hand it over: every default filled in."""
    spec = {
        "min_chars": 100,
        "max_chars": 500,
        "n_samples": None,
        "seed": 0,
        "dedupe": True,
        "shuffle_tokens": False,
        "allow_fewer": False,
    }
    spec.update(overrides)
    return spec


def corpus(n: int, length: int = 150) -> list[str]:
    """n distinct texts of exactly `length` chars, each identifiable by its number."""
    return [f"text {i:05d} ".ljust(length, "x") for i in range(n)]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t, "other": i}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep the datasets library's cache inside tmp_path, away from the user's cache."""
    import datasets as hf_datasets

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(hf_datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def hf_spec(data_files, text_field="text", path="json", **overrides):
    return make_spec(
        hf={
            "path": path,
            "name": None,
            "split": "train",
            "text_field": text_field,
            "data_files": str(data_files),
            "revision": None,
        },
        **overrides,
    )


# --------------------------------------------------------------------------------------------
# builtin pydoc corpus


@pytest.fixture(scope="module")
def pydoc_texts():
    return datasets.load_texts("pydoc", {"builtin": "pydoc_topics"})


def test_pydoc_corpus_is_prose(pydoc_texts):
    passing = [pydoc_texts[i] for i in datasets.filter_texts(pydoc_texts, 100, 500)]
    assert len(set(passing)) > 500
    for t in pydoc_texts:
        assert "\n" not in t
        assert not t.startswith(">>>")
        assert t == t.strip()
        assert "  " not in t
    # grammar productions and code samples are indented in the manual and must be gone
    assert not any(t.startswith("if_stmt ::=") for t in pydoc_texts)
    assert any(
        t.startswith('The "if" statement is used for conditional execution') for t in pydoc_texts
    )


def test_pydoc_corpus_is_deterministic(pydoc_texts):
    assert datasets.load_texts("pydoc", {"builtin": "pydoc_topics"}) == pydoc_texts


def test_pydoc_prepare_default_filter():
    df = datasets.prepare_dataset("pydoc", make_spec(builtin="pydoc_topics"))
    assert len(df) > 500
    assert list(df.columns) == ["text_id", "text", "n_chars", "shuffle_tokens", "shuffle_seed"]
    assert df["text"].is_unique
    assert ((df["n_chars"] > 100) & (df["n_chars"] < 500)).all()
    assert (df["n_chars"] == df["text"].str.len()).all()
    assert df["text_id"].is_monotonic_increasing


def test_unknown_builtin():
    with pytest.raises(DatasetError, match=r"datasets\.x\.builtin"):
        datasets.load_texts("x", {"builtin": "nope"})


# --------------------------------------------------------------------------------------------
# filter and sampling


def test_filter_is_strict_at_both_ends():
    texts = ["a" * n for n in (99, 100, 101, 250, 499, 500, 501)]
    assert datasets.filter_texts(texts, 100, 500) == [2, 3, 4]


def test_sampling_deterministic_ordered_unique(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(200))
    spec = make_spec(file={"path": str(src), "format": "auto"}, n_samples=50, seed=3)
    a = datasets.prepare_dataset("c", spec)
    b = datasets.prepare_dataset("c", spec)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 50
    assert a["text_id"].is_unique
    assert a["text_id"].is_monotonic_increasing
    # text_id indexes the source, so the text is the one at that position
    assert all(t.startswith(f"text {i:05d} ") for i, t in zip(a["text_id"], a["text"], strict=True))

    other = datasets.prepare_dataset("c", {**spec, "seed": 4})
    assert set(other["text_id"]) != set(a["text_id"])


def test_n_samples_none_keeps_all_passing(tmp_path):
    texts = corpus(30) + ["short"] + corpus(1, length=600)
    src = write_jsonl(tmp_path / "c.jsonl", texts)
    df = datasets.prepare_dataset("c", make_spec(file={"path": str(src)}))
    assert list(df["text"]) == texts[:30]
    assert list(df["text_id"]) == list(range(30))


def test_dedupe_keeps_first_and_ids_are_stable(tmp_path):
    base = corpus(5)
    texts = [base[0], base[1], base[0], base[2], base[1], "tiny", base[3]]
    src = write_jsonl(tmp_path / "c.jsonl", texts)
    df = datasets.prepare_dataset("c", make_spec(file={"path": str(src)}))
    assert list(df["text"]) == [base[0], base[1], base[2], base[3]]
    # ids count positions after dedupe ("tiny" is id 3), before the length filter
    assert list(df["text_id"]) == [0, 1, 2, 4]

    kept = datasets.prepare_dataset("c", make_spec(file={"path": str(src)}, dedupe=False))
    assert list(kept["text_id"]) == [0, 1, 2, 3, 4, 6]


def test_fewer_than_asked(tmp_path, caplog):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(7) + ["short"] * 3)
    spec = make_spec(file={"path": str(src)}, n_samples=20)
    with pytest.raises(DatasetError) as err:
        datasets.prepare_dataset("small", spec)
    msg = str(err.value)
    assert "only 7 texts" in msg and "20" in msg
    assert "datasets.small.n_samples" in msg and "allow_fewer" in msg

    with caplog.at_level("WARNING", logger="residual_dynamics.inputs.datasets"):
        df = datasets.prepare_dataset("small", {**spec, "allow_fewer": True})
    assert len(df) == 7
    assert any("only 7" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize("allow_fewer", [False, True])
def test_zero_passing_is_always_an_error(tmp_path, allow_fewer):
    src = write_jsonl(tmp_path / "c.jsonl", ["short"] * 4)
    spec = make_spec(file={"path": str(src)}, n_samples=2, allow_fewer=allow_fewer)
    with pytest.raises(DatasetError, match=r"datasets\.z\.min_chars.*datasets\.z\.max_chars"):
        datasets.prepare_dataset("z", spec)


def test_shuffle_seed_per_text(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(40))
    full = datasets.prepare_dataset("c", make_spec(file={"path": str(src)}, seed=7))
    part = datasets.prepare_dataset("c", make_spec(file={"path": str(src)}, seed=7, n_samples=10))
    assert full["shuffle_seed"].is_unique
    # a text's seed does not depend on which other texts were sampled
    lookup = dict(zip(full["text_id"], full["shuffle_seed"], strict=True))
    assert all(lookup[i] == s for i, s in zip(part["text_id"], part["shuffle_seed"], strict=True))
    other = datasets.prepare_dataset("c", make_spec(file={"path": str(src)}, seed=8))
    assert not np.array_equal(other["shuffle_seed"], full["shuffle_seed"])


# --------------------------------------------------------------------------------------------
# hf source, driven with local files so nothing touches the network


def test_hf_local_jsonl_matches_file(tmp_path, hf_cache):
    texts = corpus(12) + ["  padded " + "y" * 120 + "  "]
    src = write_jsonl(tmp_path / "c.jsonl", texts)
    got = datasets.load_texts("loc", hf_spec(src))
    assert got == texts[:12] + [texts[12].strip()]
    assert got == datasets.load_texts("loc", make_spec(file={"path": str(src)}))


def test_hf_local_text_and_parquet(tmp_path, hf_cache):
    texts = corpus(5)
    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(texts) + "\n")
    assert datasets.load_texts("t", hf_spec(txt, path="text")) == texts
    pq_file = tmp_path / "c.parquet"
    pd.DataFrame({"body": texts}).to_parquet(pq_file)
    assert datasets.load_texts("p", hf_spec(pq_file, path="parquet", text_field="body")) == texts


def test_hf_wrong_text_field(tmp_path, hf_cache):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(3))
    with pytest.raises(DatasetError) as err:
        datasets.load_texts("loc", hf_spec(src, text_field="content"))
    msg = str(err.value)
    assert "datasets.loc.hf.text_field" in msg
    assert "'text'" in msg and "'other'" in msg


def test_hf_unreachable_dataset_offline(monkeypatch, hf_cache):
    import datasets as hf_datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # both libraries read the variables at import time, which already happened
    monkeypatch.setattr(hf_datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = make_spec(
        hf={
            "path": "residual-dynamics-tests/no-such-dataset-xyz",
            "name": None,
            "split": "train",
            "text_field": "text",
            "data_files": None,
            "revision": None,
        }
    )
    with pytest.raises(DatasetError) as err:
        datasets.prepare_dataset("wiki", spec)
    msg = str(err.value)
    assert "datasets.wiki" in msg
    assert "no-such-dataset-xyz" in msg
    assert "HF_DATASETS_OFFLINE=1" in msg and "`file:`" in msg


# --------------------------------------------------------------------------------------------
# file source


def test_file_txt_by_line(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("first line\n\n  second line  \nthird line\n")
    spec = {"file": {"path": str(p), "format": "auto", "split_on": "line"}}
    assert datasets.load_texts("f", spec) == ["first line", "second line", "third line"]


def test_file_txt_by_blank_line(tmp_path):
    p = tmp_path / "c.data"
    p.write_text("para one\nstill one\n\n \npara two\n\n\npara three")
    spec = {"file": {"path": str(p), "format": "txt", "split_on": "blank_line"}}
    assert datasets.load_texts("f", spec) == ["para one\nstill one", "para two", "para three"]


def test_file_jsonl_custom_field(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", ["a1", "b2", "c3"], field="body")
    spec = {"file": {"path": str(p), "format": "jsonl", "text_field": "body"}}
    assert datasets.load_texts("f", spec) == ["a1", "b2", "c3"]
    with pytest.raises(DatasetError, match=r"datasets\.f\.file\.text_field"):
        datasets.load_texts("f", {"file": {"path": str(p), "text_field": "text"}})


def test_file_parquet(tmp_path):
    p = tmp_path / "c.parquet"
    pd.DataFrame({"text": ["x1", "y2"], "n": [1, 2]}).to_parquet(p)
    assert datasets.load_texts("f", {"file": {"path": str(p)}}) == ["x1", "y2"]
    with pytest.raises(DatasetError, match=r"datasets\.f\.file\.text_field.*") as err:
        datasets.load_texts("f", {"file": {"path": str(p), "text_field": "body"}})
    assert "'n'" in str(err.value)


def test_file_missing(tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(DatasetError) as err:
        datasets.prepare_dataset("mine", make_spec(file={"path": str(missing)}))
    assert "datasets.mine.file.path" in str(err.value)
    assert str(missing) in str(err.value)


def test_file_unknown_extension(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("a\n")
    with pytest.raises(DatasetError, match=r"datasets\.f\.file\.format"):
        datasets.load_texts("f", {"file": {"path": str(p), "format": "auto"}})


def test_exactly_one_source():
    with pytest.raises(DatasetError, match="exactly one source"):
        datasets.prepare_dataset("two", make_spec(builtin="pydoc_topics", file={"path": "x"}))
    with pytest.raises(DatasetError, match="exactly one source"):
        datasets.prepare_dataset("none", make_spec())


# --------------------------------------------------------------------------------------------
# variants


def test_variant_copies_parent(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(60))
    parent = datasets.prepare_dataset("base", make_spec(file={"path": str(src)}, n_samples=20))
    spec = make_spec(variant_of="base", shuffle_tokens=True, seed=5, n_samples=3, min_chars=10**6)
    var = datasets.prepare_dataset("base_shuffled", spec, parent=parent)
    for col in ("text_id", "text", "n_chars"):
        assert list(var[col]) == list(parent[col])
    assert var["shuffle_tokens"].all()
    assert not parent["shuffle_tokens"].any()
    assert not np.array_equal(var["shuffle_seed"], parent["shuffle_seed"])
    assert var["shuffle_seed"].dtype == np.int64


def test_variant_needs_parent():
    with pytest.raises(DatasetError, match=r"datasets\.v\.variant_of"):
        datasets.prepare_dataset("v", make_spec(variant_of="base", shuffle_tokens=True))
    with pytest.raises(DatasetError, match="parent"):
        datasets.load_texts("v", make_spec(variant_of="base"))


# --------------------------------------------------------------------------------------------
# storage and hashing


def test_write_read_round_trip(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", corpus(10) + ["ünïcødé " * 20])
    df = datasets.prepare_dataset("c", make_spec(file={"path": str(src)}, shuffle_tokens=True))
    meta = {"name": "c", "texts_sha256": datasets.texts_hash(list(df["text"])), "n": len(df)}
    out = tmp_path / "out" / "c.parquet"
    datasets.write_dataset(df, out, meta)
    back, back_meta = datasets.read_dataset(out)
    assert back_meta == meta
    pd.testing.assert_frame_equal(back, df)
    assert sorted(p.name for p in out.parent.iterdir()) == ["c.parquet"]

    # overwriting in place still leaves exactly one file and the new content
    datasets.write_dataset(df.iloc[:3], out, {"n": 3})
    back, back_meta = datasets.read_dataset(out)
    assert len(back) == 3 and back_meta == {"n": 3}
    assert sorted(p.name for p in out.parent.iterdir()) == ["c.parquet"]


def test_failed_write_leaves_nothing(tmp_path):
    df = pd.DataFrame({"text": ["a"]})
    out = tmp_path / "c.parquet"
    with pytest.raises(TypeError):
        datasets.write_dataset(df, out, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_texts_hash():
    h = datasets.texts_hash(["ab", "c"])
    assert len(h) == 64 and int(h, 16) >= 0
    assert h == datasets.texts_hash(["ab", "c"])
    assert h != datasets.texts_hash(["c", "ab"])
    assert h != datasets.texts_hash(["a", "bc"])
    assert h != datasets.texts_hash(["abc"])
    assert datasets.texts_hash([]) != datasets.texts_hash([""])


# --------------------------------------------------------------------------------------------
# token shuffling


token_rows = st.integers(min_value=0, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 50_000), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.integers(0, 2**32 - 1),
    )
)


@settings(max_examples=200, deadline=None)
@given(token_rows)
def test_shuffle_keeps_kept_positions_and_multiset(row):
    ids, keep, seed = row
    out = datasets.shuffle_token_ids(ids, keep, seed)
    assert out is not ids
    assert len(out) == len(ids)
    assert Counter(out) == Counter(ids)
    assert all(o == i for o, i, k in zip(out, ids, keep, strict=True) if k)
    assert out == datasets.shuffle_token_ids(ids, keep, seed)
    if sum(not k for k in keep) <= 1:
        assert out == ids


@settings(max_examples=50, deadline=None)
@given(st.integers(20, 200), st.integers(0, 2**32 - 1))
def test_shuffle_actually_permutes_long_sequences(n, seed):
    ids = list(range(1000, 1000 + n))
    keep = [True] + [False] * (n - 2) + [True]  # e.g. [CLS] ... [SEP]
    out = datasets.shuffle_token_ids(ids, keep, seed)
    assert out[0] == ids[0] and out[-1] == ids[-1]
    assert out != ids
    assert sorted(out) == ids


def test_shuffle_bos_only_matches_paper_control():
    ids = list(range(100))
    out = datasets.shuffle_token_ids(ids, [True] + [False] * 99, seed=1)
    assert out[0] == 0
    assert sorted(out[1:]) == list(range(1, 100))
    assert out != datasets.shuffle_token_ids(ids, [True] + [False] * 99, seed=2)


def test_shuffle_length_mismatch():
    with pytest.raises(ValueError):
        datasets.shuffle_token_ids([1, 2, 3], [True], seed=0)

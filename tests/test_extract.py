"""Extraction: padding, positions, tokenising, sharding, and the activation store end to end.

The store tests run the tiny Llama over a 20-text dataset with ``chunk_mib`` so small that a chunk
holds 8 rows, so blocks, batches, shards and merges all cross chunk boundaries.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import processors

from residual_dynamics.inputs import datasets as ds
from residual_dynamics.inputs.models import load_model
from residual_dynamics.io.store import (
    FORMAT_VERSION,
    ROW_ARRAYS,
    STORE_ATTRS,
    StoreError,
    merge_shards,
    open_store,
)
from residual_dynamics.recording.extract import (
    ExtractionError,
    Extractor,
    pad_token_id,
    record_activations,
    resolve_add_bos,
    resolve_positions,
    shard_bounds,
    shuffle_tokens,
    tokenise,
)
from tiny_models import FAMILIES, WORDS, make_tokenizer, save_tiny_model

ATOL = 1e-5
N_TEXTS = 20
CHUNK_ROWS = 8  # what chunk_mib=0.001 gives for d_model=32 in float32: 1048 B // (32 * 4 B)


def texts(n: int = N_TEXTS) -> list[str]:
    """n distinct texts of 3 to 15 words, so every batch needs padding."""
    out = []
    for i in range(n):
        length = 2 + (5 * i) % 13
        start = (7 * i) % len(WORDS)
        out.append(" ".join((WORDS[start:] + WORDS[:start])[:length]) + f" {WORDS[i]}")
    assert len(set(out)) == n
    return out


def extraction(**overrides) -> dict:
    """An extraction section as the schema hands it over."""
    spec = {
        "device": "cpu",
        "positions": "last",
        "batch_size": 3,
        "max_batch_tokens": 40,  # with texts up to 16 tokens: batches of 2 or 3
        "max_tokens": None,
        "on_overflow": "truncate",
        "padding_side": "right",
        "include_final": True,
        "store_dtype": "float32",
        "chunk_mib": 0.001,
        "n_shards": 1,
    }
    spec.update(overrides)
    return spec


def no_bos_tokenizer():
    """The causal test tokenizer without its BOS template (like GPT-2's)."""
    tokenizer = make_tokenizer("causal")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A", special_tokens=[]
    )
    return tokenizer


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def llama(llama_dir):
    return load_model("tiny", {"path": str(llama_dir)}, device="cpu")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """``family -> LoadedModel``, each built and loaded once for this module."""
    cache = {}

    def get(family: str):
        if family not in cache:
            path = save_tiny_model(family, tmp_path_factory.mktemp(family))
            cache[family] = load_model(family, {"path": str(path)}, device="cpu")
        return cache[family]

    return get


def write_toy_dataset(path: Path, lines: list[str], shuffle: bool = False) -> Path:
    """Prepare a dataset through the same code the prepare_dataset rule runs."""
    source = path.with_suffix(".txt")
    source.write_text("\n".join(lines) + "\n")
    frame = ds.prepare_dataset(
        path.stem,
        {
            "file": {
                "path": str(source),
                "format": "txt",
                "text_field": "text",
                "split_on": "line",
            },
            "min_chars": 0,
            "max_chars": 10_000,
            "n_samples": None,
            "seed": 0,
            "dedupe": True,
            "allow_fewer": False,
            "shuffle_tokens": shuffle,
        },
    )
    ds.write_dataset(frame, path, {"texts_hash": ds.texts_hash(list(frame["text"])), "seed": 0})
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy.parquet", texts())


@pytest.fixture(scope="module")
def record(llama_dir, dataset):
    """record_activations with the tiny Llama and the toy dataset; extraction keys overridable."""

    def run(out: Path, *, shard=0, n_shards=1, data=None, **overrides) -> Path:
        return record_activations(
            model_name="tiny-llama",
            model_spec={"path": str(llama_dir)},
            dataset_name="toy",
            dataset_path=data or dataset,
            out_path=out,
            extraction=extraction(**overrides),
            shard=shard,
            n_shards=n_shards,
            progress=False,
        )

    return run


@pytest.fixture(scope="module")
def last_store(record, tmp_path_factory) -> Path:
    """The reference store: last token of every text, one shard."""
    return record(tmp_path_factory.mktemp("stores") / "toy.zarr")


def arrays(path: Path) -> dict[str, np.ndarray]:
    group = open_store(path)
    return {name: group[name][:] for name in ("resid", *ROW_ARRAYS)}


def assert_same_arrays(a: Path, b: Path) -> None:
    left, right = arrays(a), arrays(b)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        assert np.array_equal(left[name], right[name]), name


# --------------------------------------------------------------------------------------------
# padding


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_rows(family, padding_side, tiny_model):
    """A padded batch gives every sequence the rows it gets alone, on either padding side.

    Left padding is the trap: without position ids from the mask, the real tokens of a short
    sequence would sit at shifted positions. Rotary families barely notice (a common shift
    cancels in q.k), GPT-2 and BERT (learned absolute positions) do, hence every family. All real
    positions are compared, the last included.
    """
    loaded = tiny_model(family)
    tokenizer = make_tokenizer("bert" if family == "bert" else "causal")
    seqs = [list(tokenizer(t)["input_ids"]) for t in texts(4)]
    assert len({len(s) for s in seqs}) > 1
    pad = pad_token_id(tokenizer)
    batched = Extractor(loaded.model, pad, padding_side=padding_side)
    rows = batched.run_batch(seqs, [list(range(len(s))) for s in seqs])
    alone = Extractor(loaded.model, pad)
    start = 0
    for seq in seqs:
        expected = alone.run_batch([seq], [list(range(len(seq)))])
        torch.testing.assert_close(rows[start : start + len(seq)], expected, atol=ATOL, rtol=1e-5)
        start += len(seq)


def test_rows_come_back_in_the_asked_order(llama):
    """Rows follow (sequence, position) order as given, not sorted by position."""
    seq = list(make_tokenizer("causal")(texts(1)[0])["input_ids"])
    extractor = Extractor(llama.model, pad_token_id(llama.tokenizer))
    forward = extractor.run_batch([seq], [[0, 1, 2]])
    backward = extractor.run_batch([seq], [[2, 1, 0]])
    torch.testing.assert_close(backward, forward.flip(0), atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# positions, tokenising, shard bounds


def test_resolve_positions():
    assert resolve_positions("last", 5) == [4]
    assert resolve_positions("all", 3) == [0, 1, 2]
    assert resolve_positions([0, -1, 2], 5) == [0, 4, 2]
    # Out of range either way is skipped, not an error: texts differ in length.
    assert resolve_positions([1, 7, -9, -2], 5) == [1, 3]
    # -1 and 4 are the same token in a 5-token text: recorded once.
    assert resolve_positions([4, -1, 4], 5) == [4]
    assert resolve_positions([3], 2) == []


@settings(max_examples=200, deadline=None)
@given(
    positions=st.lists(st.integers(-20, 20), max_size=10),
    n_tokens=st.integers(1, 15),
)
def test_resolved_positions_are_unique_and_inside_the_text(positions, n_tokens):
    out = resolve_positions(positions, n_tokens)
    assert len(out) == len(set(out))
    assert all(0 <= q < n_tokens for q in out)
    wanted = {p % n_tokens for p in positions if -n_tokens <= p < n_tokens}
    assert set(out) == wanted


def test_bos_is_added_only_when_the_tokenizer_does_not_add_it():
    with_bos, without_bos = make_tokenizer("causal"), no_bos_tokenizer()
    bos = with_bos.bos_token_id
    assert resolve_add_bos(with_bos, "auto") is False
    assert resolve_add_bos(without_bos, "auto") is True
    assert resolve_add_bos(make_tokenizer("bert"), "auto") is False  # no BOS token at all

    kwargs = {"max_tokens": 64, "on_overflow": "error", "dataset": "toy"}
    added = tokenise(without_bos, ["the a of"], add_bos=True, **kwargs)
    assert added.ids[0][0] == bos and added.ids[0][1:] == without_bos("the a of")["input_ids"]
    # A tokenizer that already puts BOS first does not get a second one.
    kept = tokenise(with_bos, ["the a of"], add_bos=True, **kwargs)
    assert kept.ids[0] == with_bos("the a of")["input_ids"]
    assert kept.ids[0].count(bos) == 1
    plain = tokenise(without_bos, ["the a of"], add_bos=False, **kwargs)
    assert bos not in plain.ids[0]


def test_truncation_keeps_the_start_and_marks_the_text():
    tokenizer = make_tokenizer("causal")
    long, short = " ".join(WORDS[:10]), "the a"
    out = tokenise(
        tokenizer, [long, short], add_bos=False, max_tokens=4, on_overflow="truncate", dataset="t"
    )
    full = tokenizer(long)["input_ids"]
    assert out.ids[0] == full[:4]
    assert out.ids[1] == tokenizer(short)["input_ids"]
    assert out.truncated.tolist() == [True, False]
    assert out.n_original == [len(full), 3]


def test_truncation_keeps_bert_closing_sep():
    """An encoder still sees [SEP] last after truncation."""
    tokenizer = make_tokenizer("bert")
    out = tokenise(
        tokenizer, [" ".join(WORDS[:10])], add_bos=False, max_tokens=5, on_overflow="truncate",
        dataset="t",
    )  # fmt: skip
    assert len(out.ids[0]) == 5
    assert out.ids[0][0] == tokenizer.cls_token_id and out.ids[0][-1] == tokenizer.sep_token_id


def test_overflow_error_names_the_setting():
    with pytest.raises(ExtractionError, match=r"extraction\.on_overflow") as info:
        tokenise(
            make_tokenizer("causal"), ["the a", " ".join(WORDS[:10])], add_bos=False,
            max_tokens=4, on_overflow="error", dataset="toy",
        )  # fmt: skip
    assert "text 1" in str(info.value) and "toy" in str(info.value)


def test_text_that_tokenises_to_nothing_is_refused():
    with pytest.raises(ExtractionError, match="tokenises to nothing"):
        tokenise(
            no_bos_tokenizer(), ["the a", "   "], add_bos=False, max_tokens=64,
            on_overflow="truncate", dataset="toy",
        )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 300), n_shards=st.integers(1, 9), align=st.integers(1, 32))
def test_shards_cover_every_text_once_on_chunk_boundaries(n, n_shards, align):
    bounds = [shard_bounds(n, n_shards, s, align) for s in range(n_shards)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))
    for start, stop in bounds:
        assert start <= stop
        # A boundary inside the dataset is a chunk boundary, so shard stores join by linking.
        assert start % align == 0 or start == n
        assert stop % align == 0 or stop == n


def test_shard_outside_the_range_is_refused():
    with pytest.raises(ExtractionError, match="outside"):
        shard_bounds(10, 2, 2, 1)


# --------------------------------------------------------------------------------------------
# the store end to end


def test_store_follows_the_contract(last_store):
    dataset = xr.open_zarr(last_store)
    resid = dataset["resid"]
    assert resid.dims == ("sample", "sublayer", "unit")
    assert resid.shape == (N_TEXTS, 5, 32)
    assert list(dataset["sublayer"].values) == dataset.attrs["sublayers"]
    assert dataset.attrs["sublayers"] == ["attn0", "mlp0", "attn1", "mlp1", "final"]
    for name in ROW_ARRAYS:
        assert dataset[name].dims == ("sample",), name
    for key in STORE_ATTRS:
        assert key in dataset.attrs, key
    assert {"torch", "transformers", "zarr"} <= set(dataset.attrs["versions"])
    assert dataset.attrs["format_version"] == FORMAT_VERSION
    assert dataset.attrs["model"] == "tiny-llama" and dataset.attrs["dataset"] == "toy"
    assert dataset.attrs["n_samples"] == N_TEXTS
    group = open_store(last_store)
    # One chunk holds one sublayer of a block of rows.
    assert group["resid"].chunks == (CHUNK_ROWS, 1, 32)
    assert group["resid"].dtype == np.float32
    # Finished stores leave no temporary directory behind.
    assert not last_store.with_name(last_store.name + ".partial").exists()


def test_every_row_equals_its_text_run_alone(last_store, llama, dataset):
    """Sorting by length, batching and block writes must put each row back in dataset order."""
    frame, meta = ds.read_dataset(dataset)
    group = open_store(last_store)
    assert group.attrs["dataset_hash"] == meta["texts_hash"]
    resid = group["resid"][:]
    assert np.isfinite(resid).all()  # fill value is NaN: every row was written
    extractor = Extractor(llama.model, pad_token_id(llama.tokenizer))
    for row, text in enumerate(frame["text"]):
        seq = list(llama.tokenizer(text)["input_ids"])
        expected = extractor.run_batch([seq], [[len(seq) - 1]])[0].numpy()
        np.testing.assert_allclose(resid[row], expected, atol=ATOL, rtol=1e-5)
        assert group["n_tokens"][row] == len(seq)
        assert group["token_position"][row] == len(seq) - 1
        assert group["token_id"][row] == seq[-1]
    assert np.array_equal(group["text_id"][:], frame["text_id"].to_numpy())
    assert np.array_equal(group["text_index"][:], np.arange(N_TEXTS))
    assert not group["truncated"][:].any()


def test_extraction_is_deterministic(record, last_store, tmp_path):
    assert_same_arrays(record(tmp_path / "again.zarr"), last_store)


def test_shards_merge_by_linking_into_the_single_store(record, last_store, tmp_path):
    """Three shard stores, merged, equal the one-shard store; whole chunks are hard links."""
    shards = [record(tmp_path / f"{i}.zarr", shard=i, n_shards=3) for i in range(3)]
    sizes = [open_store(p)["resid"].shape[0] for p in shards]
    assert sizes == [8, 8, 4]
    merged = tmp_path / "merged.zarr"
    merge_shards(shards, merged)
    assert_same_arrays(merged, last_store)
    chunk_files = [f for f in (merged / "resid" / "c").rglob("*") if f.is_file()]
    assert chunk_files
    assert all(os.stat(f).st_nlink > 1 for f in chunk_files)
    assert open_store(merged).attrs["n_samples"] == N_TEXTS
    assert not merged.with_name(merged.name + ".partial").exists()


def test_unaligned_shards_merge_by_copying(record, last_store, tmp_path):
    """positions [-1] records the same rows as 'last' but shards are not chunk-aligned."""
    shards = [record(tmp_path / f"{i}.zarr", shard=i, n_shards=3, positions=[-1]) for i in range(3)]
    sizes = [open_store(p)["resid"].shape[0] for p in shards]
    assert sizes == [7, 7, 6]  # 7 is not a multiple of the 8-row chunk
    merged = tmp_path / "merged.zarr"
    merge_shards(shards, merged)
    chunk_files = [f for f in (merged / "resid" / "c").rglob("*") if f.is_file()]
    assert chunk_files
    assert all(os.stat(f).st_nlink == 1 for f in chunk_files)
    # The merge itself is an exact copy of the shards' rows...
    parts = [arrays(p) for p in shards]
    for name, values in arrays(merged).items():
        assert np.array_equal(values, np.concatenate([part[name] for part in parts])), name
    # ... and equals the one-shard store up to float rounding: other shard bounds put texts in
    # other batches, and a different padded width changes the kernels' summation order.
    single = arrays(last_store)
    for name in ROW_ARRAYS:
        assert np.array_equal(arrays(merged)[name], single[name]), name
    np.testing.assert_allclose(arrays(merged)["resid"], single["resid"], atol=ATOL, rtol=1e-5)


def test_merged_store_attributes_describe_the_whole_dataset(record, last_store, tmp_path):
    """The merged store is the whole dataset: its n_texts and text_range must say so, not
    repeat shard 0's (n_texts is in the store contract, STORE_ATTRS)."""
    shards = [record(tmp_path / f"{i}.zarr", shard=i, n_shards=3) for i in range(3)]
    merged = tmp_path / "merged.zarr"
    merge_shards(shards, merged)
    attrs = open_store(merged).attrs
    assert attrs["n_texts"] == open_store(last_store).attrs["n_texts"] == N_TEXTS
    assert attrs["text_range"] == [0, N_TEXTS]


def test_more_shards_than_chunks_still_extract_and_merge(record, tmp_path, dataset):
    """12 texts in 8-row chunks over 3 shards: shard_bounds gives shard 2 no texts (0..8, 8..12,
    12..12). The config's n_shards is fixed per workflow, so any small dataset meets this: the
    empty shard must write an empty store that merges, not fail the whole run."""
    frame, meta = ds.read_dataset(dataset)
    small = tmp_path / "small.parquet"
    ds.write_dataset(frame.iloc[:12].reset_index(drop=True), small, meta)
    assert shard_bounds(12, 3, 2, CHUNK_ROWS) == (12, 12)
    single = record(tmp_path / "single.zarr", data=small)
    shards = [record(tmp_path / f"{i}.zarr", shard=i, n_shards=3, data=small) for i in range(3)]
    merged = tmp_path / "merged.zarr"
    merge_shards(shards, merged)
    assert_same_arrays(merged, single)


def test_all_positions_lay_out_one_row_per_token(record, llama, dataset, tmp_path):
    frame, _ = ds.read_dataset(dataset)
    group = open_store(record(tmp_path / "all.zarr", positions="all"))
    lengths = [len(llama.tokenizer(t)["input_ids"]) for t in frame["text"]]
    assert group["resid"].shape[0] == sum(lengths)
    text_index = group["text_index"][:]
    positions = group["token_position"][:]
    assert np.array_equal(text_index, np.repeat(np.arange(N_TEXTS), lengths))
    assert np.array_equal(positions, np.concatenate([np.arange(n) for n in lengths]))
    assert np.array_equal(group["n_tokens"][:], np.repeat(lengths, lengths))
    # The last-token rows of 'all' are the rows of 'last'.
    last_rows = np.cumsum(lengths) - 1
    reference = xr.open_zarr(record(tmp_path / "last.zarr"))["resid"].values
    np.testing.assert_allclose(group["resid"][:][last_rows], reference, atol=ATOL, rtol=1e-5)


def test_float16_store_is_close_to_float32(record, last_store, tmp_path):
    group = open_store(record(tmp_path / "half.zarr", store_dtype="float16"))
    assert group["resid"].dtype == np.float16
    assert group.attrs["store_dtype"] == "float16"
    full = open_store(last_store)["resid"][:]
    np.testing.assert_allclose(group["resid"][:].astype(np.float32), full, rtol=2e-3, atol=1e-4)


def test_an_interrupted_store_is_named_as_such(tmp_path):
    store = tmp_path / "toy.zarr"
    (tmp_path / "toy.zarr.partial").mkdir()
    with pytest.raises(StoreError, match="interrupted"):
        open_store(store)
    with pytest.raises(StoreError, match="no activation store"):
        open_store(tmp_path / "other.zarr")


def test_a_failed_extraction_leaves_only_a_partial_store(record, last_store, tmp_path, monkeypatch):
    """A crash mid-extraction must not leave anything at the final path, and a rerun recovers."""
    out = tmp_path / "toy.zarr"
    calls = []

    def crash_on_second_batch(self, seqs, positions):
        calls.append(len(seqs))
        if len(calls) == 2:
            raise RuntimeError("simulated out-of-memory")
        return original(self, seqs, positions)

    original = Extractor.run_batch
    monkeypatch.setattr(Extractor, "run_batch", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="simulated"):
        record(out)
    assert not out.exists() and out.with_name("toy.zarr.partial").exists()
    with pytest.raises(StoreError, match="interrupted"):
        open_store(out)
    monkeypatch.setattr(Extractor, "run_batch", original)
    assert_same_arrays(record(out), last_store)
    assert not out.with_name("toy.zarr.partial").exists()


def test_a_store_of_another_format_version_says_how_to_fix_it(last_store, tmp_path):
    old = tmp_path / "old.zarr"
    shutil.copytree(last_store, old)
    group = zarr.open_group(str(old), mode="r+")
    group.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match="format_version") as info:
        open_store(old)
    assert "rerun" in str(info.value) and "--forcerun extract_activations" in str(info.value)


@pytest.mark.parametrize("kind", ["causal", "bert"])
def test_shuffle_keeps_special_tokens_in_place(kind):
    tokenizer = make_tokenizer(kind)
    special = set(tokenizer.all_special_ids)
    seqs = [list(tokenizer(t)["input_ids"]) for t in texts(8)]
    shuffled = shuffle_tokens(tokenizer, seqs, seeds=list(range(8)))
    for before, after in zip(seqs, shuffled, strict=True):
        assert sorted(before) == sorted(after)
        assert [t if t in special else None for t in before] == [
            t if t in special else None for t in after
        ]
    assert any(b != a for b, a in zip(seqs, shuffled, strict=True))


def test_token_shuffled_store_records_the_shuffled_sequences(llama, record, tmp_path):
    """The shuffled control: rows and token ids are those of each text's own shuffle."""
    data = write_toy_dataset(tmp_path / "shuffled.parquet", texts(), shuffle=True)
    frame, _ = ds.read_dataset(data)
    assert frame["shuffle_tokens"].all()
    group = open_store(record(tmp_path / "shuffled.zarr", data=data))
    assert group.attrs["shuffle_tokens"] is True
    seqs = [list(llama.tokenizer(t)["input_ids"]) for t in frame["text"]]
    shuffled = shuffle_tokens(llama.tokenizer, seqs, frame["shuffle_seed"].tolist())
    assert all(s[0] == llama.tokenizer.bos_token_id for s in shuffled)  # BOS stays first
    assert group["token_id"][:].tolist() == [s[-1] for s in shuffled]
    # The last token moved for some texts, so the control differs from the original.
    assert any(s[-1] != o[-1] for s, o in zip(shuffled, seqs, strict=True))
    extractor = Extractor(llama.model, pad_token_id(llama.tokenizer))
    resid = group["resid"][:]
    for row, seq in enumerate(shuffled):
        expected = extractor.run_batch([seq], [[len(seq) - 1]])[0].numpy()
        np.testing.assert_allclose(resid[row], expected, atol=ATOL, rtol=1e-5)

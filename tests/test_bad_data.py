"""Bad data (issue 10): NaN/inf activations, zero-variance units, and shard stores that would
share a chunk.

- Extraction refuses non-finite activations per batch, naming the model, the sublayers, the texts
  and the fix, and leaves only a ``.partial`` store; statistics refuse a store from elsewhere that
  holds NaN/inf, naming it and the count.
- A unit constant over the samples has undefined correlations and MI (NaN, flagged and counted),
  and nothing else changes: the other units' numbers equal those of the same data without it.
- merge_shards refuses shards that overlap, leave a gap or would link one chunk twice; shards
  extracted concurrently each own their chunk files, and their merge equals one extraction.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from sklearn.decomposition import PCA
from test_extract import CHUNK_ROWS, N_TEXTS, extraction, texts, write_toy_dataset
from test_transitions import NAMES, write_store
from transformers import AutoModelForCausalLM

from residual_dynamics.analysis.cae import SampleBlocks, fit_normaliser
from residual_dynamics.analysis.mutual_information import transition_mutual_information
from residual_dynamics.analysis.pca import pca_fit
from residual_dynamics.analysis.rotations import rotation_summary
from residual_dynamics.analysis.transitions import transition_statistics
from residual_dynamics.analysis.unit_means import unit_means
from residual_dynamics.inputs.models import load_model
from residual_dynamics.io.store import StoreError, _plan_links, merge_shards, open_store
from residual_dynamics.recording import extract
from residual_dynamics.recording.extract import (
    ExtractionError,
    Extractor,
    extract_to_store,
    pad_token_id,
    record_activations,
)
from tiny_models import make_tokenizer, save_tiny_model

# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy.parquet", texts())


def edited_model(source: Path, target: Path, edit) -> Path:
    """A copy of the checkpoint at ``source`` with ``edit(model)`` applied to its weights."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(target)
    make_tokenizer("causal").save_pretrained(target)
    return target


def record(model_dir, dataset, out, *, dtype="float32", shard=0, n_shards=1, **overrides):
    return record_activations(
        model_name="tiny-llama",
        model_spec={"path": str(model_dir), "dtype": dtype},
        dataset_name="toy",
        dataset_path=dataset,
        out_path=out,
        extraction=extraction(**overrides),
        shard=shard,
        n_shards=n_shards,
        progress=False,
    )


# --------------------------------------------------------------------------------------------
# 1. non-finite activations


POISON = "hot"  # one word of the test vocabulary; its embedding is set to inf


def test_inf_in_the_weights_is_refused_naming_the_texts_that_hit_it(llama_dir, dataset, tmp_path):
    """Only texts containing the poisoned token go non-finite, from the first sublayer on; the
    error names them (first block that has any), the model, the weight, and leaves no store."""
    tokenizer = make_tokenizer("causal")
    poison_id = tokenizer.convert_tokens_to_ids(POISON)

    def poison(model):
        model.model.embed_tokens.weight[poison_id] = float("inf")

    broken = edited_model(llama_dir, tmp_path / "broken", poison)
    hit = [i for i, t in enumerate(texts()) if POISON in t.split()]
    assert hit and len(hit) < N_TEXTS  # the planted case is selective
    # Blocks of CHUNK_ROWS texts, one batch each: the error lists the first hit block's texts.
    first_block = hit[0] // CHUNK_ROWS
    expected = [i for i in hit if i // CHUNK_ROWS == first_block]
    out = tmp_path / "toy.zarr"
    with pytest.raises(ExtractionError) as caught:
        record(broken, dataset, out, batch_size=64, max_batch_tokens=10**6)
    message = str(caught.value)
    assert message.startswith("models.tiny-llama: non-finite activations")
    # attn0 is the last token's embedding (finite: no text ends with the word); the NaN reaches
    # the last token through attention, so the first hit point is the input of layer 0's MLP.
    assert "from sublayer mlp0 on" in message
    assert f"text index(es) {', '.join(map(str, expected))} ({len(expected)} text(s)" in message
    assert "(embed_tokens.weight)" in message and "checkpoint is broken" in message
    assert not out.exists() and out.with_name("toy.zarr.partial").exists()
    with pytest.raises(StoreError, match="interrupted"):
        open_store(out)


def test_float16_overflow_is_refused_with_the_dtype_fix_that_works(llama_dir, dataset, tmp_path):
    """Finite float16 weights whose forward overflows in layer 0's MLP: the error names attn1 (the
    next point read) and says to use float32; in float32 the same checkpoint extracts finite rows."""

    def amplify(model):
        # 60000 fits float16 (max 65504); the normalised MLP input times it does not.
        model.model.layers[0].post_attention_layernorm.weight.fill_(60000.0)

    loud = edited_model(llama_dir, tmp_path / "loud", amplify)
    out = tmp_path / "half.zarr"
    with pytest.raises(ExtractionError) as caught:
        record(loud, dataset, out, dtype="float16")
    message = str(caught.value)
    assert "from sublayer attn1 on (sublayers attn1, mlp1, final)" in message
    assert "weights are finite" in message and "models.tiny-llama.dtype: float32" in message
    assert not out.exists()
    fixed = open_store(record(loud, dataset, tmp_path / "full.zarr", dtype="float32"))
    assert np.isfinite(fixed["resid"][:]).all()
    assert np.abs(fixed["resid"][:]).max() > 65504  # float16 really could not hold them


def test_the_check_reads_device_flags_not_the_host_rows(llama_dir, tmp_path, monkeypatch):
    """The refusal comes from the (rows, sublayers) flags computed before the copy: a host copy
    that hands back finite rows still cannot hide NaN produced on the device."""
    loaded = load_model("tiny", {"path": str(llama_dir)}, device="cpu")
    extractor = Extractor(loaded.model, pad_token_id(loaded.tokenizer))
    seqs = [loaded.tokenizer(t)["input_ids"] for t in texts(6)]
    original = Extractor.run_batch

    def nan_on_text_3(self, batch_seqs, positions):
        rows = original(self, batch_seqs, positions)
        with torch.inference_mode():  # the rows are inference tensors
            for i, seq in enumerate(batch_seqs):
                if seq == seqs[3]:
                    rows[i, 2] = float("nan")  # sublayer 2 = attn1
        return rows

    class FiniteCopy(extract.HostCopy):
        def start(self, rows):
            return extract.Pending(torch.nan_to_num(rows.cpu()))

    monkeypatch.setattr(Extractor, "run_batch", nan_on_text_3)
    meta = {
        "text_id": np.arange(6) + 100,
        "text_index": np.arange(6) + 40,  # a shard's texts: indices into the whole dataset
        "truncated": np.zeros(6, bool),
    }
    with pytest.raises(ExtractionError, match=r"from sublayer attn1 on .* index\(es\) 43 \("):
        extract_to_store(
            extractor,
            seqs,
            meta,
            "last",
            tmp_path / "x.zarr",
            attrs={"model": "tiny", "dtype": "float32"},
            chunk_rows=4,
            batch_size=2,
            progress=False,
            host_copy=FiniteCopy(torch.device("cpu")),
        )
    assert not (tmp_path / "x.zarr").exists()


def test_float16_store_overflow_is_refused(llama_dir, tmp_path):
    """Rows finite in float32 but beyond float16's range must not become inf in the store."""
    loaded = load_model("tiny", {"path": str(llama_dir)}, device="cpu")
    with torch.no_grad():
        # Only the 'final' row (the input of the final norm) is huge: ~1e6.
        loaded.model.layers[1].mlp.down_proj.weight.mul_(1e9)
    extractor = Extractor(loaded.model, pad_token_id(loaded.tokenizer))
    seqs = [loaded.tokenizer(t)["input_ids"] for t in texts(4)]
    meta = {"text_id": np.arange(4), "text_index": np.arange(4), "truncated": np.zeros(4, bool)}
    with pytest.raises(ExtractionError, match="extraction.store_dtype: float32"):
        extract_to_store(
            extractor,
            seqs,
            meta,
            "last",
            tmp_path / "h.zarr",
            attrs={"model": "tiny"},
            store_dtype="float16",
            progress=False,
        )
    assert not (tmp_path / "h.zarr").exists()


@pytest.fixture
def noisy(tmp_path):
    rng = np.random.default_rng(3)
    return rng.normal(size=(40, len(NAMES), 6)).astype(np.float32) + 2.0


def test_statistics_refuse_a_store_with_nan_or_inf_naming_it_and_the_count(noisy, tmp_path):
    bad = noisy.copy()
    bad[5, 2, 3] = np.nan
    bad[9, 0, 1] = np.inf
    bad[9, 0, 2] = -np.inf
    path = write_store(tmp_path / "elsewhere.zarr", bad, chunk_rows=8)
    with pytest.raises(StoreError) as caught:
        unit_means(path)
    message = str(caught.value)
    assert str(path) in message
    assert "3 non-finite values" in message and "in 2 of 40 samples (first: 5, 9)" in message
    assert "sublayers attn0, attn1" in message and "--forcerun extract_activations" in message
    # Asked to, the means leave those values out per element.
    means = unit_means(path, allow_non_finite=True)
    x = np.where(np.isfinite(bad), bad, np.nan)[:, :-1].astype(np.float64)
    np.testing.assert_allclose(means["mean"].values, np.nanmean(x, axis=0), rtol=1e-6)
    assert means["n_finite"].values[2, 3] == 39 and means["n_finite"].values[0, 0] == 40


def test_nan_outside_the_analysed_sublayers_does_not_stop_the_statistics(noisy, tmp_path):
    bad = noisy.copy()
    bad[:, -1, 0] = np.nan  # 'final' is not analysed by the paper's choice
    path = write_store(tmp_path / "final.zarr", bad, chunk_rows=8)
    np.testing.assert_allclose(
        unit_means(path, sublayers="paper")["mean"].values,
        noisy[:, :-1].astype(np.float64).mean(axis=0),
        rtol=1e-6,
    )
    with pytest.raises(StoreError, match="40 non-finite values"):
        unit_means(path, sublayers="all")


# --------------------------------------------------------------------------------------------
# 2. zero-variance units

CONSTANT_UNIT, CONSTANT_AT = 4, 2  # unit 4 is constant over the samples at sublayer 2 (attn1)


@pytest.fixture
def constant_case(tmp_path):
    """A drifting stream with one unit constant at one sublayer, and the same data with that
    entry left random (the control: the other units' numbers must not change)."""
    rng = np.random.default_rng(5)
    n, s, d = 300, len(NAMES), 7
    steps = rng.normal(size=(n, s, d)) * np.linspace(0.3, 1.2, s)[None, :, None]
    control = (np.cumsum(steps, axis=1) + 10.0).astype(np.float32)
    planted = control.copy()
    planted[:, CONSTANT_AT, CONSTANT_UNIT] = 7.25
    return (
        write_store(tmp_path / "planted.zarr", planted, chunk_rows=64),
        write_store(tmp_path / "control.zarr", control, chunk_rows=64),
        planted,
    )


def test_a_constant_unit_has_nan_correlations_and_the_rest_equal_numpy(constant_case, caplog):
    path, _, planted = constant_case
    with caplog.at_level(logging.WARNING, logger="residual_dynamics.analysis.transitions"):
        stats = transition_statistics(path, block_rows=64)
    assert "1 (sublayer, unit) pairs are constant" in caplog.text
    assert stats.attrs["n_constant"] == 1
    flagged = stats["constant_unit"].values
    assert flagged[CONSTANT_AT, CONSTANT_UNIT] and flagged.sum() == 1
    x = planted[:, :-1].astype(np.float64)
    s, d = x.shape[1], x.shape[2]
    touching = {CONSTANT_AT - 1, CONSTANT_AT}  # transitions into and out of sublayer 2
    for t in range(s - 1):
        for u in range(d):
            got = stats["r"].values[t, u]
            if u == CONSTANT_UNIT and t in touching:
                assert np.isnan(got)
            else:
                assert got == pytest.approx(np.corrcoef(x[:, t, u], x[:, t + 1, u])[0, 1], abs=1e-5)
    pairs = stats["r_pairs"].values[:, :, CONSTANT_UNIT]
    assert np.isnan(pairs[CONSTANT_AT]).all() and np.isnan(pairs[:, CONSTANT_AT]).all()
    others = [i for i in range(s) if i != CONSTANT_AT]
    expected = np.corrcoef(x[:, others, CONSTANT_UNIT].T)
    np.testing.assert_allclose(pairs[np.ix_(others, others)], expected, atol=1e-5)
    assert np.isfinite(stats["cosine"].values).all() and np.isfinite(stats["velocity"].values).all()


def test_a_constant_unit_has_undefined_mi_and_the_rest_are_unchanged(constant_case):
    path, control, _ = constant_case
    settings = dict(grid=32, n_samples=None, ksg_units=7, device="cpu", progress=False)
    mi = transition_mutual_information(path, **settings)
    reference = transition_mutual_information(control, **settings)
    undefined = mi["undefined"].values
    expected = np.zeros_like(undefined)
    expected[[CONSTANT_AT - 1, CONSTANT_AT], CONSTANT_UNIT] = True
    assert np.array_equal(undefined, expected)
    for name in ("mi_kde", "mi_gaussian"):
        assert np.isnan(mi[name].values[expected]).all(), name
        np.testing.assert_array_equal(mi[name].values[~expected], reference[name].values[~expected])
    assert np.isfinite(reference["mi_kde"].values).all()
    ksg = mi["mi_ksg"].values  # every unit is in the KSG subset here
    assert np.isnan(ksg[expected]).all() and np.isfinite(ksg[~expected]).all()


def test_a_unit_constant_in_every_sublayer_leaves_rotations_finite():
    """A unit whose mean is the same at every sublayer has a one-point phase portrait: R = 0 and
    its nulls are all 0 (z undefined), and the other units' results are those computed alone."""
    rng = np.random.default_rng(8)
    means = np.cumsum(rng.normal(size=(12, 5)), axis=0)
    with_flat = np.column_stack([means, np.full(12, 0.5)])
    kwargs = dict(n_perm=100, n_surrogates=50, seed=2)
    got, alone = rotation_summary(with_flat, **kwargs), rotation_summary(means, **kwargs)
    assert got["r"][-1] == 0.0
    np.testing.assert_array_equal(got["r"][:-1], alone["r"])
    for name, draws in got["r_null"].items():
        assert np.isfinite(draws).all() and (draws[:, -1] == 0).all(), name
        assert np.isnan(got["per_unit"][name]["z"][-1]), name
        # Nulls are drawn unit after unit, so the first five units' draws are unchanged.
        np.testing.assert_array_equal(draws[:, :-1], alone["r_null"][name], err_msg=name)
        np.testing.assert_array_equal(
            got["per_unit"][name]["z"][:-1], alone["per_unit"][name]["z"], err_msg=name
        )


def test_pca_with_a_constant_unit_equals_scikit_learn(constant_case, tmp_path):
    _, _, planted = constant_case
    flat = planted.copy()
    flat[:, :, CONSTANT_UNIT] = 7.25  # constant in every sublayer: a zero-variance direction
    path = write_store(tmp_path / "flat.zarr", flat, chunk_rows=64)
    pca = pca_fit(path, n_components=7, n_projected=2, block_rows=64, per_sublayer=True)
    rows = flat[:, :-1].reshape(-1, flat.shape[2]).astype(np.float64)
    reference = PCA(n_components=6, svd_solver="full").fit(rows)
    ratio = pca["explained_variance_ratio"].values
    np.testing.assert_allclose(ratio[:6], reference.explained_variance_ratio_, rtol=1e-5)
    assert ratio[6] == pytest.approx(0.0, abs=1e-9)  # the constant unit's direction
    assert np.abs(pca["components"].values[:6, CONSTANT_UNIT]).max() < 1e-6
    assert pca["mean"].values[CONSTANT_UNIT] == pytest.approx(7.25)
    for name in ("projection", "sublayer_cumulative", "sublayer_cumulative_own"):
        assert np.isfinite(pca[name].values).all(), name


def test_cae_standardize_keeps_a_constant_unit_finite(constant_case, tmp_path):
    _, _, planted = constant_case
    flat = planted.copy()
    flat[:, :, CONSTANT_UNIT] = 7.25
    path = write_store(tmp_path / "flat.zarr", flat, chunk_rows=64)
    samples = np.arange(flat.shape[0])
    blocks = SampleBlocks(path, samples, list(range(len(NAMES) - 1)), memory_gib=1.0)
    norm = fit_normaliser(blocks, "standardize")
    rows = flat[:, :-1].reshape(-1, flat.shape[2]).astype(np.float64)
    others = [u for u in range(flat.shape[2]) if u != CONSTANT_UNIT]
    np.testing.assert_allclose(norm.mean.numpy()[others], rows[:, others].mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.scale.numpy()[others], rows[:, others].std(0), rtol=1e-5)
    assert norm.mean[CONSTANT_UNIT] == pytest.approx(7.25) and norm.scale[CONSTANT_UNIT] == 1.0
    z = norm(torch.from_numpy(rows.astype(np.float32))).numpy()
    assert np.isfinite(z).all() and (z[:, CONSTANT_UNIT] == 0).all()
    np.testing.assert_allclose(z[:, others].std(0), 1.0, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# 3. shards never share a chunk


@pytest.fixture(scope="module")
def shard_stores(llama_dir, dataset, tmp_path_factory):
    """The toy dataset in one store and in two chunk-aligned shard stores (texts 0-16, 16-20)."""
    root = tmp_path_factory.mktemp("shards")
    single = record(llama_dir, dataset, root / "single.zarr")
    shards = [record(llama_dir, dataset, root / f"{i}.zarr", shard=i, n_shards=2) for i in (0, 1)]
    return single, shards


def _copy_with(src: Path, dst: Path, **attrs) -> Path:
    shutil.copytree(src, dst)
    group = zarr.open_group(str(dst), mode="r+")
    group.attrs.update(attrs)
    with warnings.catch_warnings():  # zarr's note that consolidation is an extension to v3
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(str(dst), zarr_format=3)
    return dst


def _chunk_files(store: Path) -> list[Path]:
    return sorted(f for f in (store / "resid" / "c").rglob("*") if f.is_file())


def test_shards_declare_the_whole_dataset(shard_stores):
    _, shards = shard_stores
    ranges = [open_store(s).attrs["text_range"] for s in shards]
    assert ranges == [[0, 16], [16, 20]]
    assert {open_store(s).attrs["dataset_n_texts"] for s in shards} == {N_TEXTS}


def test_overlapping_shards_are_refused_naming_both(shard_stores, tmp_path):
    """Shard 1 relabelled as texts 8..20: its range overlaps shard 0's texts 0..16."""
    _, (first, second) = shard_stores
    bad = _copy_with(second, tmp_path / "1.zarr", text_range=[8, 20])
    with pytest.raises(StoreError) as caught:
        merge_shards([first, bad], tmp_path / "merged.zarr")
    assert str(first) in str(caught.value) and str(bad) in str(caught.value)
    assert "overlap" in str(caught.value)
    assert not (tmp_path / "merged.zarr").exists()


@pytest.mark.parametrize(
    ("which", "attrs", "match"),
    [
        (1, {"text_range": [17, 20]}, "leave a gap"),
        (1, {"dataset_n_texts": 24}, "a shard after .* is missing"),
        (0, {"text_range": [1, 16]}, "starts at text 1"),
        (1, {"shard": 0}, "pass the shard stores in shard order"),
        (0, {"n_shards": 3}, "one of 3 shards, but 2 are merged"),
    ],
)
def test_shards_that_do_not_tile_the_dataset_are_refused(
    shard_stores, tmp_path, which, attrs, match
):
    _, shards = shard_stores
    shards = list(shards)
    shards[which] = _copy_with(shards[which], tmp_path / f"{which}.zarr", **attrs)
    with pytest.raises(StoreError, match=match):
        merge_shards(shards, tmp_path / "merged.zarr")


def test_rows_that_belong_to_another_shard_are_refused(shard_stores, tmp_path):
    """The attributes agree, but shard 1's rows say they are texts 0..3: two shards hold them."""
    _, (first, second) = shard_stores
    bad = tmp_path / "1.zarr"
    shutil.copytree(second, bad)
    zarr.open_group(str(bad), mode="r+")["text_index"][:] = np.arange(4)
    with pytest.raises(StoreError, match=f"shard {bad} holds text 0"):
        merge_shards([first, bad], tmp_path / "merged.zarr")


def test_a_chunk_file_beyond_a_shards_rows_is_refused(shard_stores, tmp_path):
    """A stray chunk in shard 0 (row chunk 2, past its 16 rows) would be linked over shard 1's
    first chunk."""
    _, (first, second) = shard_stores
    bad = tmp_path / "0.zarr"
    shutil.copytree(first, bad)
    shutil.copytree(bad / "resid" / "c" / "1", bad / "resid" / "c" / "2")
    with pytest.raises(StoreError, match=f"shard {bad} has chunk 2 past its rows"):
        merge_shards([bad, second], tmp_path / "merged.zarr")


def test_one_chunk_claimed_by_two_shards_is_refused(shard_stores):
    """The link plan itself, for shards that are not chunk-aligned (merge_shards copies those):
    both shards' chunk 0 would become merged chunk 0."""
    _, (first, second) = shard_stores
    with pytest.raises(StoreError, match=r"chunk c/0/0/0 .* both shard .*1\.zarr and shard .*0\.z"):
        # 4 rows then 16: the second shard starts inside chunk 0, which the first already fills.
        _plan_links([second, first], [4, 16], CHUNK_ROWS)


def test_concurrent_shard_extractions_own_their_chunks_and_merge_to_one_store(
    llama_dir, dataset, shard_stores, tmp_path, monkeypatch
):
    """Two shards extracted at the same time (threads that meet at a barrier inside their first
    write, so the writes overlap): each chunk file of the merged store is a hard link to exactly
    one shard's chunk file, every shard chunk is used once, and the data equal one extraction."""
    single, _ = shard_stores
    barrier = threading.Barrier(2, timeout=60)
    writes: dict[str, list[tuple[int, int]]] = {}
    lock = threading.Lock()
    original = extract._write_block

    def meeting_write(resid, rows, buffer, store_dtype):
        store = Path(resid.store.root).name  # the shard's .partial directory
        with lock:
            first = store not in writes
            writes.setdefault(store, []).append((rows.start, rows.stop))
        if first:
            barrier.wait()  # both shards are writing now: a deadlock here means they were not
        original(resid, rows, buffer, store_dtype)

    monkeypatch.setattr(extract, "_write_block", meeting_write)
    # Real shards are separate processes. In threads, model loading must not overlap: transformers'
    # from_pretrained switches process-wide state (weight init, tying) and two loads at once leave
    # it wrong for every later load in this process (a later GPT-2 came back untied).
    from residual_dynamics.inputs import models

    load, loading = models.load_model, threading.Lock()

    def load_one_at_a_time(*args, **kwargs):
        with loading:
            return load(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", load_one_at_a_time)
    paths = [tmp_path / f"{i}.zarr" for i in (0, 1)]
    errors = []

    def run(i):
        try:
            record(llama_dir, dataset, paths[i], shard=i, n_shards=2)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert writes == {"0.zarr.partial": [(0, 8), (8, 16)], "1.zarr.partial": [(0, 4)]}
    merged = tmp_path / "merged.zarr"
    merge_shards(paths, merged)
    owners = {}
    for i, shard in enumerate(paths):
        for f in _chunk_files(shard):
            owners[os.stat(f).st_ino] = (i, f)
    merged_files = _chunk_files(merged)
    linked = [owners.get(os.stat(f).st_ino) for f in merged_files]
    assert all(owner is not None for owner in linked)  # every merged chunk is a shard's chunk
    assert len({str(o[1]) for o in linked}) == len(owners) == len(merged_files)  # one to one
    assert all(os.stat(f).st_nlink == 2 for f in merged_files)
    # Merged chunk i comes from shard 0 for rows < 16, shard 1 after.
    for f, (owner, _) in zip(merged_files, linked, strict=True):
        row_chunk = int(f.relative_to(merged / "resid" / "c").parts[0])
        assert owner == (0 if row_chunk < 2 else 1)
    a, b = open_store(merged), open_store(single)
    for name in ("resid", "text_index", "text_id", "token_id", "n_tokens"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)

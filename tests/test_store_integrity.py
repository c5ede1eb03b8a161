"""A damaged store is an error that names it and the fix, never a silent number: a flipped byte
inside a compressed chunk, a truncated chunk file, an emptied one and a deleted one, read directly,
through Dask (as the statistics read) and after pickling (as Dask's workers get it). Stores written
before the checksum was added still read, with a warning that names how to checksum them."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from residual_dynamics.analysis.unit_means import unit_means
from residual_dynamics.io.integrity import CheckedLocalStore, StoreCorruptError, crc32c_ok
from residual_dynamics.io.store import (
    FORMAT_VERSION,
    ROW_ARRAYS,
    StoreError,
    create_store,
    finalise,
    open_store,
    temporary_path,
)

NAMES = ["attn0", "mlp0", "attn1", "mlp1", "final"]
N, D, CHUNK_ROWS = 24, 6, 8


@pytest.fixture
def values():
    return np.random.default_rng(0).normal(size=(N, len(NAMES), D)).astype(np.float32)


def write_store(path: Path, resid: np.ndarray, attrs: dict | None = None) -> Path:
    tmp = temporary_path(path)
    group = create_store(tmp, N, NAMES, D, "float32", CHUNK_ROWS, attrs or {"model": "m"})
    group["resid"][:] = resid
    for name, kind in ROW_ARRAYS.items():
        group[name][:] = np.arange(N).astype(kind)
    finalise(tmp, path)
    return path


def chunk(path: Path, row_chunk: int = 1, sublayer: int = 2) -> Path:
    return path / "resid" / "c" / str(row_chunk) / str(sublayer) / "0"


def damage(path: Path, how: str) -> Path:
    target = chunk(path)
    raw = bytearray(target.read_bytes())
    if how == "flip":
        # A byte in the middle of the zstd payload: zstd alone would often decode it to other numbers.
        raw[len(raw) // 2] ^= 0x10
        target.write_bytes(bytes(raw))
    elif how == "truncate":
        target.write_bytes(bytes(raw[: len(raw) - 7]))
    elif how == "empty":
        target.write_bytes(b"")
    elif how == "delete":
        target.unlink()
    return target


def test_new_stores_checksum_every_chunk_and_read_back_exactly(values, tmp_path):
    path = write_store(tmp_path / "s.zarr", values)
    for name in ("resid", *ROW_ARRAYS, "sublayer"):
        codecs = [c.to_dict()["name"] for c in zarr.open_array(str(path / name)).metadata.codecs]
        assert codecs[-1] == "crc32c", (name, codecs)
    assert crc32c_ok(chunk(path).read_bytes())
    np.testing.assert_array_equal(open_store(path)["resid"][:], values)


def test_an_all_nan_block_is_written_and_reads_as_nan_not_as_damage(values, tmp_path):
    """A block of a bad text that is NaN throughout (the fill value) is still written, so a missing
    chunk file can only be damage."""
    values[CHUNK_ROWS : 2 * CHUNK_ROWS, 2] = np.nan
    path = write_store(tmp_path / "s.zarr", values)
    assert chunk(path).exists()
    np.testing.assert_array_equal(open_store(path)["resid"][:], values)


@pytest.mark.parametrize("how", ["flip", "truncate", "empty", "delete"])
def test_a_damaged_chunk_is_an_error_naming_the_store_and_the_fix(values, tmp_path, how):
    path = write_store(tmp_path / "model" / "texts.zarr", values)
    damage(path, how)
    with pytest.raises(StoreCorruptError) as caught:
        open_store(path)["resid"][:]
    message = str(caught.value)
    assert str(path) in message and "resid/c/1/2/0" in message
    assert f"Delete {path}" in message and "extract_activations and merge_shards" in message
    assert ("missing" if how == "delete" else "crc32c checksum") in message
    # Undamaged chunks still read: the error is about the damaged one only.
    np.testing.assert_array_equal(open_store(path)["resid"][:8], values[:8])
    # It is a StoreError, what every reader of stores already reports.
    assert isinstance(caught.value, StoreError)


def test_the_statistics_report_the_damaged_chunk_not_a_number(values, tmp_path):
    path = write_store(tmp_path / "texts.zarr", values)
    damage(path, "flip")
    with pytest.raises(StoreCorruptError, match="fails its crc32c checksum"):
        unit_means(path)
    # And through a pickled copy of the array, as a Dask worker process reads it.
    resid = pickle.loads(pickle.dumps(open_store(path)["resid"]))
    assert isinstance(resid.store, CheckedLocalStore)
    with pytest.raises(StoreCorruptError, match=str(path)):
        da.from_zarr(resid).sum().compute(scheduler="synchronous")


def test_shard_and_control_stores_name_their_own_rule(values, tmp_path):
    shard = write_store(tmp_path / "texts.shards" / "0.zarr", values)
    control = write_store(tmp_path / "texts--walk.zarr", values, {"control": "walk"})
    for path, rule in ((shard, "extract_activations for this shard"), (control, "control_store")):
        damage(path, "truncate")
        with pytest.raises(StoreCorruptError, match=rule):
            open_store(path)["resid"][:]


def test_a_store_written_before_checksums_reads_with_a_warning(values, tmp_path, caplog):
    """Zarr's defaults of the earlier writer (zstd, no crc32c): the same numbers, unchecked."""
    path = tmp_path / "old.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    resid = group.create_array(
        "resid", shape=values.shape, chunks=(CHUNK_ROWS, 1, D), dtype="float32", fill_value=np.nan
    )
    resid[:] = values
    group.attrs.update({"format_version": FORMAT_VERSION, "sublayers": NAMES})
    zarr.consolidate_metadata(str(path), zarr_format=3)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(open_store(path)["resid"][:], values)
    assert "without chunk checksums" in caplog.text and f"Delete {path}" in caplog.text


def test_a_result_is_read_whole_without_dask_from_a_path_or_a_rule_list(tmp_path):
    """io.atomic.read_result: what write_dataset_atomic wrote comes back equal, as numpy (no Dask
    chunks); a rule's one-path list gives the same, an empty list or None gives None (an analysis
    switched off), and two paths are refused."""
    import xarray as xr

    from residual_dynamics.io.atomic import read_result, write_dataset_atomic

    data = xr.Dataset(
        {"r": (("transition", "unit"), np.arange(12.0).reshape(3, 4))},
        coords={"transition": ["a", "b", "c"]},
        attrs={"model": "m"},
    )
    path = tmp_path / "stats.zarr"
    write_dataset_atomic(data, path)
    for given in (str(path), path, [str(path)]):
        got = read_result(given)
        xr.testing.assert_identical(got, data)
        assert not got.chunks and isinstance(got["r"].data, np.ndarray)
    assert read_result([]) is None and read_result(None) is None
    with pytest.raises(ValueError):
        read_result([str(path), str(path)])

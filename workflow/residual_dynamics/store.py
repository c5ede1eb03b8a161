"""The activation store: a Zarr v3 group that holds the residual stream of one model on one dataset.

Contract (tests, the report and other tools read it):
- array ``resid``: (row, sublayer, unit) with dimension names ("sample", "sublayer", "unit");
  a chunk holds one sublayer of a block of rows, so per-sublayer reads touch only their chunks.
- per-row arrays ``text_id``, ``text_index``, ``token_position``, ``n_tokens``, ``token_id``,
  ``truncated`` (dimension "sample"), so any row can be traced to its input.
- group attributes: see ``STORE_ATTRS``; ``format_version`` guards against old stores.
- a store is complete only when written whole: it is built at a temporary path and renamed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from .atomic import move_into_place, partial_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STORE_ATTRS = (
    "format_version",
    "model",
    "model_source",
    "model_revision",
    "architecture",
    "norm",
    "dtype",
    "store_dtype",
    "sublayers",
    "positions",
    "dataset",
    "dataset_hash",
    "shuffle_tokens",
    "n_texts",
    "n_samples",
    "seed",
    "versions",
)
ROW_ARRAYS = {
    "text_id": "int64",
    "text_index": "int64",
    "token_position": "int32",
    "n_tokens": "int32",
    "token_id": "int64",
    "truncated": "bool",
}


class StoreError(ValueError):
    """A store is missing, incomplete, or was written by an incompatible version."""


def chunk_rows_for(d_model: int, itemsize: int, target_mib: float, n_rows: int) -> int:
    """Rows per chunk so that one (rows, 1 sublayer, d_model) chunk is about ``target_mib``."""
    rows = int(target_mib * 2**20 // (d_model * itemsize))
    return max(1, min(rows, max(n_rows, 1)))


def temporary_path(path: Path) -> Path:
    return partial_path(path)


def create_store(
    path: Path,
    n_rows: int,
    sublayers: Sequence[str],
    d_model: int,
    store_dtype: str,
    chunk_rows: int,
    attrs: dict,
) -> zarr.Group:
    """Create an empty store at ``path`` (callers pass a temporary path and rename it later)."""
    if path.exists():
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array(
        "resid",
        shape=(n_rows, len(sublayers), d_model),
        chunks=(chunk_rows, 1, d_model),
        dtype=store_dtype,
        dimension_names=("sample", "sublayer", "unit"),
        fill_value=np.nan,
    )
    for name, dtype in ROW_ARRAYS.items():
        group.create_array(
            name,
            shape=(n_rows,),
            chunks=(max(n_rows, 1),),
            dtype=dtype,
            dimension_names=("sample",),
        )
    # Coordinates so that xarray shows names, not integers, on the sublayer axis.
    sub = group.create_array(
        "sublayer",
        shape=(len(sublayers),),
        dtype=str,
        dimension_names=("sublayer",),
    )
    sub[:] = np.asarray(sublayers, dtype=object)
    group.attrs.update(
        {
            **attrs,
            "format_version": FORMAT_VERSION,
            "sublayers": list(sublayers),
            "n_samples": n_rows,
            "store_dtype": store_dtype,
        }
    )
    return group


def finalise(tmp_path: Path, final_path: Path) -> None:
    """Move a fully written store into place; an old store at final_path is replaced."""
    with warnings.catch_warnings():
        # Consolidated metadata is a zarr-python extension to v3; xarray reads it for speed.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(tmp_path), zarr_format=3)
    move_into_place(tmp_path, final_path)


def open_store(path: Path | str) -> zarr.Group:
    """Open a complete store for reading, checking it is one this version understands."""
    path = Path(path)
    if not path.exists():
        if temporary_path(path).exists():
            raise StoreError(
                f"{path} was never completed (only {temporary_path(path).name} exists: an "
                "interrupted extraction). Rerun the workflow; it will redo the extraction"
            )
        raise StoreError(f"no activation store at {path}")
    group = zarr.open_group(str(path), mode="r")
    version = group.attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format_version {version!r}; this version reads {FORMAT_VERSION}. "
            "Delete the store and rerun the extraction (snakemake --forcerun extract_activations)"
        )
    return group


def merge_shards(shard_paths: Sequence[Path], final_path: Path) -> None:
    """Join shard stores (consecutive row ranges) into one store at final_path.

    When every shard but the last holds a whole number of chunks, the chunk files are hard-linked
    into place (no copy, no extra disk); otherwise rows are copied shard by shard.
    """
    shards = [open_store(p) for p in shard_paths]
    first = shards[0]
    for shard, p in zip(shards, shard_paths, strict=True):
        for key in ("sublayers", "model", "dataset", "dataset_hash", "store_dtype"):
            if shard.attrs.get(key) != first.attrs.get(key):
                raise StoreError(f"shard {p} differs from {shard_paths[0]} in '{key}'")
    sizes = [s["resid"].shape[0] for s in shards]
    n_rows = sum(sizes)
    _, n_sub, d_model = first["resid"].shape
    chunk_rows = first["resid"].chunks[0]
    tmp = temporary_path(Path(final_path))
    attrs = dict(first.attrs)
    attrs.pop("n_samples", None)
    attrs["n_shards"] = len(shards)
    # The merged store is the whole dataset, not shard 0: per-shard attributes are recomputed.
    attrs.pop("shard", None)
    attrs["n_texts"] = sum(int(s.attrs.get("n_texts", 0)) for s in shards)
    ranges = [s.attrs.get("text_range") for s in shards]
    if all(ranges):
        attrs["text_range"] = [ranges[0][0], ranges[-1][1]]
    aligned = all(s % chunk_rows == 0 for s in sizes[:-1]) and all(
        s["resid"].chunks[0] == chunk_rows for s in shards
    )
    group = create_store(
        tmp, n_rows, attrs["sublayers"], d_model, attrs["store_dtype"], chunk_rows, attrs
    )
    offset = 0
    for shard, shard_path, size in zip(shards, shard_paths, sizes, strict=True):
        if aligned:
            _link_chunks(Path(shard_path) / "resid", tmp / "resid", offset // chunk_rows)
        else:
            for start in range(0, size, chunk_rows):
                stop = min(size, start + chunk_rows)
                group["resid"][offset + start : offset + stop] = shard["resid"][start:stop]
        for name in ROW_ARRAYS:
            group[name][offset : offset + size] = shard[name][:]
        offset += size
    finalise(tmp, Path(final_path))
    log.info(
        "merged %d shards into %s (%s)", len(shards), final_path, "linked" if aligned else "copied"
    )


def _link_chunks(src_array: Path, dst_array: Path, row_chunk_offset: int) -> None:
    """Hard-link chunk files c/i/j/k of one array into another with i shifted by the offset."""
    src_chunks = src_array / "c"
    if not src_chunks.exists():
        return
    for row_dir in src_chunks.iterdir():
        target = dst_array / "c" / str(int(row_dir.name) + row_chunk_offset)
        for file in row_dir.rglob("*"):
            if file.is_file():
                dst = target / file.relative_to(row_dir)
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(file, dst)
                except OSError:  # another file system: copy instead
                    shutil.copy2(file, dst)


def describe(path: Path | str) -> str:
    group = open_store(path)
    resid = group["resid"]
    return json.dumps(
        {"shape": resid.shape, "chunks": resid.chunks, **dict(group.attrs)}, indent=1, default=str
    )

"""The activation store: a Zarr v3 group that holds the residual stream of one model on one dataset.

Contract (tests, the report and other tools read it):
- array ``resid``: (row, sublayer, unit) with dimension names ("sample", "sublayer", "unit");
  a chunk holds one sublayer of a block of rows, so per-sublayer reads touch only their chunks.
- per-row arrays ``text_id``, ``text_index``, ``token_position``, ``n_tokens``, ``token_id``,
  ``truncated`` (dimension "sample"), so any row can be traced to its input.
- group attributes: see ``STORE_ATTRS``; ``format_version`` guards against old stores.
- a store is complete only when written whole: it is built at a temporary path and renamed.
- every chunk ends with a CRC-32C (Zarr v3's ``crc32c`` codec after zstd); :func:`open_store`
  checks each chunk it reads and names the store and the fix for a changed, truncated or missing
  chunk file (:mod:`residual_dynamics.io.integrity`). Stores without it are read unchecked.
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

from residual_dynamics.io.atomic import move_into_place, partial_path
from residual_dynamics.io.integrity import (
    CHECKSUM_CODEC,
    CheckedLocalStore,
    StoreCorruptError,  # noqa: F401 - raised when a chunk is read; exported with StoreError
    StoreError,
    has_checksum,
    redo_hint,
)

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


# Every chunk is written, even one that holds only the fill value (an all-NaN block of a bad text),
# so that a chunk file missing on reading is always damage, never an empty block (.integrity).
zarr.config.set({"array.write_empty_chunks": True})


def chunk_rows_for(d_model: int, itemsize: int, target_mib: float, n_rows: int) -> int:
    """Rows per chunk so that one (rows, 1 sublayer, d_model) chunk is about ``target_mib``."""
    rows = int(target_mib * 2**20 // (d_model * itemsize))
    return max(1, min(rows, max(n_rows, 1)))


def temporary_path(path: Path) -> Path:
    return partial_path(path)


def checksummed() -> list:
    """Zarr's default compression (zstd level 0) followed by a CRC-32C of the compressed chunk,
    so a flipped byte or a truncated file is caught on reading (:mod:`.integrity`)."""
    return [zarr.codecs.ZstdCodec(level=0, checksum=False), zarr.codecs.Crc32cCodec()]


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
        compressors=checksummed(),
    )
    for name, dtype in ROW_ARRAYS.items():
        group.create_array(
            name,
            shape=(n_rows,),
            chunks=(max(n_rows, 1),),
            dtype=dtype,
            dimension_names=("sample",),
            compressors=checksummed(),
        )
    # Coordinates so that xarray shows names, not integers, on the sublayer axis.
    sub = group.create_array(
        "sublayer",
        shape=(len(sublayers),),
        dtype=str,
        dimension_names=("sublayer",),
        compressors=checksummed(),
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
    plain = zarr.open_group(str(path), mode="r")
    version = plain.attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format_version {version!r}; this version reads {FORMAT_VERSION}. "
            "Delete the store and rerun the extraction (snakemake --forcerun extract_activations)"
        )
    hint = redo_hint(path, dict(plain.attrs))
    if not has_checksum(path):
        _warn_unchecked(path, hint)
        return plain
    # Every chunk read through this group is checked first (a StoreCorruptError names the store).
    return zarr.open_group(store=CheckedLocalStore(path, hint=hint), mode="r")


_WARNED: set[Path] = set()


def _warn_unchecked(path: Path, hint: str) -> None:
    """Once per store and process: an old store reads as before, but unchecked."""
    if path.resolve() in _WARNED:
        return
    _WARNED.add(path.resolve())
    log.warning(
        "%s was written without chunk checksums (%s codec; stores written before it was added): "
        "it is read as before, but a changed byte in a chunk file would go unnoticed. To "
        "checksum it: %s",
        path,
        CHECKSUM_CODEC,
        hint,
    )


def merge_shards(shard_paths: Sequence[Path], final_path: Path) -> None:
    """Join shard stores (consecutive row ranges) into one store at final_path.

    When every shard but the last holds a whole number of chunks, the chunk files are hard-linked
    into place (no copy, no extra disk); otherwise rows are copied shard by shard. Shards that
    overlap, leave a gap, come out of order or would link one chunk twice are refused
    (:func:`check_shard_layout`, :func:`_plan_links`).
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
    check_shard_layout(shards, shard_paths)
    links = _plan_links(shard_paths, sizes, chunk_rows) if aligned else {}
    group = create_store(
        tmp, n_rows, attrs["sublayers"], d_model, attrs["store_dtype"], chunk_rows, attrs
    )
    offset = 0
    for shard, shard_path, size in zip(shards, shard_paths, sizes, strict=True):
        if aligned:
            _link_chunks(links[Path(shard_path)], tmp / "resid")
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


def check_shard_layout(shards: Sequence[zarr.Group], shard_paths: Sequence[Path]) -> None:
    """Refuse shards that do not tile the dataset: each shard's texts must follow the previous
    shard's with no overlap and no gap, from text 0 to the dataset's end, in shard order.
    Overlapping shards would put one text (and, linked, one chunk) in the merged store twice."""
    names = [str(p) for p in shard_paths]
    n = len(shards)
    for i, (shard, name) in enumerate(zip(shards, names, strict=True)):
        declared = shard.attrs.get("n_shards")
        if declared is not None and int(declared) != n:
            raise StoreError(f"shard {name} is one of {declared} shards, but {n} are merged")
        if shard.attrs.get("shard") is not None and int(shard.attrs["shard"]) != i:
            raise StoreError(
                f"shard {name} is shard {shard.attrs['shard']} but is merged as number {i}: "
                "pass the shard stores in shard order"
            )
    ranges = [shard.attrs.get("text_range") for shard in shards]
    if all(r is not None for r in ranges):
        if ranges[0][0] != 0:
            raise StoreError(f"shard {names[0]} starts at text {ranges[0][0]}, not 0")
        for i in range(n - 1):
            (_, stop), (start, _) = ranges[i], ranges[i + 1]
            if stop != start:
                how = "overlap" if stop > start else "leave a gap"
                raise StoreError(
                    f"shards {names[i]} (texts {ranges[i]}) and {names[i + 1]} (texts "
                    f"{ranges[i + 1]}) {how}: shards must cover consecutive, disjoint text "
                    "ranges. Re-extract them with one extraction.n_shards"
                )
        total = shards[-1].attrs.get("dataset_n_texts")
        if total is not None and ranges[-1][1] != int(total):
            raise StoreError(
                f"shards end at text {ranges[-1][1]} but the dataset has {total} texts: a shard "
                f"after {names[-1]} is missing"
            )
    # The rows themselves, whatever the attributes say: texts in order, each in its own range.
    previous = -1
    for i, (shard, name) in enumerate(zip(shards, names, strict=True)):
        index = shard["text_index"][:]
        if len(index) == 0:
            continue
        low, high = (ranges[i][0], ranges[i][1]) if ranges[i] is not None else (None, None)
        if index[0] < previous or (np.diff(index) < 0).any():
            raise StoreError(
                f"shard {name} holds text {int(index.min())}, which an earlier shard or row "
                "already passed: shards overlap or are out of order"
            )
        if low is not None and (index[0] < low or index[-1] >= high):
            raise StoreError(f"shard {name} holds texts outside its text_range {ranges[i]}")
        previous = int(index[-1])


def _plan_links(
    shard_paths: Sequence[Path], sizes: Sequence[int], chunk_rows: int
) -> dict[Path, list[tuple[Path, Path]]]:
    """Per shard, (source file, path under the merged array) of every resid chunk file, with the
    row chunk index shifted by the shard's offset. Refuses a chunk claimed by two shards: a
    hard link would make them one file, and zarr has no locks to share one chunk."""
    plan: dict[Path, list[tuple[Path, Path]]] = {}
    owner: dict[Path, Path] = {}
    offset = 0
    for shard_path, size in zip(shard_paths, sizes, strict=True):
        shard_path = Path(shard_path)
        src_chunks = shard_path / "resid" / "c"
        links = []
        for row_dir in sorted(src_chunks.iterdir()) if src_chunks.exists() else []:
            row_chunk = int(row_dir.name)
            if row_chunk * chunk_rows >= size:
                raise StoreError(f"shard {shard_path} has chunk {row_dir.name} past its rows")
            target = Path("c") / str(row_chunk + offset // chunk_rows)
            for file in sorted(row_dir.rglob("*")):
                if file.is_file():
                    dst = target / file.relative_to(row_dir)
                    if dst in owner:
                        raise StoreError(
                            f"chunk {dst} of the merged store would come from both shard "
                            f"{owner[dst]} and shard {shard_path}: shards overlap"
                        )
                    owner[dst] = shard_path
                    links.append((file, dst))
        plan[shard_path] = links
        offset += size
    return plan


def _link_chunks(links: Sequence[tuple[Path, Path]], dst_array: Path) -> None:
    """Hard-link planned chunk files into the merged array."""
    for src, relative in links:
        dst = dst_array / relative
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except FileExistsError:  # planned links are distinct: never overwrite a chunk
            raise
        except OSError:  # another file system: copy instead
            shutil.copy2(src, dst)


def describe(path: Path | str) -> str:
    group = open_store(path)
    resid = group["resid"]
    return json.dumps(
        {"shape": resid.shape, "chunks": resid.chunks, **dict(group.attrs)}, indent=1, default=str
    )


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers, for a store's attributes."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("residual-dynamics", "torch", "transformers", "zarr", "numpy", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out

"""Writing results so that a reader never sees half of one: build at ``<name>.partial``, then
move into place. An interrupted job leaves only the ``.partial`` behind.

One writer per kind of result: text, JSON (numpy values converted) and xarray datasets (Zarr v3)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np


def partial_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def move_into_place(tmp: Path | str, path: Path | str) -> None:
    """Rename a finished file or directory over ``path`` (an older result there is replaced)."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_text_atomic(path: Path | str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.write_text(text, encoding="utf-8")
    move_into_place(tmp, path)


def json_value(value):
    """``default=`` for ``json.dumps``: numpy scalars and arrays as plain Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: Path | str, payload, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(payload, indent=indent, default=json_value))


def write_dataset_atomic(data, path: Path | str, text_as_object: bool = False) -> None:
    """Write an xarray Dataset to Zarr at a temporary path, then rename into place.

    ``text_as_object`` stores text labels as variable-length strings (Zarr v3 has no stable
    fixed-width string type)."""
    if text_as_object:
        data = data.copy()
        for name, variable in {**data.coords, **data.data_vars}.items():
            if variable.dtype.kind == "U":
                data[name] = variable.astype(object)
    tmp = partial_path(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        data.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)
    move_into_place(tmp, path)


def read_result(path):
    """A result dataset (as :func:`write_dataset_atomic` writes them), read whole into memory
    without Dask (the results are small, and importing Dask cost a job about 1.6 s). ``path``
    may be a rule's list input: its one path, or None for an empty list (an analysis off)."""
    import xarray as xr

    if not isinstance(path, str | Path):
        if not path:
            return None
        (path,) = path
    return xr.open_zarr(str(path), chunks=None).load()

"""The study's results on disk: the lens and walk arrays as Zarr v3 groups with dimension names,
readable by ``xarray.open_zarr`` (no xarray needed to write), each written atomically."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from residual_dynamics.io.atomic import json_value, move_into_place, partial_path, read_result


def write_arrays(path: Path | str, arrays: dict, attrs: dict) -> None:
    """name -> (dims, values) into a Zarr v3 group with dimension names, written atomically."""
    import zarr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for name, (dims, values) in arrays.items():
        values = np.asarray(values)
        array = group.create_array(
            name, shape=values.shape, dtype=values.dtype, dimension_names=tuple(dims)
        )
        array[...] = values
    group.attrs.update(json.loads(json.dumps(attrs, default=json_value)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(tmp), zarr_format=3)
    move_into_place(tmp, path)


def read_arrays(path: Path | str):
    """A group written by ``write_arrays``, loaded into memory as an xarray Dataset (the
    project's one result reader: whole, without Dask)."""
    return read_result(path)

"""Statistics over activation stores, read lazily with Dask so memory does not grow with N."""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .atomic import move_into_place, partial_path
from .store import open_store


def analysed_sublayers(group, choice: str) -> list[int]:
    """Indices of the sublayers an analysis uses: 'paper' drops the extra final row."""
    names = list(group.attrs["sublayers"])
    if choice == "paper":
        return [i for i, n in enumerate(names) if n != "final"]
    return list(range(len(names)))


def resid_array(path: Path | str) -> tuple[da.Array, object]:
    """The store's resid array as a Dask array whose chunks are the store's chunks."""
    group = open_store(path)
    return da.from_zarr(group["resid"]), group


def unit_means(store_path: Path | str, sublayers: str = "paper", threads: int = 1) -> xr.Dataset:
    """Mean activation per sublayer and unit over samples (the paper's Figure 1B).

    NaN rows (never expected; a failed overflow) are excluded per element and counted.
    """
    resid, group = resid_array(store_path)
    keep = analysed_sublayers(group, sublayers)
    names = [group.attrs["sublayers"][i] for i in keep]
    x = resid[:, keep, :].astype(np.float64)
    finite = da.isfinite(x)
    total = da.where(finite, x, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    with dask.config.set(scheduler="threads", num_workers=max(1, threads)):
        total, count = dask.compute(total, count)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return xr.Dataset(
        {
            "mean": (("sublayer", "unit"), mean.astype(np.float32)),
            "n_finite": (("sublayer", "unit"), count.astype(np.int64)),
        },
        coords={"sublayer": names, "unit": np.arange(mean.shape[1])},
        attrs={
            "model": group.attrs.get("model"),
            "dataset": group.attrs.get("dataset"),
            "n_samples": int(resid.shape[0]),
            "norm": group.attrs.get("norm"),
        },
    )


def write_dataset_atomic(data: xr.Dataset, path: Path | str) -> None:
    """Write an xarray Dataset to Zarr at a temporary path, then rename into place."""
    tmp = partial_path(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        data.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)
    move_into_place(tmp, path)

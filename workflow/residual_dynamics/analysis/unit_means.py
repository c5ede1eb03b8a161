"""Statistics over activation stores, read lazily with Dask so memory does not grow with N."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from residual_dynamics.io.store import StoreError, open_store


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


def non_finite_error(store_path, count: np.ndarray, bad_rows: np.ndarray, names) -> StoreError:
    """The error for a store whose analysed rows hold NaN or inf (extraction refuses them, so the
    store was written elsewhere or by an older version)."""
    n_rows = len(bad_rows)
    missing = n_rows - count  # (sublayer, unit)
    rows = np.flatnonzero(bad_rows)
    where = [names[i] for i in np.flatnonzero(missing.sum(axis=1))]
    return StoreError(
        f"{store_path}: {int(missing.sum())} non-finite values (NaN or inf) in 'resid', in "
        f"{len(rows)} of {n_rows} samples (first: {', '.join(map(str, rows[:5]))}) at sublayers "
        f"{', '.join(where[:4])}{' ...' if len(where) > 4 else ''}. The statistics would be NaN or "
        "biased. Re-extract it (snakemake --forcerun extract_activations): extraction refuses "
        "non-finite activations and names the model's dtype to change"
    )


def unit_means(
    store_path: Path | str,
    sublayers: str = "paper",
    threads: int = 1,
    allow_non_finite: bool = False,
) -> xr.Dataset:
    """Mean activation per sublayer and unit over samples (the paper's Figure 1B).

    A store with NaN or inf in the analysed sublayers is refused (:class:`StoreError` naming the
    store and the count); with ``allow_non_finite`` those values are left out per element and
    counted in ``n_finite``.
    """
    resid, group = resid_array(store_path)
    keep = analysed_sublayers(group, sublayers)
    names = [group.attrs["sublayers"][i] for i in keep]
    x = resid[:, keep, :].astype(np.float64)
    finite = da.isfinite(x)
    total = da.where(finite, x, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    bad_rows = ~finite.all(axis=(1, 2))
    # One pass over the store for all three.
    with dask.config.set(scheduler="threads", num_workers=max(1, threads)):
        total, count, bad_rows = dask.compute(total, count, bad_rows)
    if bad_rows.any() and not allow_non_finite:
        raise non_finite_error(store_path, count, bad_rows, names)
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

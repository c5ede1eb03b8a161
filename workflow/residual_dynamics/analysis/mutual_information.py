"""Mutual information per unit between consecutive sublayers of a store (Figures 1G and 1H).

One transition at a time: the two sublayers' chunks are read (N x d each, bounded whatever the
store's size), and every unit's pair goes through the vectorised KDE estimator at once. The
Gaussian-from-r estimate comes for free; the k-NN (KSG) cross-check runs on a seeded subset of
units because it is slow.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import xarray as xr
from tqdm import tqdm

from residual_dynamics.analysis.bootstrap import resample_indices
from residual_dynamics.analysis.mi_estimators import mi_gaussian, mi_kde, mi_ksg
from residual_dynamics.analysis.transitions import transition_kind
from residual_dynamics.analysis.unit_means import analysed_sublayers
from residual_dynamics.inputs.models import resolve_device
from residual_dynamics.io.store import open_store

log = logging.getLogger(__name__)


def transition_mutual_information(
    store_path,
    *,
    sublayers: str = "paper",
    grid: int = 64,
    bandwidth="scott",
    pad: float = 0.0,
    n_samples: int | None = 1000,
    ksg_units: int = 64,
    device: str = "auto",
    seed: int = 0,
    bootstrap: int = 0,
    bootstrap_units: int = 64,
    progress: bool = True,
) -> xr.Dataset:
    """MI (nats) per transition and unit: KDE on a grid (the paper's), Gaussian-from-r, KSG.

    With ``bootstrap`` replicates, also ``mi_boot`` (replicate, transition): the curve (the mean
    over units of the KDE MI) on texts resampled by analysis.bootstrap's shared plan (the same
    for every recording with as many texts and the same seed: paired). Each replicate re-runs the
    KDE, so it runs on a seeded subset of ``bootstrap_units`` units and is centred on the full
    curve: replicate = full mean + (subset mean on the resample - subset mean on the texts). The
    spread of a mean over fewer units is the larger one, so the interval errs wide."""
    group = open_store(store_path)
    resid = group["resid"]
    keep = analysed_sublayers(group, sublayers)
    names = [group.attrs["sublayers"][i] for i in keep]
    n_rows, _, d = resid.shape
    rng = np.random.default_rng(seed)
    rows = np.arange(n_rows)
    if n_samples is not None and n_samples < n_rows:
        rows = np.sort(rng.choice(n_rows, size=n_samples, replace=False))
    ksg_set = np.sort(rng.choice(d, size=min(ksg_units, d), replace=False)) if ksg_units else []
    device = str(resolve_device(device))
    t_count = len(keep) - 1
    kde = np.full((t_count, d), np.nan, np.float32)
    gauss = np.full((t_count, d), np.nan, np.float32)
    ksg = np.full((t_count, len(ksg_set)), np.nan, np.float32)

    def sublayer(index: int) -> np.ndarray:
        return np.asarray(
            resid.get_orthogonal_selection((rows, keep[index], slice(None))), np.float64
        )

    boot_rows = resample_indices(len(rows), bootstrap, seed) if bootstrap else None
    boot_units = (
        np.sort(np.random.default_rng([seed, d, 2]).choice(d, min(bootstrap_units, d), False))
        if bootstrap
        else None
    )
    mi_boot = np.full((bootstrap, t_count), np.nan)
    current = sublayer(0)
    bar = tqdm(
        range(t_count),
        desc="mutual information",
        unit="transition",
        file=sys.stderr,
        disable=not progress,
    )
    for t in bar:
        following = sublayer(t + 1)
        kde[t] = mi_kde(current, following, grid=grid, bandwidth=bandwidth, pad=pad, device=device)
        gauss[t] = mi_gaussian(current, following)
        if len(ksg_set):
            ksg[t] = mi_ksg(current[:, ksg_set], following[:, ksg_set])
        if bootstrap:
            x, y = current[:, boot_units], following[:, boot_units]
            full = np.nanmean(kde[t]) if np.isfinite(kde[t]).any() else np.nan
            offset = full - np.nanmean(kde[t][boot_units])
            # every replicate's units side by side as columns: one batched KDE call
            values = mi_kde(
                np.concatenate([x[idx] for idx in boot_rows], axis=1),
                np.concatenate([y[idx] for idx in boot_rows], axis=1),
                grid=grid,
                bandwidth=bandwidth,
                pad=pad,
                device=device,
            ).reshape(bootstrap, -1)
            defined = np.isfinite(values).any(axis=1)
            mi_boot[defined, t] = np.nanmean(values[defined], axis=1) + offset
        current = following
    undefined = ~np.isfinite(kde)
    if undefined.any():
        log.warning(
            "%d unit-transition pairs have no defined MI (a constant unit): NaN, flagged in "
            "'undefined'",
            int(undefined.sum()),
        )
    labels = [f"{a}->{b}" for a, b in zip(names[:-1], names[1:], strict=True)]
    return xr.Dataset(
        {
            "mi_kde": (("transition", "unit"), kde),
            "mi_gaussian": (("transition", "unit"), gauss),
            "mi_ksg": (("transition", "ksg_unit"), ksg),
            "undefined": (("transition", "unit"), undefined),
            **({"mi_boot": (("replicate", "transition"), mi_boot)} if bootstrap else {}),
        },
        coords={
            "transition": np.arange(t_count),
            "transition_label": ("transition", labels),
            "transition_kind": ("transition", transition_kind(names)),
            "unit": np.arange(d),
            "ksg_unit": np.asarray(ksg_set, dtype=np.int64),
        },
        attrs={
            "model": group.attrs.get("model"),
            "dataset": group.attrs.get("dataset"),
            "n_samples": int(len(rows)),
            "grid": grid,
            "bandwidth": str(bandwidth),
            "pad": pad,
            "device": device,
            "bootstrap": int(bootstrap),
            "bootstrap_units": int(len(boot_units)) if bootstrap else 0,
            "bootstrap_seed": int(seed),
        },
    )

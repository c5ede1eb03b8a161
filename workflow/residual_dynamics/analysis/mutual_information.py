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
    progress: bool = True,
) -> xr.Dataset:
    """MI (nats) per transition and unit: KDE on a grid (the paper's), Gaussian-from-r, KSG."""
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
        },
    )

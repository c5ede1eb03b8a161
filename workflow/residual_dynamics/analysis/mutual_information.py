"""Mutual information per unit between consecutive sublayers of a store (Figures 1G and 1H).

One transition at a time: the two sublayers' chunks are read (N x d each, bounded whatever the
store's size), and every unit's pair goes through the vectorised estimators at once:

- ``mi_kde``: the paper's Gaussian KDE on the raw activations (by default its grid-free form,
  ``grid="auto"``: no ln(grid) ceiling; an integer grid is the paper's literal lattice);
- ``mi_copula_kde``: the same KDE on rank-Gaussianised margins (outlier- and tail-proof);
- ``mi_gcmi``: Gaussian-copula MI (Ince et al. 2017), the Gaussian part of the dependence;
- ``mi_gaussian``: -0.5 ln(1 - r^2) from the raw Pearson r; ``mi_ksg``: k-NN on a seeded subset.

``estimator`` picks the headline (Figure 1G, the curve compared with the paper, the claims and
the bootstrap). Each unit-transition pair carries flags: ``constant`` (the unit does not vary at
one end: MI undefined), ``saturated`` (a fixed grid's estimate within 1 nat of its ln(grid)
ceiling, or with ``grid="auto"`` a kernel narrower than the capped lattice's cells), and
``outlier`` (a sample beyond ``outlier_z`` robust SDs AND the raw and copula KDE estimates more
than ``outlier_nats`` apart: the raw estimate is the outlier's, not the bulk's).
"""

from __future__ import annotations

import logging
import math
import sys

import numpy as np
import xarray as xr
from tqdm import tqdm

from residual_dynamics.analysis.bootstrap import resample_indices
from residual_dynamics.analysis.mi_estimators import (
    copula_normal,
    gcmi_bias,
    max_robust_z,
    mi_gaussian,
    mi_kde,
    mi_ksg,
)
from residual_dynamics.analysis.transitions import transition_kind
from residual_dynamics.analysis.unit_means import analysed_sublayers
from residual_dynamics.inputs.models import resolve_device
from residual_dynamics.io.store import open_store

log = logging.getLogger(__name__)

ESTIMATORS = ("kde", "copula_kde", "gcmi")
# A fixed grid's estimate this close to ln(grid) is flagged as saturating it: at g = 64 a
# Gaussian pair with rho = 0.999 (3.11 nats) is still estimated within 0.05 nats, rho = 0.9999
# (4.26 nats) comes out 3.5.
SATURATION_NATS = 1.0


def mi_flags(
    kde: np.ndarray,
    copula_kde: np.ndarray,
    resolved: np.ndarray,
    z_max: np.ndarray,
    constant: np.ndarray,
    *,
    grid: int | str,
    outlier_z: float,
    outlier_nats: float,
) -> dict[str, np.ndarray]:
    """Per-pair flags (bool arrays shaped like ``kde``); see the module docstring.

    ``resolved``: from mi_kde(..., return_resolved=True) on both the raw and the copula pairs
    (False where either was not); ``z_max``: the larger of the two units' max_robust_z."""
    with np.errstate(invalid="ignore"):
        if grid == "auto":
            saturated = ~resolved
        else:
            ceiling = math.log(int(grid)) - SATURATION_NATS
            saturated = (kde >= ceiling) | (copula_kde >= ceiling)
        outlier = (z_max > outlier_z) & (np.abs(kde - copula_kde) > outlier_nats)
    return {
        "constant": np.asarray(constant, bool),
        "saturated": np.asarray(saturated, bool) & ~constant,
        "outlier": np.asarray(outlier, bool) & ~constant,
    }


def _estimate(name: str, x, y, *, grid, bandwidth, pad, device, bias_correct) -> np.ndarray:
    """The headline estimator on (N, P) pairs (the bootstrap re-runs it on resampled texts)."""
    if name == "gcmi":
        r = mi_gaussian(copula_normal(x), copula_normal(y))
        return r + gcmi_bias(x.shape[0]) if bias_correct else r
    if name == "copula_kde":
        x, y = copula_normal(x), copula_normal(y)
    return mi_kde(x, y, grid=grid, bandwidth=bandwidth, pad=pad, device=device)


def transition_mutual_information(
    store_path,
    *,
    sublayers: str = "paper",
    estimator: str = "kde",
    grid: int | str = "auto",
    bandwidth="scott",
    pad: float = 0.0,
    n_samples: int | None = 1000,
    ksg_units: int = 64,
    gcmi_bias_correction: bool = True,
    outlier_z: float = 6.0,
    outlier_nats: float = 0.1,
    device: str = "auto",
    seed: int = 0,
    bootstrap: int = 0,
    bootstrap_units: int = 64,
    progress: bool = True,
) -> xr.Dataset:
    """MI (nats) per transition and unit by every estimator, the flags, and the headline's name.

    With ``bootstrap`` replicates, also ``mi_boot`` (replicate, transition): the headline curve
    (the mean over units of the ``estimator``'s MI) on texts resampled by analysis.bootstrap's
    shared plan (the same for every recording with as many texts and the same seed: paired).
    Each replicate re-runs the estimator, so it runs on a seeded subset of ``bootstrap_units``
    units and is centred on the full curve: replicate = full mean + (subset mean on the resample
    - subset mean on the texts). The spread of a mean over fewer units is the larger one, so the
    interval errs wide."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, not {estimator!r}")
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
    kde_options = dict(grid=grid, bandwidth=bandwidth, pad=pad, device=device)
    t_count = len(keep) - 1
    shape = (t_count, d)
    values = {name: np.full(shape, np.nan, np.float32) for name in (*ESTIMATORS, "gaussian")}
    flags = {name: np.zeros(shape, bool) for name in ("constant", "saturated", "outlier")}
    ksg = np.full((t_count, len(ksg_set)), np.nan, np.float32)
    bias = gcmi_bias(len(rows)) if gcmi_bias_correction else 0.0

    def sublayer(index: int) -> dict:
        raw = np.asarray(
            resid.get_orthogonal_selection((rows, keep[index], slice(None))), np.float64
        )
        with np.errstate(invalid="ignore"):
            constant = np.ptp(raw, axis=0) == 0
        return {
            "raw": raw,
            "copula": copula_normal(raw),
            "z": max_robust_z(raw),
            "constant": constant,
        }

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
        x, y = current["raw"], following["raw"]
        kde, raw_resolved = mi_kde(x, y, **kde_options, return_resolved=True)
        copula, copula_resolved = mi_kde(
            current["copula"], following["copula"], **kde_options, return_resolved=True
        )
        values["kde"][t] = kde
        values["copula_kde"][t] = copula
        values["gcmi"][t] = mi_gaussian(current["copula"], following["copula"]) + bias
        values["gaussian"][t] = mi_gaussian(x, y)
        for name, flag in mi_flags(
            kde,
            copula,
            raw_resolved & copula_resolved,
            np.fmax(current["z"], following["z"]),
            current["constant"] | following["constant"],
            grid=grid,
            outlier_z=outlier_z,
            outlier_nats=outlier_nats,
        ).items():
            flags[name][t] = flag
        if len(ksg_set):
            ksg[t] = mi_ksg(x[:, ksg_set], y[:, ksg_set])
        if bootstrap:
            headline = values[estimator][t]
            xb, yb = x[:, boot_units], y[:, boot_units]
            full = np.nanmean(headline) if np.isfinite(headline).any() else np.nan
            offset = full - np.nanmean(headline[boot_units])
            # every replicate's units side by side as columns: one batched call
            replicates = _estimate(
                estimator,
                np.concatenate([xb[idx] for idx in boot_rows], axis=1),
                np.concatenate([yb[idx] for idx in boot_rows], axis=1),
                **kde_options,
                bias_correct=gcmi_bias_correction,
            ).reshape(bootstrap, -1)
            defined = np.isfinite(replicates).any(axis=1)
            mi_boot[defined, t] = np.nanmean(replicates[defined], axis=1) + offset
        current = following
    undefined = ~np.isfinite(values[estimator])
    if undefined.any():
        log.warning(
            "%d unit-transition pairs have no defined MI (a constant unit): NaN, flagged in "
            "'undefined'",
            int(undefined.sum()),
        )
    for name in ("saturated", "outlier"):
        if flags[name].any():
            log.warning("%d unit-transition pairs flagged '%s'", int(flags[name].sum()), name)
    labels = [f"{a}->{b}" for a, b in zip(names[:-1], names[1:], strict=True)]
    pair = ("transition", "unit")
    return xr.Dataset(
        {
            **{f"mi_{name}": (pair, v) for name, v in values.items()},
            "mi_ksg": (("transition", "ksg_unit"), ksg),
            "undefined": (pair, undefined),
            **{f"flag_{name}": (pair, v) for name, v in flags.items()},
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
            "estimator": estimator,
            "grid": str(grid),
            "bandwidth": str(bandwidth),
            "pad": pad,
            "gcmi_bias_correction": int(gcmi_bias_correction),
            "outlier_z": float(outlier_z),
            "outlier_nats": float(outlier_nats),
            "saturation_nats": SATURATION_NATS,
            "device": device,
            "bootstrap": int(bootstrap),
            "bootstrap_units": int(len(boot_units)) if bootstrap else 0,
            "bootstrap_seed": int(seed),
        },
    )

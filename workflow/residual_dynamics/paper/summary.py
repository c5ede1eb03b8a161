"""The per-model, per-dataset summary the report reads: Figure 1 and 2 numbers in one JSON."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import xarray as xr

from residual_dynamics.analysis.bootstrap import LEVEL, interval
from residual_dynamics.paper.verdicts import by_kind, spearman_with_depth


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rotations_dataset(result: dict) -> xr.Dataset:
    """rotation_summary's arrays as an xarray Dataset (the summary goes in the attributes)."""
    data = {"r": (("unit",), np.asarray(result["r"], np.float64))}
    for kind, arrays in result["per_unit"].items():
        for name, values in arrays.items():
            data[f"{kind}_{name}"] = (("unit",), np.asarray(values))
    for kind, draws in result["r_null"].items():
        data[f"{kind}_null"] = ((f"{kind}_draw", "unit"), np.asarray(draws, np.float32))
    return xr.Dataset(data, attrs={"summary": json.dumps(_clean(result["summary"]))})


def build_summary(
    means: xr.Dataset, transitions: xr.Dataset, information: xr.Dataset, rotations: xr.Dataset
) -> dict:
    """Per-transition means (correlation, cosine, velocity, MI), their within/cross split, and
    the rotation figures against every null."""
    kinds = np.asarray(transitions["transition_kind"].values)
    r = transitions["r"].values
    cosine = transitions["cosine"].values
    velocity = transitions["velocity"].values
    mi = mi_headline(information).values
    per_transition = {
        "label": [str(v) for v in transitions["transition_label"].values],
        "kind": [str(k) for k in kinds],
        "correlation": np.nanmean(r, axis=1).tolist(),
        "cosine": np.nanmean(cosine, axis=0).tolist(),
        "cosine_p10": np.nanpercentile(cosine, 10, axis=0).tolist(),
        "cosine_p90": np.nanpercentile(cosine, 90, axis=0).tolist(),
        "velocity": np.nanmean(velocity, axis=0).tolist(),
        "velocity_p10": np.nanpercentile(velocity, 10, axis=0).tolist(),
        "velocity_p90": np.nanpercentile(velocity, 90, axis=0).tolist(),
        "mi_kde": np.nanmean(mi, axis=1).tolist(),
        "mi_gaussian": np.nanmean(information["mi_gaussian"].values, axis=1).tolist(),
        "mi_ksg": np.nanmean(information["mi_ksg"].values, axis=1).tolist()
        if information.sizes.get("ksg_unit", 0)
        else None,
        **mi_curves(information),
    }
    summary = {
        "model": transitions.attrs.get("model"),
        "dataset": transitions.attrs.get("dataset"),
        "n_samples": transitions.attrs.get("n_samples"),
        "n_sublayers": int(means.sizes["sublayer"]),
        "n_units": int(means.sizes["unit"]),
        "norm": transitions.attrs.get("norm"),
        "per_transition": per_transition,
        "by_kind": {
            "correlation": by_kind(np.nanmean(r, axis=1), kinds),
            "cosine": by_kind(np.nanmean(cosine, axis=0), kinds),
            "velocity": by_kind(np.nanmean(velocity, axis=0), kinds),
            "mi_kde": by_kind(np.nanmean(mi, axis=1), kinds),
        },
        "correlation_rises_with_depth": spearman_with_depth(np.nanmean(r, axis=1)),
        # (sublayer, unit) pairs constant over the samples: their correlations are undefined.
        "constant_units": int(transitions.attrs.get("n_constant", 0)),
        "mutual_information": {
            "estimator": information.attrs.get("estimator", "kde"),
            "grid": information.attrs.get("grid"),
            "bandwidth": information.attrs.get("bandwidth"),
            "n_samples": information.attrs.get("n_samples"),
            "undefined_pairs": int(information["undefined"].values.sum()),
            "flagged_pairs": {
                name: int(information[f"flag_{name}"].values.sum())
                for name in MI_FLAGS
                if f"flag_{name}" in information
            },
            "flagged_units": {
                name: int(information[f"flag_{name}"].values.any(axis=0).sum())
                for name in MI_FLAGS
                if f"flag_{name}" in information
            },
        },
        "rotations": json.loads(rotations.attrs["summary"]),
        "bootstrap": bootstrap_block(transitions, information),
    }
    for name, reps in (summary["bootstrap"] or {}).get("curves", {}).items():
        ci = interval(np.asarray(reps, np.float64))
        per_transition[f"{name}_ci"] = [ci[0].tolist(), ci[1].tolist()]
    return _clean(summary)


MI_FLAGS = ("constant", "saturated", "outlier")


def mi_headline(information: xr.Dataset) -> xr.DataArray:
    """The headline estimator's (transition, unit) MI in a mutual_information dataset (its
    ``estimator`` attribute; the raw KDE for datasets written before that was a choice)."""
    return information[f"mi_{information.attrs.get('estimator', 'kde')}"]


def mi_curves(information: xr.Dataset) -> dict:
    """Per-transition MI by every estimator the dataset holds (mean over units, as the paper's
    1H), and ``mi_excess``: the median over units of copula KDE minus Gaussian-copula MI, the
    dependence beyond the Gaussian (nonlinear, non-monotone). ``mi_kde`` in per_transition is the
    headline estimator's curve (the one compared with the paper), whichever it is."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN transitions (constant units)
        out["mi_by_estimator"] = {
            name: np.nanmean(information[f"mi_{name}"].values, axis=1).tolist()
            for name in ("kde", "copula_kde", "gcmi")
            if f"mi_{name}" in information
        }
        if {"mi_copula_kde", "mi_gcmi"} <= set(information.data_vars):
            excess = information["mi_copula_kde"].values - information["mi_gcmi"].values
            out["mi_excess"] = np.nanmedian(excess, axis=1).tolist()
    return out


BOOT_CURVES = {
    "correlation": ("stats", "r_boot"),
    "cosine": ("stats", "cosine_boot"),
    "velocity": ("stats", "velocity_boot"),
    "mi_kde": ("mi", "mi_boot"),
}


def bootstrap_block(transitions: xr.Dataset, information: xr.Dataset) -> dict | None:
    """The bootstrap replicates of every per-transition curve (replicate x transition), which the
    claims turn into replicate claim values and intervals; None when none was computed."""
    sources = {"stats": transitions, "mi": information}
    curves = {
        name: sources[where][var].values.tolist()
        for name, (where, var) in BOOT_CURVES.items()
        if var in sources[where]
    }
    if not curves:
        return None
    return {
        "replicates": int(transitions.attrs.get("bootstrap", 0)),
        "mi_replicates": int(information.attrs.get("bootstrap", 0)),
        "mi_units": int(information.attrs.get("bootstrap_units", 0)),
        "seed": transitions.attrs.get("bootstrap_seed"),
        "level": LEVEL,
        "curves": curves,
    }


def cae_summary(cae: xr.Dataset) -> dict:
    """Figure 3's numbers from the CAE's evaluation (``analysis.cae.evaluate_cae``); here, not
    beside the model, so that the summary job does not import torch."""
    ev = cae["explained_variance"].values
    mean = np.nanmean(ev, axis=0)
    names = list(cae["sublayer"].values)
    steps = cae["mean_latent_step"].values
    return {
        "ev_first": float(mean[0]),
        "ev_at_5": float(mean[min(5, len(mean) - 1)]),
        "ev_max": float(np.nanmax(mean)),
        "ev_max_sublayer": names[int(np.nanargmax(mean))],
        "ev_last": float(mean[-1]),
        "ev_rises": bool(np.nanmean(mean[len(mean) // 2 :]) > np.nanmean(mean[: len(mean) // 2])),
        "step_median": float(np.median(steps)),
        "step_last": float(steps[-1]),
        "best_epoch": int(cae.attrs["best_epoch"]),
        "n_test": int(cae.attrs["n_test"]),
    }


def reduction_summary(
    pca: xr.Dataset, cae: xr.Dataset | None, perturbation: xr.Dataset | None
) -> dict:
    """The numbers of Figures 3 and 4 that the report quotes beside the paper's."""
    from residual_dynamics.analysis.pca import pca_summary
    from residual_dynamics.analysis.recovery import recovery_summary

    out = {"pca": pca_summary(pca)}
    if "sublayer_cumulative_own" in pca:
        own = pca["sublayer_cumulative_own"].values[:, out["pca"]["n_components_at"] - 1]
        out["pca"]["own_at_first"] = float(own[0])
        out["pca"]["own_at_last"] = float(own[-1])
    if cae is not None:
        out["cae"] = cae_summary(cae)
    if perturbation is not None:
        out["perturbation"] = recovery_summary(perturbation)
        out["perturbation"]["causal"] = bool(perturbation.attrs.get("causal"))
        out["perturbation"]["grid_range"] = perturbation.attrs.get("grid_range")
    return _clean(out)

"""The numbers of the section "Beyond the paper", from the results of its three analyses, and the
verdicts on the claims it tests.

Curves over depth are medians over texts with a seeded bootstrap 95 % band (texts resampled).
A claim is a contrast, as everywhere in the report: it holds on a recording when its bootstrap
interval excludes zero in the claimed direction, and it is *reproduced* only when it also exceeds
the untrained twin's value by more than the uncertainty of the difference; *not specific* when it
holds but not beyond the twin, *not reproduced* when it does not hold, *not comparable* when no
twin was recorded (or the measure is missing, e.g. eigenvalues of a matrix-free run).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import xarray as xr

from residual_dynamics.io.atomic import read_result

# Per-transition measures of the spectra figure: (variable, k index or None, label).
SPECTRA = (
    ("sigma_top", 0, "largest singular value (expansion)"),
    ("sigma_min", None, "smallest non-zero singular value (contraction)"),
    ("spectral_radius", None, "spectral radius"),
    ("non_normality_update", None, "non-normality of J − I"),
    ("antisymmetric_share_update", None, "antisymmetric share of J − I"),
    ("complex_share", None, "share of eigenvalues in complex pairs"),
)

# The claims tested (the follow-up's linearised picture, arXiv 2605.14258): early sublayer maps
# are more non-normal and more rotational than late ones. Each is "early minus late > 0".
CLAIMS = {
    "non_normal_early": (
        "non_normality_update",
        "early sublayer maps are more non-normal than late ones (non-normality of J − I, mean "
        "over the first third of transitions minus the last third)",
    ),
    "rotational_early": (
        "antisymmetric_share_update",
        "early sublayer maps are more rotational than late ones, which are closer to symmetric "
        "(antisymmetric share of J − I, first third minus last third)",
    ),
}


@dataclass
class Recording:
    """One recording's results: the three analyses (``dynamics`` and ``ablation`` None where they
    did not run, or a dataset whose ``skipped`` attribute says why)."""

    model: str
    dataset: str
    geometry: xr.Dataset
    dynamics: xr.Dataset | None = None
    ablation: xr.Dataset | None = None

    @property
    def label(self) -> str:
        return f"{self.model} on {self.dataset}"

    @property
    def linearised(self) -> bool:
        return ran(self.dynamics)

    @property
    def ablated(self) -> bool:
        return ran(self.ablation)


def skipped(reason: str) -> xr.Dataset:
    """What a rule of the module writes, or a script stands in, for an analysis that does not
    run on a recording: no data, the reason."""
    return xr.Dataset(attrs={"skipped": reason})


def ran(result: xr.Dataset | None) -> bool:
    return result is not None and "skipped" not in result.attrs


def why_not(result: xr.Dataset | None) -> str:
    """Why an analysis has no result for a recording."""
    return "not run" if result is None else str(result.attrs.get("skipped", ""))


def load_recording(model: str, dataset: str, geometry, dynamics=None, ablation=None) -> Recording:
    """A recording's results read from their Zarr paths (``dynamics``, ``ablation`` may be None)."""
    return Recording(
        model, dataset, read_result(geometry), read_result(dynamics), read_result(ablation)
    )


WORDS = {True: "reproduced", False: "not reproduced", None: "not comparable"}
NOT_SPECIFIC = "not specific"


def transition_kind(name: str) -> str:
    """'within' for an attention sublayer (attn_l -> mlp_l), 'cross' for an MLP sublayer."""
    return "within" if name.startswith("attn") else "cross"


# Singular values below this share of the largest are null directions of the map, not
# contraction: a post-norm model's LayerNorm removes the mean and the scale direction of every
# state (two exact zeros), which would otherwise be "the strongest contraction" of every map.
NULL_SHARE = 1e-6


def smallest_nonzero(dynamics: xr.Dataset) -> np.ndarray:
    """(text, transition) smallest of the bottom k singular values above ``NULL_SHARE`` times the
    largest (NaN where none of them is, or where they were not resolved matrix-free)."""
    bottom = np.asarray(dynamics["sigma_bottom"].transpose("text", "transition", "k").values)
    top = np.asarray(dynamics["sigma_top"].transpose("text", "transition", "k").values)[..., :1]
    with np.errstate(invalid="ignore"):
        kept = np.where(bottom > NULL_SHARE * top, bottom, np.inf)
    out = kept.min(axis=-1)
    return np.where(np.isfinite(out), out, np.nan)


def null_directions(dynamics: xr.Dataset) -> int:
    """The median count of null directions (singular values below the share) per map."""
    bottom = np.asarray(dynamics["sigma_bottom"].transpose("text", "transition", "k").values)
    top = np.asarray(dynamics["sigma_top"].transpose("text", "transition", "k").values)[..., :1]
    with np.errstate(invalid="ignore"):
        return int(np.median((bottom <= NULL_SHARE * top).sum(axis=-1)))


def measure(dynamics: xr.Dataset, name: str, k: int | None = None) -> np.ndarray:
    """(text, transition) values of one measure (the k-th entry of a per-k one); ``sigma_min``
    is :func:`smallest_nonzero`."""
    if name == "sigma_min":
        return smallest_nonzero(dynamics)
    values = dynamics[name]
    if k is not None:
        values = values.isel(k=k)
    return np.asarray(values.transpose("text", "transition").values, dtype=np.float64)


def median_band(
    values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, np.ndarray]:
    """Median over texts (axis 0) per column, with a seeded bootstrap band (texts resampled)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(values, axis=0) if n else np.full(values.shape[1:], np.nan)
    if n < 2 or not np.isfinite(values).any():
        return {"median": median, "low": median.copy(), "high": median.copy()}
    picks = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    with warnings.catch_warnings():
        # A column that is NaN in every draw (a matrix-free run's eigenvalues) stays NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        draws = np.nanmedian(values[picks], axis=1)
        low, high = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {"median": median, "low": low, "high": high}


def spectra_curves(dynamics: xr.Dataset, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per measure of ``SPECTRA``: the median over texts per transition and its band."""
    return {name: median_band(measure(dynamics, name, k), n_boot, seed) for name, k, _ in SPECTRA}


def thirds(n_transitions: int) -> tuple[slice, slice]:
    """The first and the last third of the transitions (at least one each)."""
    m = max(1, n_transitions // 3)
    return slice(0, m), slice(n_transitions - m, n_transitions)


def early_minus_late(values: np.ndarray) -> np.ndarray:
    """Per text: mean over the early third of transitions minus mean over the late third."""
    early, late = thirds(values.shape[1])
    return values[:, early].mean(axis=1) - values[:, late].mean(axis=1)


def mean_interval(
    per_text: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): the mean over texts and its seeded bootstrap interval."""
    x = np.asarray(per_text, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan"), float("nan")
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(x.mean()), float(low), float(high)


def difference_interval(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a bootstrap interval, each sample resampled on its own."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(axis=1)
    means_b = b[rng.integers(0, len(b), (n_boot, len(b)))].mean(axis=1)
    draws = means_a - means_b
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(a.mean() - b.mean()), float(low), float(high)


def claim_verdicts(
    dynamics: xr.Dataset, twin: xr.Dataset | None, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """Per claim of ``CLAIMS``: the early-minus-late value on the recording and on its twin, with
    intervals, the difference between them, and the verdict word."""
    out = {}
    for key, (name, text) in CLAIMS.items():
        mine = early_minus_late(measure(dynamics, name))
        value, low, high = mean_interval(mine, n_boot, seed)
        holds = bool(low > 0) if np.isfinite(low) else None
        entry = {"statement": text, "measure": name, "value": value, "low": low, "high": high}
        entry["holds"] = holds
        if twin is None:
            entry |= {"verdict": WORDS[None], "reason": "no untrained twin recorded"}
        elif holds is None:
            entry |= {"verdict": WORDS[None], "reason": "too few texts for an interval"}
        else:
            theirs = early_minus_late(measure(twin, name))
            t_value, t_low, t_high = mean_interval(theirs, n_boot, seed)
            diff, d_low, d_high = difference_interval(mine, theirs, n_boot, seed)
            entry |= {
                "twin_value": t_value,
                "twin_low": t_low,
                "twin_high": t_high,
                "difference": diff,
                "difference_low": d_low,
                "difference_high": d_high,
            }
            if not holds:
                entry["verdict"] = WORDS[False]
            elif d_low > 0:
                entry["verdict"] = WORDS[True]
            else:
                entry["verdict"] = NOT_SPECIFIC
        out[key] = entry
    return out


def nanmean(values) -> float:
    """Mean of the finite values; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def dynamics_numbers(dynamics: xr.Dataset, n_boot: int = 1000, seed: int = 0) -> dict:
    """Where the stream expands and contracts, and the exponents, as plain numbers."""
    names = [str(t) for t in dynamics["transition"].values]
    curves = spectra_curves(dynamics, n_boot, seed)
    top, bottom = curves["sigma_top"]["median"], curves["sigma_min"]["median"]
    early, late = thirds(len(names))
    non_normal = curves["non_normality_update"]["median"]
    anti = curves["antisymmetric_share_update"]["median"]
    most = int(np.nanargmax(top))
    least = int(np.nanargmin(bottom)) if np.isfinite(bottom).any() else None
    exponents = dynamics["lyapunov_mean"].values
    return {
        "n_texts": int(dynamics.sizes["text"]),
        "d_model": int(dynamics.attrs.get("d_model", 0)),
        "method": str(dynamics.attrs.get("method", "")),
        "norm": str(dynamics.attrs.get("norm", "")),
        "null_directions": null_directions(dynamics),
        "n_transitions": len(names),
        "n_expanding": int(np.sum(top > 1)),
        "n_contracting": int(np.sum(bottom < 1)),
        "most_expanding": names[most],
        "sigma_top_max": float(top[most]),
        "most_contracting": names[least] if least is not None else None,
        "sigma_bottom_min": float(bottom[least]) if least is not None else float("nan"),
        "non_normality_early": nanmean(non_normal[early]),
        "non_normality_late": nanmean(non_normal[late]),
        "antisymmetric_early": nanmean(anti[early]),
        "antisymmetric_late": nanmean(anti[late]),
        "complex_share_mean": nanmean(curves["complex_share"]["median"]),
        "lyapunov_top": float(exponents[0]),
        "lyapunov_top_low": float(dynamics["lyapunov_ci_low"].values[0]),
        "lyapunov_top_high": float(dynamics["lyapunov_ci_high"].values[0]),
        "n_positive_exponents": int(np.sum(exponents > 0)),
        "n_exponents": int(len(exponents)),
    }


def geometry_numbers(geometry: xr.Dataset) -> dict:
    """CKA between neighbouring sublayers and end to end, dimension and participation ratio."""
    cka = np.asarray(geometry["cka"].values, dtype=np.float64)
    names = [str(s) for s in geometry["sublayer"].values]
    dims = np.asarray(geometry["intrinsic_dimension"].values, dtype=np.float64)
    ratio = np.asarray(geometry["participation_ratio"].values, dtype=np.float64)
    neighbours = np.diagonal(cka, offset=1)
    low = int(np.nanargmin(neighbours)) if np.isfinite(neighbours).any() else 0
    return {
        "n_samples": int(geometry.attrs.get("n_samples", 0)),
        "cka_estimator": str(geometry.attrs.get("cka_estimator", "")),
        "cka_neighbours_mean": nanmean(neighbours),
        "cka_neighbours_min": float(neighbours[low]) if len(neighbours) else float("nan"),
        "cka_break": f"{names[low]}->{names[low + 1]}" if len(neighbours) else None,
        "cka_first_last": float(cka[0, -1]),
        "dimension_min": float(np.nanmin(dims)),
        "dimension_max": float(np.nanmax(dims)),
        "dimension_peak": names[int(np.nanargmax(dims))],
        "participation_first": float(ratio[0]),
        "participation_last": float(ratio[-1]),
        "participation_max": float(np.nanmax(ratio)),
    }


def ablation_numbers(ablation: xr.Dataset) -> dict:
    """The layer whose deletion costs most, and the costliest swap (with intervals)."""
    if "skipped" in ablation.attrs:
        return {"skipped": str(ablation.attrs["skipped"])}
    out = {"loss_intact": float(ablation["loss_intact_mean"].values)}
    for variant in ablation["variant"].values:
        part = ablation.sel(variant=variant)
        delta = part["delta_loss"].values
        if not np.isfinite(delta).any():
            continue
        worst = int(np.nanargmax(delta))
        out[str(variant)] = {
            "layer": int(part["layer"].values[worst]),
            "delta_loss": float(delta[worst]),
            "low": float(part["delta_loss_low"].values[worst]),
            "high": float(part["delta_loss_high"].values[worst]),
            "kl": float(part["kl"].values[worst]),
            "least_layer": int(part["layer"].values[int(np.nanargmin(delta))]),
            "least_delta_loss": float(np.nanmin(delta)),
        }
    return out

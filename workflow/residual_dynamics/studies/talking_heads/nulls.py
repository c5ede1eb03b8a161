"""The nulls for the Talking Heads component z-scores, and the verdicts read from them: random
rotations of each source head's OV within its row and column spaces (``component_null``), the
untrained twin (``add_twin_null``), the empirical p-values and flags (``upper_p``,
``flag_components``), the top outliers with their p (``top_outliers``, ``flag_summary``), and the
family-wise test of the paper's claim for one head (``family_p``, ``dominant_component``).
``weights.composition_analysis`` draws the rotations; the notation (OV, R2, CS_i, z) is that of
``weights`` and ``folding``.

The null for z (``component_null``)
-----------------------------------
z alone has no null: random weights of GPT-2 small's shape already give a top z of about 5, the
paper's threshold. The null rotates each source head's OV within its own row and column spaces,
``OV' = U Q1 S Q2^T V^T`` with Q1, Q2 Haar-random (dh x dh): the singular values and the subspaces
the head reads and writes are kept, the alignment of single components with the later head is
destroyed. The components of OV' write along the columns of ``V Q2``; with ``G = (V^T R2)(V^T R2)^T
/ |M2|^2`` (its diagonal is the observed CS_i^2) and eigenvalues lambda of G, the null's squared
scores are ``(H o H)^T lambda`` for a Haar H, whatever Q1, so ``rotations`` draws per source head
cost one (dh x dh) product each (seeded). Each component's empirical p is the share of the null's
z (pooled over its components and draws, for the same later head and kind) at or above its z; a
component is flagged at the null's ``alpha`` level. A second null is the untrained twin (same
architecture, random weights): its z pooled over all its head pairs per kind
(``component_p_twin``). For random weights the rotation null is exact (their singular bases are
Haar within their spans), so about ``alpha`` of their components are flagged (tested at GPT-2
small's shape; the twin's own share is stored beside the model's). The paper's claim picks the
top component among all those feeding a head, so it is judged family-wise
(``dominant_component``): against the rotations' largest z into that head per draw, and the
twin's largest z into it.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from residual_dynamics.studies.talking_heads.folding import KINDS


def haar_orthogonal(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` Haar-random orthogonal (n, n) matrices (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((size, n, n)))
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


def standardised(scores: np.ndarray) -> np.ndarray:
    """z over the last axis (population SD); NaN where every score is equal."""
    mean = scores.mean(axis=-1, keepdims=True)
    std = scores.std(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(std > 0, (scores - mean) / std, np.nan)


def upper_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Per row, ``(1 + #{null >= x}) / (1 + n_null)`` for each observed x: (rows, k), (rows, m).

    NaN observed values give NaN. One sort for all rows: each row is shifted by a multiple of
    a span wider than every row's range, so a single ``searchsorted`` serves them all.
    """
    rows, m = null.shape
    finite = np.isfinite(null)
    low = np.nanmin(np.where(finite, null, np.nan)) if finite.any() else 0.0
    high = np.nanmax(np.where(finite, null, np.nan)) if finite.any() else 0.0
    obs_finite = np.isfinite(observed)
    if obs_finite.any():
        low = min(low, float(observed[obs_finite].min()))
        high = max(high, float(observed[obs_finite].max()))
    span = (high - low) + 1.0
    shift = (np.arange(rows, dtype=np.float64) * 2 * span)[:, None]
    # A non-finite null value counts as below everything (a draw whose z is undefined).
    keyed = np.sort(np.where(finite, null - low, -0.5) + shift, axis=1).ravel()
    queries = np.where(obs_finite, observed - low, 0.0) + shift
    at_or_above = (np.arange(1, rows + 1)[:, None] * m) - np.searchsorted(
        keyed, queries, side="left"
    )
    p = (1.0 + at_or_above) / (1.0 + m)
    return np.where(obs_finite, p, np.nan)


def rotation_weights(pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(dh, R * dh): the squared entries ``H o H`` of R Haar rotations for one source head.

    ``pool`` (R, dh, dh) holds Haar rotations shared by the model's heads; each head permutes
    their rows at random (a permuted Haar matrix is Haar), which decorrelates the heads' nulls
    at the cost of an index instead of R QR decompositions per head.
    """
    n_rot, dh, _ = pool.shape
    rows = np.argsort(rng.random((n_rot, dh)), axis=1)
    squared = np.take_along_axis(pool**2, rows[:, :, None], axis=1)
    return squared.transpose(1, 0, 2).reshape(dh, n_rot * dh)  # (k, r * i)


def component_null(
    eigenvalues: np.ndarray, observed_z: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Empirical p of each component's z against rotations of the source head's OV.

    ``eigenvalues`` (n_pairs, dh): of G (module docstring) for one source head and each later
    head (and kind); ``observed_z`` (n_pairs, dh); ``weights`` (dh, R * dh) from
    ``rotation_weights``. Returns p (n_pairs, dh), each pair's null pooled over its R x dh
    rotated components, and each draw's largest z (n_pairs, R), for the family-wise null.
    """
    dh = weights.shape[0]
    n_rot = weights.shape[1] // dh
    scores = np.sqrt(np.clip(eigenvalues @ weights, 0, None)).reshape(-1, n_rot, dh)
    null = standardised(scores)
    largest = np.where(np.isfinite(null), null, -np.inf).max(axis=2)
    return upper_p(observed_z, null.reshape(len(eigenvalues), n_rot * dh)), largest


def max_z_into(data: xr.Dataset, kind: str, target: str) -> float:
    """The largest component z of any earlier head into ``target``."""
    values = data["component_z"].sel(kind=kind, target=target).values
    return float(np.nanmax(values)) if np.isfinite(values).any() else float("nan")


def family_p(data: xr.Dataset, kind: str, target: str, z: float) -> float | None:
    """p of the largest z into ``target`` against the rotation null's largest z into it (one
    value per draw of the whole model): the family-wise test that picking the top component
    among all those feeding ``target`` needs. None without the rotation null."""
    if "null_max_z" not in data:
        return None
    draws = data["null_max_z"].sel(kind=kind, target=target).values
    draws = draws[np.isfinite(draws)]
    return float((1 + np.sum(draws >= z)) / (1 + len(draws)))


def add_twin_null(data: xr.Dataset, twin: xr.Dataset) -> xr.Dataset:
    """``component_p_twin``: per kind, the share of the untrained twin's component z (over all
    its head pairs) at or above each component's z, as (1 + count) / (1 + n)."""
    p = np.full(data["component_z"].shape, np.nan, dtype=np.float64)
    quantile = []
    for k_index, kind in enumerate(KINDS):
        null = twin["component_z"].sel(kind=kind).values.ravel().astype(np.float64)
        null = np.sort(null[np.isfinite(null)])
        observed = data["component_z"].sel(kind=kind).values.astype(np.float64)
        above = len(null) - np.searchsorted(null, np.nan_to_num(observed, nan=np.inf), "left")
        p[k_index] = np.where(np.isfinite(observed), (1.0 + above) / (1.0 + len(null)), np.nan)
        quantile.append(float(np.quantile(null, 0.99)) if len(null) else np.nan)
    data["component_p_twin"] = (data["component_z"].dims, p.astype(np.float32))
    data["twin_z_q99"] = ("kind", np.asarray(quantile, dtype=np.float32))
    # The twin's largest z into each head: the contrast for the top component into a head.
    values = twin["component_z"].values  # (kind, source, component, target)
    largest = np.where(np.isfinite(values), values, -np.inf).max(axis=(1, 2))
    largest[~np.isfinite(largest)] = np.nan
    data["twin_max_z"] = (("kind", "target"), largest.astype(np.float32))
    data.attrs["twin"] = twin.attrs.get("model", "untrained twin")
    return data


def flag_components(data: xr.Dataset, alpha: float) -> xr.Dataset:
    """``component_flagged``: p <= alpha against every null present (the strictest)."""
    flagged = None
    for name in ("component_p", "component_p_twin"):
        if name in data:
            below = (data[name] <= alpha).values
            flagged = below if flagged is None else flagged & below
    if flagged is None:
        return data
    finite = np.isfinite(data["component_z"].values)
    data["component_flagged"] = (data["component_z"].dims, flagged & finite)
    data.attrs["alpha"] = float(alpha)
    return data


def component_label(source: str, component: int) -> str:
    return f"{source}.{component}"


def top_outliers(
    data: xr.Dataset, kind: str = "q", target: str | None = None, n: int = 10
) -> list[dict]:
    """The n (source, component, target) entries with the highest z for ``kind``, with their
    p against each null and whether they are flagged, where the dataset has them."""
    z = data["component_z"].sel(kind=kind)
    if target is not None:
        z = z.sel(target=[target])
    values = z.values
    flat = np.where(np.isfinite(values), values, -np.inf).ravel()
    order = np.argsort(flat)[::-1][:n]
    rows = []
    for index in order:
        if not np.isfinite(flat[index]):
            break
        i, c, j = np.unravel_index(index, values.shape)
        source = str(z["source"].values[i])
        target_name = str(z["target"].values[j])
        at = (i, c, data.indexes["target"].get_loc(target_name))
        row = {
            "source": source,
            "component": int(c),
            "target": target_name,
            "label": component_label(source, int(c)),
            "z": float(values[i, c, j]),
            "score": float(data["component_score"].sel(kind=kind).values[at]),
        }
        for key, name in (
            ("p", "component_p"),
            ("p_twin", "component_p_twin"),
            ("flagged", "component_flagged"),
        ):
            if name in data:
                value = data[name].sel(kind=kind).values[at]
                row[key] = bool(value) if key == "flagged" else float(value)
        rows.append(row)
    return rows


def flag_summary(data: xr.Dataset, kind: str) -> dict:
    """How many components of ``kind`` (over every head pair) the nulls flag, and the share
    (beside the untrained twin's share against its own rotation null, where there is one)."""
    finite = np.isfinite(data["component_z"].sel(kind=kind).values)
    alpha = float(data.attrs.get("alpha", 0.01))
    out = {"n_components": int(finite.sum())}
    for key, name in (("rotation", "component_p"), ("twin", "component_p_twin")):
        if name in data:
            p = data[name].sel(kind=kind).values
            out[f"n_{key}"] = int((p[finite] <= alpha).sum())
    if "component_flagged" in data:
        out["n_flagged"] = int(data["component_flagged"].sel(kind=kind).values.sum())
        out["share_flagged"] = out["n_flagged"] / max(out["n_components"], 1)
    if "twin_share_flagged" in data:
        out["twin_share_flagged"] = float(data["twin_share_flagged"].sel(kind=kind))
    return out


def dominant_component(data: xr.Dataset, kind: str, target: str) -> dict:
    """The paper's claim for one later head: the top component feeding it stands out.

    Reproduced only when it beats both nulls as the top of its family: its z exceeds the
    rotation null's largest z into ``target`` (family-wise p at most alpha; flagging the top of
    hundreds of components at a per-component 1 % would pass on random weights) and the
    untrained twin's largest z into the same head. Returns the top row (``top_outliers``) with
    ``family_p``, ``twin_max_z`` and ``verdict`` ('reproduced', 'not specific' where only the
    twin matches it, 'not reproduced', or 'not comparable' without the nulls).
    """
    rows = top_outliers(data, kind=kind, target=target, n=1)
    if not rows:
        return {"verdict": "not comparable"}
    row = dict(rows[0])
    alpha = float(data.attrs.get("alpha", 0.01))
    row["family_p"] = family_p(data, kind, target, row["z"])
    row["twin_max_z"] = (
        float(data["twin_max_z"].sel(kind=kind, target=target)) if "twin_max_z" in data else None
    )
    if row["family_p"] is None:
        row["verdict"] = "not comparable"
    elif row["family_p"] > alpha:
        row["verdict"] = "not reproduced"
    elif row["twin_max_z"] is not None and not row["z"] > row["twin_max_z"]:
        row["verdict"] = "not specific"
    else:
        row["verdict"] = "reproduced"
    return row

"""Recovery after a teleport, per text, with a seeded bootstrap over texts (Figure 4D's claim).

The paper says teleports at mid-depth layers "recover" (end near the control, with low spread)
while first- and last-layer teleports do not, but defines no number. The measures of one batch of
perturbed copies of one text (``recovery_measures``), at perturbed layer l:

- ``start_distance``: mean over the points of |h_pert - h_text| at the perturbed sublayer s_l
  (the input of block l: how far the points were sent);
- ``distance_after``: the same ``horizon`` sublayers later, at s_l + horizon clipped at the last
  analysed sublayer;
- ``remaining`` = distance_after / start_distance;
- ``end_distance``, ``end_mse``: at the last analysed sublayer, mean distance and mean squared
  error per unit to the text's own state;
- ``start_spread_pc``, ``end_spread_pc``: RMS distance of the points from their centroid in
  PC1/PC2 (the grid's spread, then the end points'), and ``end_spread_ratio`` between them;
- for causal models, ``kl``: mean KL(p_text || p_perturbed) of the next-token distribution, and
  ``top1_same``: the share of points whose top next token is the unperturbed one.

**Remaining distance of text t at layer l** (what the claim is decided on)::

    remaining[t, l] = mean_p |h_p(s_l + H) - h_t(s_l + H)| / mean_p |h_p(s_l) - h_t(s_l)|

with p the teleported points (a grid in PC1/PC2 mapped back to model space and written over the
input of block l at the text's last token), h_t the text's own unperturbed states and H the
horizon. 1: nothing recovered (the points are as far from the text's own trajectory as they were
sent); 0: fully back on it; above 1: driven further away. The last perturbed layer's horizon is
clipped at the last analysed sublayer, so its teleports have fewer sublayers to recover in (as in
the paper, whose layer-31 teleports have only that layer's two sublayers left). The texts are a
seeded draw of the dataset (``perturbation.n_dataset_samples``), each teleported on a grid of
``dataset_grid_size`` points a side over the same range as the control prompt's grid.

**The verdict** (``remaining_verdict``): the mean remaining distance over texts per layer, with a
percentile 95 % interval from a seeded bootstrap over texts (indices
``np.random.default_rng(seed).integers(0, n_texts, size=(B, n_texts))``, the same resampled texts
for every layer, so contrasts between layers are paired; and the same indices for every model
run with the same seed and number of texts, so a trained model and its untrained twin on the same
texts are paired replicate by replicate). ``mid``: the mean over the mid layers (every perturbed
layer but the first and the last); ``edge``: the *lower* of the first and last layers' means (not
their average); ``contrast`` = mid - edge, each replicate taking its own lower edge. The claim
needs ``recovers`` (mid's interval wholly below 1: something comes back, beyond the uncertainty)
and ``mid_lower`` (the contrast's interval wholly below 0: mid-depth lower than the lower edge by
more than the interval).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:  # torch only where logits are compared: Figure 4E's job need not import it
    import torch

MEASURES = (
    "start_distance",
    "distance_after",
    "remaining",
    "end_distance",
    "end_mse",
    "start_spread_pc",
    "end_spread_pc",
    "end_spread_ratio",
    "kl",
    "top1_same",
)
LEVEL = 0.95
DEFAULT_REPLICATES = 200


def _kl(control: torch.Tensor, perturbed: torch.Tensor) -> np.ndarray:
    import torch

    p = torch.log_softmax(control.double(), -1)
    q = torch.log_softmax(perturbed.double(), -1)
    return (p.exp() * (p - q)).sum(-1).numpy()


def recovery_measures(
    rows: np.ndarray,
    control: np.ndarray,
    start: int,
    horizon: int,
    project,
    logits: torch.Tensor | None = None,
    control_logits: torch.Tensor | None = None,
) -> dict[str, float]:
    """The measures in the module docstring, for B perturbed rows (B, S, D) against (S, D)."""
    after = min(start + horizon, rows.shape[1] - 1)
    dist = np.linalg.norm(rows - control[None], axis=-1)  # (B, S)
    start_pc, end_pc = project(rows[:, start]), project(rows[:, -1])

    def spread(points):
        return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))

    out = {
        "start_distance": float(dist[:, start].mean()),
        "distance_after": float(dist[:, after].mean()),
        "end_distance": float(dist[:, -1].mean()),
        "end_mse": float(((rows[:, -1] - control[-1]) ** 2).mean()),
        "start_spread_pc": spread(start_pc),
        "end_spread_pc": spread(end_pc),
        "kl": float("nan"),
        "top1_same": float("nan"),
    }
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN, not an error: one point, no spread
        out["remaining"] = float(np.float64(out["distance_after"]) / out["start_distance"])
        out["end_spread_ratio"] = float(np.float64(out["end_spread_pc"]) / out["start_spread_pc"])
    if logits is not None and control_logits is not None:
        out["kl"] = float(_kl(control_logits[None].cpu(), logits.cpu()).mean())
        out["top1_same"] = float(
            (logits.argmax(-1).cpu() == control_logits.argmax(-1).cpu()).float().mean()
        )
    return out


def bootstrap_indices(n_texts: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, n_texts) text indices drawn with replacement: the same for every model run
    with the same seed and number of texts (paired replicates)."""
    return np.random.default_rng(seed).integers(0, n_texts, size=(replicates, n_texts))


def _interval(replicates: np.ndarray, level: float) -> list[float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return [float(low), float(high)]


def mean_and_interval(
    per_text: np.ndarray, *, replicates: int = DEFAULT_REPLICATES, seed: int = 0, level=LEVEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over texts of per-text values (n_texts, ...) with its percentile bootstrap interval
    (the same resampling as the verdict's); texts with a non-finite value anywhere left out.
    Returns (mean, low, high), each of shape (...); NaN without texts."""
    values = np.asarray(per_text, np.float64)
    flat = values.reshape(len(values), -1)
    flat = flat[np.isfinite(flat).all(axis=1)]
    shape = values.shape[1:]
    if not len(flat):
        empty = np.full(shape, np.nan)
        return empty, empty.copy(), empty.copy()
    reps = flat[bootstrap_indices(len(flat), replicates, seed)].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(reps, [tail, 100 - tail], axis=0)
    return flat.mean(axis=0).reshape(shape), low.reshape(shape), high.reshape(shape)


def remaining_verdict(
    per_text: np.ndarray,
    layers,
    *,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """The verdict block from per-text remaining distances (n_texts, n_layers), layers in order.

    Texts with a non-finite value at any layer are left out (``n_texts`` counts those kept).
    Returns ``{"remaining": ..., "n_texts": n, "bootstrap": {...}}`` (module docstring);
    ``remaining`` is None without texts; mid, edge, contrast and the two tests are None with
    fewer than 3 layers."""
    layers = [int(x) for x in layers]
    values = np.asarray(per_text, np.float64).reshape(-1, len(layers))
    values = values[np.isfinite(values).all(axis=1)]
    n = len(values)
    boot = {"replicates": int(replicates), "seed": int(seed), "level": float(level)}
    if n == 0 or not layers:
        return {"remaining": None, "n_texts": n, "bootstrap": boot}
    reps = values[bootstrap_indices(n, replicates, seed)].mean(axis=1)  # (B, L)
    means = values.mean(axis=0)
    out = {
        "per_layer": {
            str(layer): {"mean": float(means[i]), "ci": _interval(reps[:, i], level)}
            for i, layer in enumerate(layers)
        },
        "mid": None,
        "mid_ci": None,
        "edge": None,
        "edge_ci": None,
        "edge_layer": None,
        "contrast": None,
        "contrast_ci": None,
        "recovers": None,
        "mid_lower": None,
        "replicates": None,
    }
    if len(layers) >= 3:
        mid, mid_reps = float(means[1:-1].mean()), reps[:, 1:-1].mean(axis=1)
        first_lower = means[0] <= means[-1]
        edge = float(means[0] if first_lower else means[-1])
        edge_reps = np.minimum(reps[:, 0], reps[:, -1])  # each replicate's own lower edge
        contrast_reps = mid_reps - edge_reps
        out |= {
            "mid": mid,
            "mid_ci": _interval(mid_reps, level),
            "edge": edge,
            "edge_ci": _interval(edge_reps, level),
            "edge_layer": layers[0] if first_lower else layers[-1],
            "contrast": mid - edge,
            "contrast_ci": _interval(contrast_reps, level),
            "replicates": {
                "mid": mid_reps.tolist(),
                "edge": edge_reps.tolist(),
                "contrast": contrast_reps.tolist(),
            },
        }
        out["recovers"] = bool(out["mid_ci"][1] < 1)
        out["mid_lower"] = bool(out["contrast_ci"][1] < 0)
    return {"remaining": out, "n_texts": n, "bootstrap": boot}


def recovery_summary(
    perturbation: xr.Dataset, *, replicates: int | None = None, seed: int | None = None
) -> dict:
    """Per-layer recovery numbers and whether mid-depth teleports recover more (paper's claim).

    ``per_layer``, ``verdicts``: the control prompt's measures and its mid vs first/last means
    (descriptive: one prompt, no interval; they decide nothing). ``dataset_per_layer``: the
    dataset texts' measures averaged. ``verdict``: ``remaining_verdict`` on the dataset texts'
    remaining distances (replicates and seed from the arguments, else the dataset's
    ``bootstrap_replicates`` and ``seed`` attributes). ``mid_recovers_more``: ``recovers and
    mid_lower``; None with fewer than 3 layers or no dataset texts."""
    teleport = perturbation["measures"].sel(kind="teleport")
    layers = [int(x) for x in perturbation["layer"].values]
    table = {
        str(layer): {m: float(teleport.sel(layer=layer, measure=m)) for m in MEASURES}
        for layer in layers
    }
    out = {"layers": layers, "per_layer": table, "mid_recovers_more": None}
    if len(layers) >= 3:
        verdicts = {}
        for measure in ("end_mse", "end_spread_ratio", "kl"):
            values = np.array([table[str(layer)][measure] for layer in layers])
            if np.isnan(values).all():
                continue
            verdicts[measure] = {
                "mid": float(np.nanmean(values[1:-1])),
                "first_last": float(np.nanmean(values[[0, -1]])),
            }
        out["verdicts"] = verdicts
    if replicates is None:
        replicates = int(perturbation.attrs.get("bootstrap_replicates", DEFAULT_REPLICATES))
    if seed is None:
        seed = int(perturbation.attrs.get("seed", 0))
    if "dataset_measures" in perturbation and perturbation.sizes.get("text", 0):
        per_text = perturbation["dataset_measures"]
        mean = per_text.mean("text")
        out["dataset_per_layer"] = {
            str(layer): {m: float(mean.sel(layer=layer, measure=m)) for m in MEASURES}
            for layer in layers
        }
        remaining = per_text.sel(measure="remaining").transpose("text", "layer").values
    else:
        remaining = np.zeros((0, len(layers)))
    out["verdict"] = remaining_verdict(remaining, layers, replicates=replicates, seed=seed)
    block = out["verdict"]["remaining"]
    if block is not None and block["recovers"] is not None:
        out["mid_recovers_more"] = bool(block["recovers"] and block["mid_lower"])
    return out

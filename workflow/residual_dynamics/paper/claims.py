"""The paper's claims as measurable signatures, each with the controls that decide it.

One list serves the captions (the verdict under a panel), the controls table of each recording and
the claims-at-a-glance grid. A measure reads ``summary.json`` (Figures 1-2) and
``reduction_summary.json`` (Figures 3-4) and returns ``(value, holds)``: whether the paper's
statement holds on this recording, at its threshold; ``holds`` is ``None`` where the run has nothing
to compare (a module switched off, too few layers). The thresholds are the paper's statements made
testable (``docs/paper-transformer-dynamics.md``); they are fixed here, not tuned to runs.

Holding is not enough to be *reproduced*: paper.verdicts contrasts each claim with the controls
named in ``Claim.controls`` (why those: ``Claim.why``), replicate by replicate of the bootstrap over
texts (``replicate_values``), in the direction ``Claim.direction`` (+1: a larger value is more of
the claim).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from residual_dynamics.paper.reference import CLAIM_NUMBERS, CORRELATION_FLOOR

Measure = Callable[[dict, dict | None], tuple[float | None, bool | None]]


@dataclass(frozen=True)
class Claim:
    key: str
    panel: str
    statement: str  # the paper's finding, as a testable sentence
    paper: str  # the paper's number(s) for it (paper.reference.CLAIM_NUMBERS)
    measured: str  # what the value column holds
    measure: Measure
    direction: int = 1  # +1: a larger value is more of the claim; -1: a smaller one
    controls: tuple[str, ...] = ()  # the controls that decide it (paper.verdicts.CONTROL_LABELS)
    why: str = ""  # why those controls, in one sentence


def _finite(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _first_correlation(s: dict, _r) -> tuple:
    r = _finite(s["per_transition"]["correlation"])
    return (None, None) if not np.isfinite(r[0]) else (float(r[0]), bool(r[0] > CORRELATION_FLOOR))


def _correlation_rises(s: dict, _r) -> tuple:
    rho = s.get("correlation_rises_with_depth")
    return (None, None) if rho is None else (float(rho), bool(rho > 0))


def _within_minus_cross(quantity: str, sign: int) -> Measure:
    def measure(s: dict, _r) -> tuple:
        kinds = s["by_kind"][quantity]
        if kinds.get("within") is None or kinds.get("cross") is None:
            return None, None
        diff = float(kinds["within"] - kinds["cross"])
        return diff, bool(sign * diff > 0)

    return measure


def _cosine_rises(s: dict, _r) -> tuple:
    cosine = _finite(s["per_transition"]["cosine"])
    if cosine.size < 3:
        return None, None
    half = cosine.size // 2
    gain = float(np.nanmean(cosine[half:]) - cosine[0])
    return gain, bool(gain > 0)


def _velocity_peaks_late(s: dict, _r) -> tuple:
    velocity = _finite(s["per_transition"]["velocity"])
    if velocity.size < 3 or not np.isfinite(velocity).any():
        return None, None
    where = float(np.nanargmax(velocity) / (velocity.size - 1))
    return where, bool(where >= 2 / 3)


def _mi_drops_early(s: dict, _r) -> tuple:
    mi = _finite(s["per_transition"]["mi_kde"])
    if mi.size < 3 or not np.isfinite(mi[0]) or mi[0] <= 0:
        return None, None
    later = mi[1:][np.isfinite(mi[1:])]
    if not later.size:
        return None, None
    ratio = float(np.median(later) / mi[0])  # the median: one dip anywhere is not a drop
    return ratio, bool(ratio < 0.5)


def _rotates_beyond_surrogates(s: dict, _r) -> tuple:
    """The fraction of units beyond the strictest autocorrelation-keeping null; holds when every
    such null is passed (binomial test against the 5 % expected, analysis.rotations)."""
    rotations = s["rotations"]
    nulls = rotations.get("nulls", {})
    fractions = [
        nulls[k]["frac_beyond95"]
        for k in SURROGATE_NULLS
        if nulls.get(k, {}).get("frac_beyond95") is not None
    ]
    if not fractions:
        return None, None
    strictest = float(min(fractions))
    if "passes_every_null" in rotations:
        return strictest, bool(rotations["passes_every_null"])
    passes = all(
        nulls[k].get("binom_p_beyond95") is not None
        and nulls[k]["binom_p_beyond95"] < 0.05 / len(fractions)
        for k in SURROGATE_NULLS
        if k in nulls
    )
    return strictest, bool(passes)


SURROGATE_NULLS = ("random_walk", "ar1", "phase")


def _cae(field: str) -> Measure:
    def measure(_s, r: dict | None) -> tuple:
        cae = (r or {}).get("cae")
        if not cae:
            return None, None
        if field == "ev_rises":
            return cae.get("ev_last"), cae.get("ev_rises")
        last, median = cae.get("step_last"), cae.get("step_median")
        if last is None or not median:
            return None, None
        return float(last / median), bool(last > 2 * median)

    return measure


def _pca_later(_s, r: dict | None) -> tuple:
    pca = (r or {}).get("pca")
    if not pca:
        return None, None
    gain = pca["cumulative_at_last"] - pca["cumulative_at_first"]
    return float(gain), pca.get("later_need_fewer")


def _teleports_recover(_s, r: dict | None) -> tuple:
    """Mid-depth remaining distance minus the lower of the first and last layers' (per text,
    analysis.perturbation.recovery_summary); holds when teleports recover at all (below 1 beyond
    the interval) and mid-depth is lower than that edge beyond the interval."""
    pert = (r or {}).get("perturbation")
    if not pert:
        return None, None
    remaining = (pert.get("verdict") or {}).get("remaining")
    if not remaining or remaining.get("contrast") is None:
        return None, None
    holds = pert.get("mid_recovers_more")
    return float(remaining["contrast"]), None if holds is None else bool(holds)


CLAIMS: list[Claim] = [
    Claim(
        "corr_early",
        "1C",
        "successive sublayers correlate above 0.8 from the first transition",
        CLAIM_NUMBERS["corr_early"],
        "mean r at t0",
        _first_correlation,
    ),
    Claim(
        "corr_rises",
        "1C",
        "correlation rises with depth",
        CLAIM_NUMBERS["corr_rises"],
        "rank correlation with depth",
        _correlation_rises,
    ),
    Claim(
        "corr_within",
        "1C",
        "within-layer correlation exceeds cross-layer",
        CLAIM_NUMBERS["corr_within"],
        "within − cross",
        _within_minus_cross("correlation", +1),
    ),
    Claim(
        "cosine_rises",
        "1E",
        "cosine similarity rises from the first transition",
        CLAIM_NUMBERS["cosine_rises"],
        "second-half mean − t0",
        _cosine_rises,
    ),
    Claim(
        "velocity_late",
        "1F",
        "velocity peaks in the last third",
        CLAIM_NUMBERS["velocity_late"],
        "depth of the peak (0-1)",
        _velocity_peaks_late,
    ),
    Claim(
        "velocity_cross",
        "1F",
        "cross-layer transitions move faster than within-layer",
        CLAIM_NUMBERS["velocity_cross"],
        "within − cross",
        _within_minus_cross("velocity", -1),
    ),
    Claim(
        "mi_drop",
        "1H",
        "MI drops after the first transition to below half",
        CLAIM_NUMBERS["mi_drop"],
        "median later / t0",
        _mi_drops_early,
    ),
    Claim(
        "rotations",
        "2B",
        "units rotate more than autocorrelated noise",
        CLAIM_NUMBERS["rotations"],
        "units beyond the strictest surrogate's 95th pct.",
        _rotates_beyond_surrogates,
    ),
    Claim(
        "cae_last_step",
        "3C",
        "the last latent step is the largest by far",
        CLAIM_NUMBERS["cae_last_step"],
        "last step / median step",
        _cae("step"),
    ),
    Claim(
        "cae_ev_rises",
        "3D",
        "the CAE reconstructs later sublayers better",
        CLAIM_NUMBERS["cae_ev_rises"],
        "explained variance at the last sublayer",
        _cae("ev_rises"),
    ),
    Claim(
        "pca_later",
        "4C",
        "later sublayers need fewer components",
        CLAIM_NUMBERS["pca_later"],
        "last − first",
        _pca_later,
    ),
    Claim(
        "teleports",
        "4D",
        "mid-depth teleports recover more than first- and last-layer ones",
        CLAIM_NUMBERS["teleports"],
        "remaining distance, mid − lower of first/last",
        _teleports_recover,
    ),
]


TWIN, WALK = "untrained twin", "random walk"
_STREAM = (TWIN, WALK)
_WALK_WHY = (
    "the residual stream adds increments by construction: a random walk with the recording's "
    "starts and step sizes shows this too; the twin shows what the architecture alone gives"
)
# direction, deciding controls, why (the controls table and claims.json show it).
DECIDED_BY = {
    "corr_early": (+1, _STREAM, _WALK_WHY),
    "corr_rises": (+1, _STREAM, _WALK_WHY),
    "corr_within": (+1, _STREAM, _WALK_WHY),
    "cosine_rises": (+1, _STREAM, _WALK_WHY),
    "velocity_late": (
        +1,
        (TWIN,),
        "the matched walk copies the step sizes that velocity measures, so only the twin decides",
    ),
    "velocity_cross": (
        -1,
        (TWIN,),
        "the matched walk copies the step sizes that velocity measures, so only the twin decides",
    ),
    "mi_drop": (-1, _STREAM, _WALK_WHY),
    "rotations": (
        +1,
        _STREAM,
        "a random walk rotates about 11 times over 64 steps; the surrogate nulls are inside the "
        "measure (every one must be passed), the walk and the twin outside it",
    ),
    "cae_last_step": (+1, (TWIN,), "the CAE runs on model recordings only: the twin decides"),
    "cae_ev_rises": (+1, (TWIN,), "the CAE runs on model recordings only: the twin decides"),
    "pca_later": (+1, _STREAM, _WALK_WHY),
    "teleports": (
        -1,
        (TWIN,),
        "teleports re-enter the model, which a synthetic walk has not: the twin decides",
    ),
}
CLAIMS = [
    replace(
        c, direction=DECIDED_BY[c.key][0], controls=DECIDED_BY[c.key][1], why=DECIDED_BY[c.key][2]
    )
    for c in CLAIMS
]


def evaluate(summary: dict, reduction: dict | None) -> dict[str, tuple[float | None, bool | None]]:
    """Every claim's (value, holds) for one recording."""
    out = {}
    for claim in CLAIMS:
        try:
            out[claim.key] = claim.measure(summary, reduction)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
            # A summary written by a run with parts switched off: not comparable, never a crash.
            out[claim.key] = (None, None)
    return out


def verdict_word(holds: bool | None) -> str:
    return {True: "reproduced", False: "not reproduced", None: "not comparable"}[holds]


# The negative-control recordings' labels, by kind (config verdicts.controls).
CONTROL_LABELS = {
    "random_walk": WALK,
    "constant_walk": "constant-step walk",
    "white_noise": "white noise",
}


def controls_of(
    models: dict, datasets: dict, recordings, model: str, dataset: str
) -> dict[str, tuple[str, str]]:
    """The control recordings of (model, dataset) that the config's ``models`` and ``datasets``
    define: its untrained twin (a model with the same source and ``init: random``) on the same
    texts, the same model on the texts' token-shuffled variant, and the negative-control
    recordings made from its store (``dataset--kind``, config.schema.control_recordings). Only
    pairs among ``recordings`` (recordings and control recordings) are returned."""
    runs = {tuple(pair) for pair in recordings}
    out = {}
    for kind, label in CONTROL_LABELS.items():
        if (model, f"{dataset}--{kind}") in runs:
            out[label] = (model, f"{dataset}--{kind}")
    spec = models.get(model, {})
    if spec.get("init", "pretrained") != "random":
        source = model_source(spec)
        for name, other in models.items():
            if (
                other.get("init") == "random"
                and model_source(other) == source
                and (name, dataset) in runs
            ):
                out["untrained twin"] = (name, dataset)
                break
    for name, other in datasets.items():
        if (
            other.get("variant_of") == dataset
            and other.get("shuffle_tokens")
            and (model, name) in runs
        ):
            out["shuffled tokens"] = (model, name)
            break
    return out


def model_source(spec: dict) -> list:
    """What a model spec loads (its source keys and values): a model and its untrained twin share it."""
    from residual_dynamics.config.schema import MODEL_SOURCES

    return [(key, repr(spec[key])) for key in MODEL_SOURCES if key in spec]

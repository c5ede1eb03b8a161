"""A verdict for every claim, as a contrast with its controls and with its uncertainty.

The rule, one place for every claim (paper.claims names each claim's controls and direction):

- *not comparable*: no value (a module off, too few layers, a measure that cannot register its
  planted positive, e.g. rotations at few sublayers), or the claim holds but none of the controls
  that decide it was recorded: a threshold alone is not a finding;
- *not reproduced*: the paper's statement does not hold on the recording (at its threshold);
- *not specific*: it holds, but some deciding control shows it as strongly: the contrast
  ``direction x (recording - control)``, replicate by replicate of the paired bootstrap over texts,
  has an interval that does not lie above 0 (without replicates: a point contrast <= 0);
- *reproduced*: it holds and beats every deciding control that was recorded beyond the interval.

Each record says what decided it (``decided_by``) in words, and is written to
``results/report/claims.json`` by the claims rule.
"""

from __future__ import annotations

import numpy as np

from residual_dynamics.analysis.bootstrap import LEVEL, interval
from residual_dynamics.paper.claims import CLAIMS, CONTROL_LABELS, WALK, Claim, evaluate

VERDICTS = ("reproduced", "not specific", "not reproduced", "not comparable")
NEGATIVE_CONTROLS = tuple(CONTROL_LABELS.values())
CURVES = ("correlation", "cosine", "velocity", "mi_kde")
# Parametric replicates of a fraction of units (rotations): a seeded binomial draw per replicate.
FRACTION_REPLICATES = 2000


def _curve(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def by_kind(curve: np.ndarray, kinds: np.ndarray) -> dict:
    """The curve's mean over the within-layer and over the cross-layer transitions (None where
    there is no finite value); the same for the point value (summary.py) and every replicate."""
    out = {}
    for kind in ("within", "cross"):
        values = curve[(kinds == kind) & np.isfinite(curve)]
        out[kind] = float(values.mean()) if values.size else None
    return out


def spearman_with_depth(curve: np.ndarray) -> float | None:
    """Spearman's rank correlation of the curve with depth (None: under 3 finite values, or flat):
    Pearson's on ranks, ties averaged (scipy.stats.spearmanr's value, without importing scipy.stats,
    which costs each summary job more time than its work)."""
    finite = np.isfinite(curve)
    if finite.sum() < 3 or np.ptp(curve[finite]) == 0:
        return None
    _, inverse, counts = np.unique(curve[finite], return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    depth_ranks = np.arange(ranks.size, dtype=float)  # depth has no ties
    return float(np.corrcoef(depth_ranks, ranks)[0, 1])


def replicate_summaries(summary: dict) -> list[dict]:
    """The summary as each bootstrap replicate of its curves sees it (per-transition curves, the
    within/cross means, the rank correlation with depth); a curve with fewer replicates (MI) is
    NaN beyond them. [] without a bootstrap."""
    boot = summary.get("bootstrap") or {}
    curves = boot.get("curves") or {}
    if not curves:
        return []
    n_rep = max(len(reps) for reps in curves.values())
    per_transition = summary["per_transition"]
    kinds = np.asarray(per_transition["kind"])
    out = []
    for b in range(n_rep):
        pt = dict(per_transition)
        for name in CURVES:
            reps = curves.get(name)
            pt[name] = _curve(reps[b]).tolist() if reps and b < len(reps) else [None] * len(kinds)
        arrays = {name: _curve(pt[name]) for name in CURVES}
        out.append(
            {
                **summary,
                "per_transition": pt,
                "by_kind": {name: by_kind(arrays[name], kinds) for name in CURVES},
                "correlation_rises_with_depth": spearman_with_depth(arrays["correlation"]),
            }
        )
    return out


def replicate_values(
    claim: Claim, summary: dict, reduction: dict | None, replicas: list[dict] | None = None
) -> np.ndarray | None:
    """The claim's value in every bootstrap replicate (NaN where undefined), or None where the
    claim has no replicates (the CAE and PCA are fitted once)."""
    measured = replicate_measures(claim, summary, reduction, replicas)
    return None if measured is None else measured[0]


def replicate_measures(
    claim: Claim, summary: dict, reduction: dict | None, replicas: list[dict] | None = None
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(values, holds) of the claim in every bootstrap replicate: holds is None where the measure
    decides its own uncertainty (rotations' binomial tests, teleports' intervals)."""
    if claim.key == "teleports":
        remaining = (((reduction or {}).get("perturbation") or {}).get("verdict") or {}).get(
            "remaining"
        ) or {}
        reps = (remaining.get("replicates") or {}).get("contrast")
        return None if not reps else (_curve(reps), None)
    if claim.key == "rotations":
        reps = _fraction_replicates(summary)
        return None if reps is None else (reps, None)
    if claim.key.startswith(("cae", "pca")):
        return None
    replicas = replicate_summaries(summary) if replicas is None else replicas
    if not replicas:
        return None
    values, holds = [], []
    for replica in replicas:
        try:
            value, ok = claim.measure(replica, reduction)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
            value, ok = None, None
        values.append(np.nan if value is None else value)
        holds.append(np.nan if ok is None else float(ok))
    return np.asarray(values, float), np.asarray(holds, float)


def _fraction_replicates(summary: dict) -> np.ndarray | None:
    from residual_dynamics.paper.claims import SURROGATE_NULLS

    rotations = summary.get("rotations") or {}
    nulls = rotations.get("nulls") or {}
    n = rotations.get("n_units") or rotations.get("n_units_tested")
    fractions = [
        nulls[k]["frac_beyond95"]
        for k in SURROGATE_NULLS
        if nulls.get(k, {}).get("frac_beyond95") is not None
    ]
    if not fractions or not n:
        return None
    rng = np.random.default_rng([0, int(n)])
    return rng.binomial(int(n), min(fractions), FRACTION_REPLICATES) / int(n)


def deciding_controls(claim: Claim) -> tuple[str, ...]:
    """The controls that decide ``claim``: its own, and every negative control where the random
    walk is one (a constant-step walk and white noise destroy the same dynamics, or more)."""
    if WALK in claim.controls:
        return tuple(dict.fromkeys((*claim.controls, *NEGATIVE_CONTROLS)))
    return claim.controls


def _fmt(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3g}"


def judge(
    claim: Claim,
    measured: tuple[float | None, bool | None],
    replicates: np.ndarray | None,
    controls: dict[str, tuple[tuple[float | None, bool | None], np.ndarray | None]],
    *,
    not_testable: str | None = None,
    replicate_holds: np.ndarray | None = None,
) -> dict:
    """One claim's verdict on one recording: ``measured`` its (value, holds), ``replicates`` its
    bootstrap values, ``controls`` label -> ((value, holds), replicates) for the recorded controls.
    ``replicate_holds``: whether the statement holds in each replicate (1/0, NaN undefined); it
    must hold in at least (1 + level) / 2 of them (97.5 %) to hold beyond its uncertainty.
    Returns the record's verdict fields: value, ci, verdict, decided_by, contrasts."""
    value, holds = measured
    ci = interval(replicates, LEVEL) if replicates is not None else None
    record = {"value": value, "ci": ci, "contrasts": {}}
    if not_testable:
        return record | {"verdict": "not comparable", "decided_by": [not_testable]}
    if value is None or holds is None:
        return record | {
            "verdict": "not comparable",
            "decided_by": ["no value: the measure is undefined on this run"],
        }
    if not holds:
        return record | {
            "verdict": "not reproduced",
            "decided_by": [f"the paper's statement does not hold here ({claim.statement})"],
        }
    if replicate_holds is not None and np.isfinite(replicate_holds).sum() >= 10:
        share = float(np.nanmean(replicate_holds))
        if share < (1 + LEVEL) / 2:
            return record | {
                "verdict": "not reproduced",
                "decided_by": [
                    f"holds at the point value but in only {share:.0%} of the bootstrap "
                    f"replicates (needs {(1 + LEVEL) / 2:.1%}): not beyond its uncertainty"
                ],
            }
    wanted = deciding_controls(claim)
    present = [label for label in wanted if label in controls]
    if not present:
        return record | {
            "verdict": "not comparable",
            "decided_by": [
                "holds, but no control that decides it was recorded (needs "
                + " or ".join(claim.controls)
                + ")"
            ],
        }
    decided, failed = [], []
    for label in present:
        (c_value, _), c_reps = controls[label]
        if c_value is None:
            decided.append(f"{label}: no value there")
            failed.append(label)
            continue
        point = claim.direction * (value - c_value)
        contrast = {"value": point, "ci": None}
        if replicates is not None and c_reps is not None and len(c_reps) and len(replicates):
            n = min(len(replicates), len(c_reps))
            diff = claim.direction * (replicates[:n] - c_reps[:n])
            contrast["ci"] = interval(diff, LEVEL)
        if contrast["ci"] is not None:
            beats = contrast["ci"][0] > 0
            how = (
                f"{label}: contrast {_fmt(point)} [{_fmt(contrast['ci'][0])}, "
                f"{_fmt(contrast['ci'][1])}] (paired bootstrap)"
            )
        else:
            beats = point > 0
            how = f"{label}: contrast {_fmt(point)} (point values: no interval)"
        record["contrasts"][label] = contrast
        decided.append(how + (" beats it" if beats else " does not beat it"))
        if not beats:
            failed.append(label)
    missing = [label for label in claim.controls if label not in controls]
    if missing:
        decided.append("not recorded: " + ", ".join(missing))
    if failed:
        return record | {"verdict": "not specific", "decided_by": decided}
    return record | {"verdict": "reproduced", "decided_by": decided}


def judge_recording(
    summary: dict,
    reduction: dict | None,
    controls: dict[str, tuple[dict, dict | None]],
) -> dict[str, dict]:
    """Every claim's verdict record on one recording; ``controls`` label -> (summary, reduction)
    of each recorded control."""
    measured = evaluate(summary, reduction)
    replicas = replicate_summaries(summary)
    control_measures = {
        label: (evaluate(s, r), replicate_summaries(s), s, r) for label, (s, r) in controls.items()
    }
    out = {}
    for claim in CLAIMS:
        measured_reps = replicate_measures(claim, summary, reduction, replicas)
        reps, rep_holds = measured_reps if measured_reps is not None else (None, None)
        judged_controls = {
            label: (m[claim.key], replicate_values(claim, s, r, c_replicas))
            for label, (m, c_replicas, s, r) in control_measures.items()
        }
        out[claim.key] = judge(
            claim,
            measured[claim.key],
            reps,
            judged_controls,
            not_testable=_not_testable(claim, summary),
            replicate_holds=rep_holds,
        )
    return out


def _not_testable(claim: Claim, summary: dict) -> str | None:
    if claim.key != "rotations":
        return None
    testable = (summary.get("rotations") or {}).get("testable")
    if isinstance(testable, dict) and testable.get("value") is False:
        return str(testable.get("reason") or "not testable with the paper's measure here")
    return None


def claims_records(
    recordings, summaries: dict, reductions: dict, controls_of_recording: dict
) -> list[dict]:
    """claims.json: one record per (model, dataset, claim) with model, dataset, claim, panel,
    statement, value, ci, verdict, decided_by, contrasts and the deciding controls."""
    records = []
    for pair in recordings:
        controls = {
            label: (summaries[other], reductions.get(other))
            for label, other in controls_of_recording.get(pair, {}).items()
            if other in summaries
        }
        judged = judge_recording(summaries[pair], reductions.get(pair), controls)
        for claim in CLAIMS:
            record = judged[claim.key]
            records.append(
                {
                    "model": pair[0],
                    "dataset": pair[1],
                    "claim": claim.key,
                    "panel": claim.panel,
                    "statement": claim.statement,
                    "measured": claim.measured,
                    "value": record["value"],
                    "ci": record["ci"],
                    "verdict": record["verdict"],
                    "decided_by": record["decided_by"],
                    "controls": {
                        label: list(controls_of_recording[pair][label])
                        for label in deciding_controls(claim)
                        if label in controls_of_recording.get(pair, {})
                    },
                    "contrasts": record["contrasts"],
                    "why_these_controls": claim.why,
                }
            )
    return records

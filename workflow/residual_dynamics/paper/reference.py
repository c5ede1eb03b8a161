"""The paper's reported numbers, in one place: Fernando & Guitchounts (2025), "Transformer Dynamics:
a neuroscientific approach to interpretability of LLMs", on Llama 3.1 8B (64 sublayers, d = 4096).
Transcribed in ``../shared/docs/paper-transformer-dynamics.md``.

The captions quote ``FINDINGS``, the controls table ``CLAIM_NUMBERS``, the cross-model figure draws
``CURVES``; the claims' thresholds (``CORRELATION_FLOOR``) are the paper's statements made testable.
"""

from __future__ import annotations

MODEL = "Llama 3.1 8B"
# Transitions between its 64 recorded sublayers that the paper's curves span (t0 ... t61, and t62
# for the final norm), for drawing them on a depth axis of 0-1.
N_TRANSITIONS = 62
# Figure 1C: "r > 0.8 even early".
CORRELATION_FLOOR = 0.8

# Values its text states, as (transition t, value). Velocity is divided by its peak (≈ 24 at t61),
# since its scale depends on the model's norm.
CURVES = {
    "cosine": [(0, 0.52), (1, 0.70), (2, 0.835), (6, 0.925), (61, 0.875)],
    "velocity": [(0, 0.5 / 24), (51, 8 / 24), (61, 1.0)],
    "mi_kde": [(0, 4.35), (1, 2.7), (2, 1.45), (9, 0.975), (30, 0.975), (50, 1.35), (60, 1.35)],
}

# Each claim's number(s) in the paper, as the controls table shows them (paper.claims.CLAIMS).
CLAIM_NUMBERS = {
    "corr_early": "r > 0.8 at t0",
    "corr_rises": "rising",
    "corr_within": "within > cross",
    "cosine_rises": "0.52 at t0 → 0.99",
    "velocity_late": "peak ≈ 24 at t61 of 62",
    "velocity_cross": "cross > within",
    "mi_drop": "4.35 → trough 0.75-1.2",
    "rotations": "R = 10.74 vs ≈ 0 (pair shuffle only)",
    "cae_last_step": "≈ 0.24 vs mostly < 0.1",
    "cae_ev_rises": "≈ 0 → 0.75",
    "pca_later": "0.04 → 0.57 (peak) at 100 PCs",
    "teleports": "qualitative (no numbers)",
}

# Each panel's finding as its caption quotes it (HTML).
FINDINGS = {
    "fig1b": "<i>Paper (Llama 3.1 8B):</i> most units stay near zero with a few strongly positive "
    "or negative units persisting across layers.",
    "fig1c": "<i>Paper:</i> r &gt; 0.8 even early, within-layer above cross-layer, both rising "
    "with depth.",
    "fig1d": "<i>Paper:</i> most units' correlations lie close to 1.",
    "fig1e": "<i>Paper (Llama 3.1 8B):</i> ≈ 0.52 at t0, 0.70 at t1, rising to ≈ 0.99 within "
    "layers mid-depth.",
    "fig1f": "<i>Paper:</i> ≈ 0.5 at t0 growing to a peak of ≈ 24 at t61, cross-layer faster than "
    "within-layer.",
    "fig1g": "<i>Paper:</i> high MI at the first transitions, then a drop and a plateau.",
    "fig1h": "<i>Paper:</i> ≈ 4.35 nats at t0, 2.7 at t1, 1.45 at t2, a trough of ≈ 0.75-1.2 for "
    "t 9-30.",
    "fig2a": '<i>Paper:</i> units trace spirals ("unstable periodic orbits") in the plane of their '
    "mean activation and its derivative over sublayers.",
    "fig2b": "<i>Paper:</i> mean R = 10.74 over 64 sublayers against ≈ 0 for the pair shuffle.",
    "fig3b": "<i>Paper:</i> the mean 2-D latent trajectory curves, then straightens late.",
    "fig3c": "<i>Paper:</i> mostly &lt; 0.1, ≈ 0.24 at the last transition.",
    "fig3d": "<i>Paper:</i> ≈ 0 at sublayer 0, ≈ 0.6 by sublayer 5, ≈ 0.75 at 45-55.",
    "fig4a": "<i>Paper:</i> the mean trajectory curves early and straightens late.",
    "fig4b": "<i>Paper:</i> later sublayers reach a higher share with the same number of "
    "components.",
    "fig4c": "<i>Paper (100 of 4096 components):</i> ≈ 0.04 at sublayer 0, peak ≈ 0.57 near "
    "sublayer 47, ≈ 0.45 at 63.",
    "fig4d": "<i>Paper:</i> teleports at layers 0 and 31 end far from the control; those at 7, 15 "
    "and 23 recover (lower spread, lower MSE to the control); no numbers given.",
}

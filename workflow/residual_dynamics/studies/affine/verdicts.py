"""The affine study's verdicts: the paper's two claims (copying in layer 0, negative-similarity
refinement in the last layer) judged on one model's numbers. The paper publishes no thresholds
(see ``reference``), so these are ours; the report section states them."""

from __future__ import annotations

import numpy as np


def verdicts(result: dict) -> dict:
    """The paper's two claims, judged on one model's numbers (thresholds stated in the text)."""
    l0 = result["layer0"]
    lens0 = result["lens"][0] if 0 in result["lens"] else result["lens"]["0"]
    m = result["min_position"]
    copy_lens = max(
        float(np.nanmean(np.asarray(lens0["current"], dtype=float)[m:])),
        float(np.nanmean(np.asarray(lens0["previous"], dtype=float)[m:])),
    )
    offsets = np.asarray(l0["attention_by_offset"])
    # A copying head: attends mostly to a fixed recent offset and its OV circuit copies.
    copy_heads = [
        h
        for h in range(result["n_heads"])
        if offsets[h, :3].max() > 0.5 and l0["ov_copy_eigen"][h] > 0.5
    ]
    layer0 = bool(copy_heads) and copy_lens > 0.5
    last = result["last_layer"]
    neg = [
        h for h, s in enumerate(last["qk_cosine_slope"]) if s < 0 and last["qk_cosine_r"][h] < -0.2
    ]
    refine = [h for h in neg if last["dla"]["estimate_when_wrong"][h] < 0]
    gap = result.get("bayes_gap") or {}
    return {
        "determined_from": gap.get("determined_from"),
        "min_ratio_to_bayes": gap.get("min_ratio_determined"),
        "reaches_bayes_bar": bool(gap.get("reaches_bar", False)),
        "copying_heads_layer0": copy_heads,
        "layer0_lens_copy_share": copy_lens,
        "layer0_copying_holds": layer0,
        "negative_similarity_heads": neg,
        "refining_heads": refine,
        "negative_similarity_holds": bool(refine),
    }

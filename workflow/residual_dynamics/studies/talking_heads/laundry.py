"""The Laundry List with interventions on the mover head, for one model: accuracy against the
number of listed items N, then (at one N) removing each feeding head's top OV component and a
control component, steering along the top component's write direction, and the 3-D grid of the
mover's attention over the span of the top three components (``laundry_list_analysis``, the
``talking_heads_laundry_list`` rule's dataset). The prompts and their scoring are in
``laundry_task``; the model edits in ``runner``. Needs torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from residual_dynamics.studies.talking_heads import laundry_task as ll
from residual_dynamics.studies.talking_heads.runner import (
    Runner,
    component_removed,
    head_write_projection,
    last_token_attention,
    residual_at_layer,
    steered,
)
from residual_dynamics.studies.talking_heads.weights import (
    TalkingHeadsError,
    component_label,
    heads_of,
)

log = logging.getLogger(__name__)


def skipped_dataset(model_name: str, reason: str) -> xr.Dataset:
    return xr.Dataset(attrs={"model": model_name, "skipped": True, "reason": reason})


def _component_rank(data: xr.Dataset, kind: str, mover: str, sources: Sequence[str]) -> list[dict]:
    """Components of ``sources`` into the mover, highest z first."""
    z = data["component_z"].sel(kind=kind, target=mover)
    score = data["component_score"].sel(kind=kind, target=mover)
    rows = []
    for source in sources:
        for c in range(z.sizes["component"]):
            value = float(z.sel(source=source, component=c))
            if np.isfinite(value):
                rows.append(
                    {
                        "source": source,
                        "component": c,
                        "label": component_label(source, c),
                        "z": value,
                        "score": float(score.sel(source=source, component=c)),
                    }
                )
    return sorted(rows, key=lambda r: -r["z"])


def vocabulary_skip(tokenizer, model_name: str) -> xr.Dataset | None:
    """The skipped result, with the reason, when the tokenizer cannot encode the task's words
    (the rule checks this before it loads the model); None when it can."""
    problems = ll.check_vocabulary(tokenizer)
    if not problems:
        return None
    reason = f"the Laundry List cannot run on {model_name}'s tokenizer: " + "; ".join(problems)
    log.warning("%s", reason)
    return skipped_dataset(model_name, reason)


def laundry_list_analysis(
    model,
    tokenizer,
    data: xr.Dataset,
    *,
    laundry_list: dict,
    interventions: dict,
    model_name: str,
    add_bos: bool,
    max_tokens: int | None,
) -> xr.Dataset:
    """Accuracy against N, then component removal, steering and the 3-D grid on the mover head.

    ``laundry_list`` and ``interventions`` are those blocks of the ``talking_heads`` config.
    Returns a dataset with ``skipped`` set and a reason when the tokenizer cannot encode the
    task's words.
    """
    task = laundry_list
    skipped = vocabulary_skip(tokenizer, model_name)
    if skipped is not None:
        return skipped
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    runner = Runner(model, pad)
    batch = task["batch_size"]
    n_values = list(range(task["n_min"], task["n_max"] + 1))
    curve = ll.accuracy_curve(
        tokenizer,
        runner,
        n_values=n_values,
        prompts_per_n=task["prompts_per_n"],
        seed=task["seed"],
        add_bos=add_bos,
        batch_size=batch,
        max_tokens=max_tokens,
    )
    if not curve:
        reason = f"every N in {n_values[0]}..{n_values[-1]} exceeds {model_name}'s window"
        return skipped_dataset(model_name, reason)
    ns = [row["n_items"] for row in curve]
    width = max(ns)
    by_position = np.full((len(ns), width), np.nan)
    for i, row in enumerate(curve):
        by_position[i, : row["n_items"]] = row["accuracy_by_position"]
    variables = {
        key: ("n_items", np.array([row[key] for row in curve], dtype=np.float64))
        for key in (
            "accuracy_vocab",
            "accuracy_listed",
            "last_item_rate",
            "last_item_bias",
            "chance_listed",
        )
    }
    variables["accuracy_by_position"] = (("n_items", "list_position"), by_position)
    attrs = {
        "model": model_name,
        "skipped": False,
        "reason": "",
        "prompts_per_n": task["prompts_per_n"],
        "seed": task["seed"],
    }

    heads = heads_of(data)
    kind = heads["kind"]
    attrs.update(
        mover_head=heads["mover"],
        inhibition_heads=heads["inhibition"],
        heads_automatic=heads["automatic"],
        selection_kind=kind,
    )
    iv = interventions
    if iv["enabled"]:
        n_iv = iv["n_items"]
        prompts = ll.generate_prompts(n_iv, iv["n_prompts"], iv["seed"])
        ids, object_positions = ll.encode_prompts(tokenizer, prompts, add_bos)
        if max_tokens is not None and max(len(s) for s in ids) > max_tokens:
            raise TalkingHeadsError(
                f"talking_heads.interventions.n_items: prompts with N = {n_iv} do not fit "
                f"{model_name}'s window of {max_tokens} tokens; lower it"
            )
        tokens = ll.first_token_ids(tokenizer, ll.OBJECTS)

        def accuracy() -> dict:
            return ll.summarise(ll.evaluate(prompts, ids, runner, tokens, batch))

        base = accuracy()
        attrs.update(
            intervention_n_items=n_iv,
            intervention_n_prompts=len(prompts),
            baseline_accuracy_vocab=base["accuracy_vocab"],
            baseline_accuracy_listed=base["accuracy_listed"],
        )
        ranked = _component_rank(data, kind, heads["mover"], heads["inhibition"])
        removals = []
        for source in heads["inhibition"]:
            own = [r for r in ranked if r["source"] == source]
            if not own:
                continue
            for row, control in ((own[0], False), (own[-1], True)):
                layer, head = (int(x) for x in source.split("."))
                direction = (
                    data["write_direction"].sel(source=source, component=row["component"]).values
                )
                with component_removed(model, layer, head, direction):
                    result = accuracy()
                removals.append({**row, "control": control, **result})
                log.info(
                    "removed %s (z %.2f%s): top-1 %.3f -> %.3f",
                    row["label"],
                    row["z"],
                    ", control" if control else "",
                    base["accuracy_vocab"],
                    result["accuracy_vocab"],
                )
        if removals:
            variables.update(
                removal_label=("removal", [r["label"] for r in removals]),
                removal_z=("removal", [r["z"] for r in removals]),
                removal_control=("removal", [r["control"] for r in removals]),
                removal_accuracy_vocab=("removal", [r["accuracy_vocab"] for r in removals]),
                removal_accuracy_listed=("removal", [r["accuracy_listed"] for r in removals]),
            )
        if ranked:
            top = ranked[0]
            layer, head = (int(x) for x in top["source"].split("."))
            direction = (
                data["write_direction"].sel(source=top["source"], component=top["component"]).values
            )
            projection = head_write_projection(runner, ids, layer, head, direction, batch)
            sigma = float(projection.std()) or 1.0
            scales = list(iv["steering_scales"])
            steer_vocab, steer_listed = [], []
            for scale in scales:
                with steered(runner, layer, scale * sigma * direction):
                    result = accuracy()
                steer_vocab.append(result["accuracy_vocab"])
                steer_listed.append(result["accuracy_listed"])
            variables.update(
                steering_accuracy_vocab=("scale", steer_vocab),
                steering_accuracy_listed=("scale", steer_listed),
            )
            attrs.update(
                steering_component=top["label"],
                steering_sigma=sigma,
                steering_projection_mean=float(projection.mean()),
            )
            grid = _attention_grid(
                model, runner, data, ranked, heads["mover"], prompts, ids, object_positions, iv
            )
            if grid is not None:
                coords_grid, attended, base_attended, labels = grid
                variables.update(
                    grid_coordinate=(("grid_point", "axis"), coords_grid),
                    grid_attended_index=(("grid_prompt", "grid_point"), attended),
                    grid_baseline_attended_index=("grid_prompt", base_attended),
                    grid_missing_index=(
                        "grid_prompt",
                        np.array([p.missing_index for p in prompts[: len(base_attended)]]),
                    ),
                )
                attrs["grid_components"] = labels
    coords = {"n_items": ns, "list_position": np.arange(width)}
    if "steering_accuracy_vocab" in variables:
        coords["scale"] = list(iv["steering_scales"])
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _attention_grid(model, runner, data, ranked, mover, prompts, ids, object_positions, iv):
    """Which sentence-1 item the mover head attends to, over a 3-D grid in the span of the top
    three components' write directions (the state entering the mover's layer, last token)."""
    picked = ranked[:3]
    if len(picked) < 3:
        return None
    directions = np.stack(
        [
            data["write_direction"].sel(source=r["source"], component=r["component"]).values
            for r in picked
        ],
        axis=1,
    ).astype(np.float64)
    basis, _ = np.linalg.qr(directions)  # (d, 3), orthonormal
    layer, head = (int(x) for x in mover.split("."))
    n_prompts = min(iv["grid_prompts"], len(prompts))
    resid = residual_at_layer(runner, ids[:n_prompts], layer)
    dtype = resid.dtype
    b = torch.as_tensor(basis, dtype=dtype, device=resid.device)
    lasts = [len(s) - 1 for s in ids[:n_prompts]]
    own = np.stack([(resid[i, lasts[i]] @ b).cpu().numpy() for i in range(n_prompts)])
    extent = iv["grid_extent"] * np.abs(own).max(axis=0) + 1e-6
    axes = [np.linspace(-e, e, iv["grid_points"]) for e in extent]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    grid_t = torch.as_tensor(grid, dtype=dtype, device=resid.device)
    attended = np.zeros((n_prompts, len(grid)), np.int64)
    base_attended = np.zeros(n_prompts, np.int64)
    for i in range(n_prompts):
        state = resid[i, lasts[i]]
        moved = state[None, :] + (grid_t - (state @ b)[None, :]) @ b.T
        pattern = last_token_attention(model, layer, head, resid[i], lasts[i], moved)
        positions = object_positions[i]
        attended[i] = pattern[:, positions].argmax(dim=1).cpu().numpy()
        own_pattern = last_token_attention(model, layer, head, resid[i], lasts[i])
        base_attended[i] = int(own_pattern[0, positions].argmax())
    return grid, attended, base_attended, [r["label"] for r in picked]

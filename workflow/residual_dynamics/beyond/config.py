"""The ``beyond`` section's plan and checks: which recordings it analyses, which of them the layer
ablation runs on (and why the others are skipped), and the untrained twin drawn beside each.

Pure functions of the validated config, so the rules file (workflow/rules/beyond.smk), the
section and the tests read the same plan.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

# The figures of one recording: the keys of ``figures.write_figures``' ``paths`` and the rule's
# outputs (here, not in figures.py, so that the DAG is built without importing xarray).
FIGURES = ("cka", "dimension", "spectra", "lyapunov", "ablation")

# Architectures of `train:` models (inputs.training): both are causal LMs saved with their head.
CAUSAL_TRAINED = ("gpt2", "llama")
LM_HEAD_CLASSES = ("ForCausalLM", "LMHeadModel")
ABLATION_OFF = "beyond.ablation.enabled is false"


def beyond_recordings(config: dict) -> list[tuple[str, str]]:
    """(model, dataset) pairs the module analyses: the recordings of ``runs`` on
    ``beyond.datasets`` (all when empty), less those on token-shuffled variants unless
    ``beyond.include_shuffled``."""
    from residual_dynamics.config.schema import recordings

    section = config.get("beyond", {})
    chosen = section.get("datasets") or []
    shuffled = not section.get("include_shuffled", True)
    return [
        (m, d)
        for m, d in recordings(config)
        if (not chosen or d in chosen)
        and not (shuffled and config["datasets"].get(d, {}).get("shuffle_tokens"))
    ]


def twin_of(config: dict, model: str, dataset: str) -> str | None:
    """The untrained twin of ``model`` recorded on ``dataset`` among the module's recordings
    (paper.claims.controls_of: same source, ``init: random``), or None."""
    from residual_dynamics.paper.claims import controls_of

    pair = controls_of(
        config["models"], config["datasets"], beyond_recordings(config), model, dataset
    ).get("untrained twin")
    return pair[0] if pair else None


def figure_recordings(config: dict) -> list[tuple[str, str]]:
    """Recordings that get their own figures: every one that is not the untrained twin of another
    (a twin is drawn beside its trained model)."""
    pairs = beyond_recordings(config)
    twins = {(twin, d) for m, d in pairs if (twin := twin_of(config, m, d)) is not None}
    return [pair for pair in pairs if pair not in twins]


def _config_json(name: str, spec: dict, base_dir: Path) -> dict | None:
    """The model's config.json where it is on disk before any job runs (path, package)."""
    from residual_dynamics.inputs.locations import ModelLoadError, model_location

    if not ({"path", "package"} & set(spec)):
        return None
    try:
        location, _, _ = model_location(name, spec)
    except ModelLoadError:
        return None  # reported by the main validation
    path = Path(location) if Path(location).is_absolute() else base_dir / location
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None


def ablation_skip_reason(name: str, spec: dict, base_dir: Path | str = ".") -> str | None:
    """Why the layer ablation cannot run on a model, as far as its spec and any local config.json
    tell before a job runs; None if it can (or if only loading it will tell: a Hub model, which the
    rule checks itself)."""
    if "train" in spec:
        architecture = spec["train"].get("architecture", "gpt2")
        if architecture in CAUSAL_TRAINED:
            return None
        return f"a trained {architecture} model is not a causal LM"
    data = _config_json(name, spec, Path(base_dir))
    if data is None:
        return None
    from residual_dynamics.recording.architectures import architecture_for

    model_type = data.get("model_type", "?")
    try:
        arch = architecture_for(SimpleNamespace(**data))
    except ValueError as error:
        return str(error)
    if not arch.causal:
        return (
            f"a {model_type} model is not a causal LM: next-token loss and KL mean nothing for it"
        )
    classes = data.get("architectures") or []
    if classes and not any(c.endswith(LM_HEAD_CLASSES) for c in classes):
        return f"saved as {classes[0]}, without an LM head (next-token loss needs one)"
    return None


def model_width(name: str, spec: dict, base_dir: Path | str = ".") -> int | None:
    """The model's width d where its spec or a local config.json tells it before a job runs (a
    Hub model's is read from its store by the rule itself)."""
    if "train" in spec:
        return int(spec["train"].get("d_model", 0)) or None
    data = _config_json(name, spec, Path(base_dir))
    for key in ("hidden_size", "n_embd", "d_model"):
        if data is not None and isinstance(data.get(key), int):
            return data[key]
    return None


def too_wide(d: int | None, max_d: int | None) -> str | None:
    """Why the Jacobians are not computed for a model of width ``d``, or None."""
    if d is None or max_d is None or d <= max_d:
        return None
    return f"d = {d} is wider than beyond.jacobians.max_d ({max_d})"


def dynamics_plan(
    config: dict, base_dir: Path | str = "."
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(recordings whose Jacobians are computed, {"model on dataset": why not} for the others)."""
    max_d = config.get("beyond", {}).get("jacobians", {}).get("max_d")
    runs, skipped = [], {}
    for model, dataset in beyond_recordings(config):
        reason = too_wide(model_width(model, config["models"][model], base_dir), max_d)
        if reason is None:
            runs.append((model, dataset))
        else:
            skipped[f"{model} on {dataset}"] = reason
    return runs, skipped


def ablation_plan(
    config: dict, base_dir: Path | str = "."
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(recordings the layer ablation runs on, {"model on dataset": why not} for the others)."""
    section = config.get("beyond", {})
    runs, skipped = [], {}
    for model, dataset in beyond_recordings(config):
        if not section.get("ablation", {}).get("enabled", True):
            reason = ABLATION_OFF
        else:
            reason = ablation_skip_reason(model, config["models"][model], base_dir)
        if reason is None:
            runs.append((model, dataset))
        else:
            skipped[f"{model} on {dataset}"] = reason
    return runs, skipped


def check_config(config: dict, base_dir: Path | str = ".") -> list[str]:
    """Problems of the ``beyond`` section a schema cannot express, each naming its key."""
    section = config.get("beyond", {})
    if not section.get("enabled"):
        return []
    problems = []
    recorded = {d for run in config.get("runs", []) for d in run.get("datasets", [])}
    for i, name in enumerate(section.get("datasets", [])):
        if name not in recorded:
            problems.append(
                f"beyond.datasets[{i}]: '{name}' is recorded in no `runs` entry; recorded: "
                f"{', '.join(sorted(recorded)) or 'none'}"
            )
    if config.get("runs") and not problems and not beyond_recordings(config):
        problems.append(
            "beyond.include_shuffled: false leaves no recording to analyse (every recording "
            "chosen is on a token-shuffled dataset); set it to true or record the texts as written"
        )
    return problems

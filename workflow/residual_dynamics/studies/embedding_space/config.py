"""The embedding-space study's config: the (model, dataset) pairs it runs on, and the checks the
schema cannot express."""

from __future__ import annotations

import json
from pathlib import Path


def module_pairs(config: dict) -> list[tuple[str, str]]:
    """(model, dataset) pairs the module runs on: models of ``embedding_space.models`` on the
    datasets they are recorded on in ``runs`` (the walk reads their stores), restricted to
    ``embedding_space.datasets`` when that list is not empty."""
    from residual_dynamics.config.schema import recordings

    section = config.get("embedding_space", {})
    models, datasets = section.get("models", []), section.get("datasets", [])
    return [
        (m, d) for m, d in recordings(config) if m in models and (not datasets or d in datasets)
    ]


def model_label(config: dict, model: str, dataset: str) -> str:
    return f"{config['models'][model].get('label') or model} on {dataset}"


def _model_type_problem(name: str, spec: dict, key: str, base_dir: Path) -> str | None:
    """Architecture problems visible before any job runs (local config.json only: Hub and
    trained models are checked when the lens rule loads them)."""
    from types import SimpleNamespace

    from residual_dynamics.inputs.locations import ModelLoadError, model_location

    if "hub" in spec or not ({"path", "package"} & set(spec)):
        return None
    try:
        location, _, _ = model_location(name, spec)
    except ModelLoadError:
        return None  # reported by the main validation (path missing, package not installed)
    config_json = Path(location) if Path(location).is_absolute() else base_dir / location
    config_json = config_json / "config.json"
    if not config_json.exists():
        return None
    data = json.loads(config_json.read_text())
    from residual_dynamics.recording.architectures import architecture_for

    try:
        arch = architecture_for(SimpleNamespace(**data))
    except ValueError as error:
        return f"{key}: '{name}': {error}"
    model_type = data.get("model_type")
    if arch.norm != "pre" or arch.final_norm is None:
        return (
            f"{key}: '{name}' is a {model_type} model, a post-norm encoder without an LM head; "
            "the embedding-space module needs a causal decoder (remove it from the list)"
        )
    if arch.mid is None:
        return (
            f"{key}: '{name}' ({model_type}) has parallel attention/MLP blocks, so the walk "
            "cannot be split into attention and MLP steps (remove it from the list)"
        )
    classes = data.get("architectures") or []
    if classes and not any(c.endswith(("ForCausalLM", "LMHeadModel")) for c in classes):
        return (
            f"{key}: '{name}' was saved as {classes[0]}, without an LM head; save the "
            "*ForCausalLM model (its unembedding is what the logit lens needs)"
        )
    return None


def check_config(config: dict, base_dir: Path | str = ".") -> list[str]:
    """Problems with the ``embedding_space`` section that the schema cannot see, keys named."""
    section = config.get("embedding_space", {})
    if not section.get("enabled"):
        return []
    problems = []
    models, datasets = section.get("models", []), section.get("datasets", [])
    if not models:
        problems.append(
            "embedding_space.models: empty; list the causal decoders (keys of `models`) to "
            "study, e.g. [pydoc_llama, affine_gpt]"
        )
    recorded = {m for run in config.get("runs", []) for m in run.get("models", [])}
    for i, name in enumerate(models):
        key = f"embedding_space.models[{i}]"
        if name not in config.get("models", {}):
            problems.append(
                f"{key}: '{name}' is not defined under models; defined: "
                f"{', '.join(sorted(config.get('models', {}))) or 'none'}"
            )
            continue
        if name not in recorded:
            problems.append(
                f"{key}: '{name}' is in no `runs` entry; the walk reads its activation store, "
                "so add it to runs with the datasets to study"
            )
        problem = _model_type_problem(name, config["models"][name], key, Path(base_dir))
        if problem:
            problems.append(problem)
    for j, name in enumerate(datasets):
        if name not in config.get("datasets", {}):
            problems.append(
                f"embedding_space.datasets[{j}]: '{name}' is not defined under datasets"
            )
    if not problems and not module_pairs(config):
        problems.append(
            "embedding_space: no (model, dataset) pair to study: none of embedding_space.models "
            "is recorded in `runs` on any of embedding_space.datasets"
        )
    return problems

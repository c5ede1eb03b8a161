"""The Talking Heads study's config checks that the schema cannot express."""

from __future__ import annotations

import json
from pathlib import Path


def check_config(config: dict, base_dir: Path | str = ".") -> list[str]:
    """Problems a schema cannot express, each naming its key (empty when the block is fine).

    Model architectures are checked here when the model's config.json is on disk (path and package
    models) or from ``train.architecture``; Hub models are checked when the rule loads them.
    """
    from residual_dynamics.inputs.locations import ModelLoadError, package_model_dir

    block = config.get("talking_heads", {})
    if not block.get("enabled"):
        return []
    problems = []
    models = config.get("models", {})
    if not block.get("models"):
        problems.append(
            "talking_heads.models: empty while talking_heads.enabled is true; list the GPT-2-style "
            "models to analyse"
        )
    for i, name in enumerate(block.get("models", [])):
        if name not in models:
            problems.append(
                f"talking_heads.models[{i}]: '{name}' is not defined under models; defined: "
                f"{', '.join(sorted(models)) or 'none'}"
            )
            continue
        spec = models[name]
        config_json = None
        if "path" in spec:
            config_json = Path(base_dir) / Path(spec["path"]).expanduser() / "config.json"
        elif "package" in spec:
            try:
                config_json = package_model_dir(spec["package"]) / "config.json"
            except ModelLoadError:
                config_json = None
        if "train" in spec:
            architecture = (spec["train"] or {}).get("architecture", "gpt2")
            if architecture != "gpt2":
                problems.append(
                    f"talking_heads.models[{i}]: '{name}' is trained as a '{architecture}' model; "
                    "the talking-heads analysis needs models.<name>.train.architecture: gpt2"
                )
        if config_json is not None and config_json.exists():
            model_type = json.loads(config_json.read_text()).get("model_type")
            if model_type != "gpt2":
                problems.append(
                    f"talking_heads.models[{i}]: '{name}' is a '{model_type}' model; the "
                    "talking-heads analysis needs a GPT-2-style model (model_type gpt2): rotary "
                    "models give no clean Q/K composition. Remove it from talking_heads.models"
                )
    task = block.get("laundry_list", {})
    if task.get("n_min", 3) > task.get("n_max", 20):
        problems.append(
            f"talking_heads.laundry_list.n_min ({task['n_min']}) must not exceed n_max "
            f"({task['n_max']})"
        )
    return problems

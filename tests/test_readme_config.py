"""The README's "Your own model or data" example works as the README shows it (issue 15, item 8).

The config is taken from the README's own text (its fenced yaml block), not copied here, so the
test follows the README. Its local placeholders (a checkpoint directory, a text file, a revision)
are filled with a tiny model and a file made in the test; the Hub model and dataset stay as
written (a dry run loads neither). Then real Snakemake dry-runs it, merged over config/config.yaml
as `snakemake --configfile my.yaml` from the repository does, and alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny_models import WORDS, save_tiny_model

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Your own model or data"
STUDIES = ("affine", "talking_heads", "embedding_space")


def readme_example() -> str:
    """The first ```yaml block of the README's section on using your own model or data."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md has no section '{SECTION}'"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert found, f"no ```yaml block in the README's section '{SECTION}'"
    return found.group(1)


def is_placeholder(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"<[^<>]+>", value) is not None


def fill_placeholders(config: dict, work: Path) -> dict:
    """The README's config with what only the reader has made real: every local model path that
    does not exist becomes a tiny Llama, every text file is written under ``work`` at the path
    given (relative paths resolve against the working directory), ``<...>`` revisions a commit."""
    checkpoint = None
    for spec in config["models"].values():
        if "path" in spec and not (Path(spec["path"]) / "config.json").exists():
            checkpoint = checkpoint or save_tiny_model("llama", work / "checkpoint")
            spec["path"] = str(checkpoint)
        if is_placeholder(spec.get("revision")):
            spec["revision"] = "0" * 40
    texts = [" ".join(WORDS[i : i + 25]) for i in range(0, len(WORDS) - 25, 3)]
    for spec in config["datasets"].values():
        if "file" not in spec:
            continue
        path = Path(spec["file"]["path"])
        target = work / path.relative_to(path.anchor) if path.is_absolute() else work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        field = spec["file"].get("text_field", "text")
        if target.suffix == ".jsonl":
            target.write_text("".join(json.dumps({field: t}) + "\n" for t in texts))
        else:
            target.write_text("\n".join(texts) + "\n")
        spec["file"]["path"] = str(path if not path.is_absolute() else target)
    leftover = [v for v in _values(config) if is_placeholder(v)]
    assert not leftover, f"placeholders this test does not know how to fill: {leftover}"
    return config


def _values(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _values(value)
    elif isinstance(node, list):
        for value in node:
            yield from _values(value)
    else:
        yield node


def dry_run(work: Path, configfile: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
        + ["--directory", str(work), "--configfile", str(configfile), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


@pytest.fixture
def example(tmp_path) -> tuple[dict, Path]:
    config = fill_placeholders(yaml.safe_load(readme_example()), tmp_path)
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def test_the_readme_example_names_a_local_model_and_a_run():
    """The example keeps showing what this test exercises: a local checkpoint with its twin, a
    Hub model, a local file of texts, and runs."""
    config = yaml.safe_load(readme_example())
    assert any("path" in spec for spec in config["models"].values())
    assert any(spec.get("init") == "random" for spec in config["models"].values())
    assert any("file" in spec for spec in config["datasets"].values())
    assert config["runs"]


def test_readme_example_dry_runs_merged_over_the_default(example, tmp_path):
    """As the README runs it (`snakemake --configfile my.yaml` in the repository): merged over
    config/config.yaml, whose studies name its own models. Those studies switch themselves off
    with one line each; nothing the example does not record is built or trained."""
    config, path = example
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    output = dry_run(tmp_path, path)
    for study in STUDIES:
        lines = [line for line in output.splitlines() if line.startswith(f"{study}: switched off")]
        assert len(lines) == 1, (study, output[-6000:])
    assert "invalid config" not in output
    for run in config["runs"]:
        for model in run["models"]:
            for dataset in run["datasets"]:
                assert f"results/activations/{model}/{dataset}.zarr" in output, (model, dataset)
    # The default's `train:` models are defined (merged in) but nothing uses them.
    assert "rule train_model:" not in output and "train_model_section" not in output
    for rule in ("affine_section", "talking_heads_section", "embedding_space_section"):
        assert rule not in output


def test_readme_example_dry_runs_alone(example, tmp_path):
    """From another directory, as the README says, only the example is used: no study is on,
    and no note is needed."""
    _, path = example
    output = dry_run(tmp_path, path)
    assert "switched off" not in output
    assert "results/report/index.html" in output

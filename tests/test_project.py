"""Project hygiene that a user relies on: environments in step, code formatted and lint-clean."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def requirement_name(spec: str) -> str:
    return re.split(r"[\[<>=!~ ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {requirement_name(r): r for r in project["dependencies"]}


def test_conda_envs_are_in_step_with_pyproject():
    """Every pip requirement in envs/*.yaml appears in pyproject.toml with the same specifier."""
    required = pyproject_requirements()
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        for spec in pip:
            if spec.startswith("-e"):
                continue
            name = requirement_name(spec)
            assert name in required, f"{env_file.name}: {name} is not in pyproject.toml"
            assert spec.replace(" ", "") == required[name].replace(" ", ""), (
                f"{env_file.name}: '{spec}' differs from pyproject.toml's '{required[name]}'"
            )


def test_torch_env_pins_the_same_torch_as_pyproject():
    env = (REPO / "envs" / "torch.yaml").read_text()
    assert pyproject_requirements()["torch"] in env


def test_python_code_is_lint_clean_and_formatted():
    paths = ["workflow", "tests", "benchmarks"]
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *paths], cwd=REPO, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout


def test_snakemake_files_are_snakefmt_formatted():
    files = ["Snakefile", *map(str, sorted((REPO / "workflow" / "rules").glob("*.smk")))]
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_opens_with_the_two_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 2
    run_default, run_tests = blocks[0], blocks[1]
    assert "snakemake --cores all" in run_default
    assert "pip install torch==2.13.0" in run_default
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest" in run_tests and "python -m pytest" in ci
    assert 'pip install -e ".[test]"' in run_tests and 'pip install --quiet -e ".[test]"' in ci

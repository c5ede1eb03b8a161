"""The config's schema (main file plus one fragment per module) and the vocabulary every stage
shares: the error type, the model and dataset sources, the recordings a config asks for."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
# The embedded default: the config the workflow runs with, and the one a --configfile is merged over.
EMBEDDED_CONFIG = SCHEMA_PATH.parents[2] / "config" / "config.yaml"
MODEL_SOURCES = ("hub", "path", "package", "train")
DATASET_SOURCES = ("builtin", "hf", "file", "variant_of", "task")


class ConfigError(ValueError):
    """The config is invalid; the message lists every problem with its key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"invalid config ({len(problems)} problem{'s' * (len(problems) != 1)}):\n{lines}\n"
            "See config/README.md for every key."
        )


MODULE_SCHEMAS = SCHEMA_PATH.parent / "modules"


def load_schema() -> dict:
    """The main schema with every module's fragment merged in.

    A module (a related study, the reductions) keeps its keys in
    ``workflow/schemas/modules/<module>.yaml``: top-level ``properties`` and optional ``$defs``,
    merged here so validation and config/README.md see one schema.
    """
    return copy.deepcopy(merged_schema())


def merged_schema() -> dict:
    """The merged schema, parsed once per version of its files (parsing the YAML is most of the
    cost of a validation). Shared: callers must not modify it."""
    files = [SCHEMA_PATH, *sorted(MODULE_SCHEMAS.glob("*.yaml"))]
    stamps = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _parse_schema(stamps)


@functools.lru_cache(maxsize=4)
def _parse_schema(stamps: tuple) -> dict:
    schema = yaml.safe_load(Path(stamps[0][0]).read_text())
    for fragment_path in (Path(stamp[0]) for stamp in stamps[1:]):
        try:
            fragment = yaml.safe_load(fragment_path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{fragment_path}: not valid YAML ({error})") from None
        for part in ("properties", "$defs"):
            for key, value in fragment.get(part, {}).items():
                if key in schema.setdefault(part, {}):
                    raise ValueError(
                        f"{fragment_path.name}: '{key}' is already defined in the schema"
                    )
                schema[part][key] = value
    return schema


def embedded_config() -> dict:
    """config/config.yaml as written (not validated: no defaults filled in)."""
    return yaml.safe_load(EMBEDDED_CONFIG.read_text()) or {}


def model_key(config: dict, section: str, model: str) -> str:
    """The config key that names ``model`` in a module's ``models`` list (``models.<name>`` when
    the module does not list it), for messages at run time."""
    models = config.get(section, {}).get("models", [])
    return f"{section}.models[{models.index(model)}]" if model in models else f"models.{model}"


def recordings(config: dict) -> list[tuple[str, str]]:
    """(model, dataset) pairs to record, in config order, without repeats."""
    pairs: list[tuple[str, str]] = []
    for run in config["runs"]:
        for model in run["models"]:
            for dataset in run["datasets"]:
                if (model, dataset) not in pairs:
                    pairs.append((model, dataset))
    return pairs


# Separates a recording's dataset name from a negative-control kind (dataset names may not hold it).
CONTROL_SEPARATOR = "--"


def control_recordings(config: dict) -> list[tuple[str, str]]:
    """The negative-control recordings (model, dataset--kind) that ``verdicts`` asks for: each of
    ``verdicts.controls`` for every recording (``control_of: all``) or for the recordings of
    trained models on texts that are not token-shuffled (``trained``)."""
    settings = config.get("verdicts", {})
    only = settings.get("datasets") or None
    out = []
    for model, dataset in recordings(config):
        if only is not None and dataset not in only:
            continue
        if settings.get("control_of", "trained") == "trained" and (
            config["models"][model].get("init") == "random"
            or config["datasets"][dataset].get("shuffle_tokens")
        ):
            continue
        for kind in dict.fromkeys(settings.get("controls", [])):  # a kind listed twice: once
            out.append((model, f"{dataset}{CONTROL_SEPARATOR}{kind}"))
    return out


def split_control(dataset: str) -> tuple[str, str | None]:
    """(recorded dataset, control kind) of a dataset name; kind None for a recording's own."""
    base, _, kind = dataset.partition(CONTROL_SEPARATOR)
    return base, kind or None


# Top-level sections that hold names rather than settings; every other section is a module's.
NAMED_SECTIONS = ("models", "datasets", "runs")


def enabled_modules(config: dict) -> dict[str, dict]:
    """The switched-on modules that name models: ``{section: settings}`` for every section with
    ``enabled: true`` and a ``models`` list (the related studies)."""
    return {
        name: section
        for name, section in config.items()
        if name not in NAMED_SECTIONS
        and isinstance(section, dict)
        and section.get("enabled") is True
        and isinstance(section.get("models"), list)
    }


def models_in_use(config: dict) -> list[str]:
    """Models that some run records or some switched-on module lists, in the order of `models`:
    the workflow builds (trains) only these, whatever else `models` defines."""
    used = {model for run in config["runs"] for model in run["models"]}
    for section in enabled_modules(config).values():
        used.update(section["models"])
    return [name for name in config["models"] if name in used]


# Widest model trained on one intra-op thread (inputs.training sets torch's threads with this, and
# the train_model rule asks for no more than it will use).
SINGLE_THREAD_MAX_D = 256


def training_threads(d_model: int, threads: int) -> int:
    """Torch's intra-op threads for training a model of width ``d_model``: one for small models,
    else ``threads``. The matrices of a d_model <= 256 model are too small to split: on 2 cores a
    step of the affine model (d_model 128, batch 64) took 0.19 s on one thread and 1.2 s on two
    while one other process ran (OpenMP threads wait on each other and on the other jobs). On an
    idle machine two threads do help a longer step (pydoc_llama, 32 passages: 1.73 s on one, 1.09 s
    on two), but the default run keeps both cores busy with two jobs, so one thread each it is."""
    return 1 if d_model <= SINGLE_THREAD_MAX_D else max(1, threads)

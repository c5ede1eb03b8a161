# Helpers shared by the rules: the validated config and input functions. No rules here.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from snakemake.logging import logger

from residual_dynamics.config.schema import (
    ConfigError,
    embedded_config,
    model_key,
    models_in_use,
    recordings,
)
from residual_dynamics.config.validate import validate_config

try:
    # Every key checked, every default filled, before any job starts. A related study still
    # listing config/config.yaml's models follows the runs (one line says how).
    config = validate_config(
        config, base_dir=Path.cwd(), embedded=embedded_config(), note=logger.warning
    )
except ConfigError as error:
    raise WorkflowError(str(error)) from None

RECORDINGS = recordings(config)
# Models some run records or some switched-on module lists: only these are built.
MODELS_IN_USE = models_in_use(config)
RESULTS = "results"
# Report sections that modules add: each module's rules file appends the path of the JSON manifest
# (report.write_section_manifest) its section rule writes, when the module is switched on.
REPORT_SECTIONS = []


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9_-]*",
    dataset="[A-Za-z0-9][A-Za-z0-9_-]*",
    shard="[0-9]+",


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def trained_model_dir(model):
    """Where train_model saves a `train:` model: the one place the workflow names it."""
    return f"{RESULTS}/models/{model}"


def model_files(wildcards):
    """A `train:` model's saved directory (its config.json marks it complete); [] otherwise."""
    if "train" in config["models"][wildcards.model]:
        return [f"{trained_model_dir(wildcards.model)}/config.json"]
    return []


def model_spec(wildcards):
    """The model's config entry; a `train:` model's also names the directory its rule's input
    (model_files) is in, as `trained_dir`, so the library never rebuilds results paths.
    """
    spec = config["models"][wildcards.model]
    if "train" in spec:
        return {**spec, "trained_dir": trained_model_dir(wildcards.model)}
    return spec


def training_data(wildcards):
    """The prepared dataset a `train:` model learns from."""
    data = config["models"][wildcards.model]["train"]["data"]
    return f"{RESULTS}/data/{data}.parquet"


def training_data_spec(wildcards):
    return config["datasets"][config["models"][wildcards.model]["train"]["data"]]


def parent_dataset(wildcards):
    """A variant's texts come from its parent's prepared file."""
    parent = config["datasets"][wildcards.dataset].get("variant_of")
    return [f"{RESULTS}/data/{parent}.parquet"] if parent else []


def shard_stores(wildcards):
    n = config["extraction"]["n_shards"]
    return [
        f"{RESULTS}/activations/{wildcards.model}/{wildcards.dataset}.shards/{i}.zarr"
        for i in range(n)
    ]


def per_recording(pattern):
    return [pattern.format(model=m, dataset=d) for m, d in RECORDINGS]


def if_enabled(section, path):
    """The one way a module is switched on: its outputs are asked for (a list of ``path``) only
    when its config section says ``enabled: true``. Its rules are always defined."""
    return [path] if section["enabled"] else []

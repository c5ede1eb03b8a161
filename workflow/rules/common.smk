# Helpers shared by the rules: the validated config and input functions. No rules here.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from snakemake.logging import logger

from residual_dynamics.config.schema import (
    ConfigError,
    control_recordings,
    split_control,
    embedded_config,
    model_key,
    models_in_use,
    recordings,
    training_threads,
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
# Negative-control recordings (model, dataset--kind) made from the stores (config verdicts), which
# the statistics, MI, rotation and PCA rules analyse as they do recordings.
CONTROL_RECORDINGS = control_recordings(config)
# A recorded dataset's name: no '--' (that marks a control recording).
RECORDED_DATASET = "[A-Za-z0-9](-?[A-Za-z0-9_])*-?"
# Models some run records or some switched-on module lists: only these are built.
MODELS_IN_USE = models_in_use(config)
RESULTS = "results"


# Threads of a multi-threaded job: half the cores (at most 8), so that at least two jobs run side by
# side. On 2 cores these jobs use about one core each (CPU time / wall time 0.6-1.15 with 2 threads,
# measured on the default run), so two of them at once, one thread each, use the machine. A SLURM
# profile's set-threads overrides this per rule; without --cores (a cluster executor, --report)
# it is 1.
def _job_threads() -> int:
    try:
        cores = workflow.cores
    except WorkflowError:  # no total number of cores: each job's own allocation decides
        cores = 2
    return min(8, max(1, (cores or 2) // 2))


JOB_THREADS = _job_threads()
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


def per_recording(pattern, pairs=None):
    return [
        pattern.format(model=m, dataset=d)
        for m, d in (RECORDINGS if pairs is None else pairs)
    ]


def model_analysis(section, path):
    """An input function: ``path`` for a recording when ``section`` is on; nothing for a control
    recording (CAE and perturbations need the model's own store)."""

    def inputs(wildcards):
        if not section["enabled"] or split_control(wildcards.dataset)[1]:
            return []
        return [path.format(model=wildcards.model, dataset=wildcards.dataset)]

    return inputs


def if_enabled(section, path):
    """The one way a module is switched on: its outputs are asked for (a list of ``path``) only
    when its config section says ``enabled: true``. Its rules are always defined."""
    return [path] if section["enabled"] else []


def pairs_of(pattern, pairs):
    """``pattern`` for each (model, dataset) of ``pairs``."""
    return [pattern.format(model=m, dataset=d) for m, d in pairs]


# Input functions of the rules beyond the paper (workflow/rules/beyond.smk).
def beyond_twin(wildcards):
    """The untrained twin drawn beside a recording (beyond/config.py twin_of), or None."""
    from residual_dynamics.beyond.config import twin_of

    return twin_of(config, wildcards.model, wildcards.dataset)


def beyond_result(pattern, planned=None, twin=False):
    """An input function: ``pattern`` for the recording, or for its untrained twin; nothing where
    there is no twin or the recording is not among ``planned`` (its analysis does not run).
    """

    def inputs(wildcards):
        model = beyond_twin(wildcards) if twin else wildcards.model
        if model is None or (
            planned is not None and (model, wildcards.dataset) not in planned
        ):
            return []
        return [pattern.format(model=model, dataset=wildcards.dataset)]

    return inputs


# The panels each recording gets, in the report's order; the CAE's (3B-3D) and the teleports'
# (4D, 4E) when those analyses are on.
PANELS = [
    *("fig1b", "fig1c", "fig1d", "fig1e", "fig1f", "fig1g", "fig1h"),
    *("fig2a", "fig2b", "fig2c"),
    *(("fig3b", "fig3c", "fig3d") if config["cae"]["enabled"] else ()),
    *("fig4a", "fig4b", "fig4c"),
    *(("fig4d", "fig4e") if config["perturbation"]["enabled"] else ()),
]


def panel_file(panel):
    """One panel's PNG, in the Snakemake report under its figure with its caption."""
    return report(
        f"{RESULTS}/figures/{{model}}/{{dataset}}/{panel}.png",
        caption=f"../report/{panel}.rst",
        category=f"Figure {panel[3]}",
        subcategory="{model} · {dataset}",
        labels={"model": "{model}", "dataset": "{dataset}", "panel": panel[3:].upper()},
    )

"""The workflow on SLURM: a real single-machine SLURM runs the tiny config through the cluster
profile (every job through sbatch) and must give what a local run gives; Dask worker jobs
through dask-jobqueue; and the paper's config dry-run lists its jobs with their resources.

The cluster (tests/slurm_cluster.py) needs Debian's slurm-wlm and munge and root. Without them
the SLURM tests are skipped with the reason, except where RD_REQUIRE_SLURM=1 (.ci/run sets it):
there a missing SLURM is a failure, so CI cannot pass by skipping.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from slurm_cluster import require_slurm, start_cluster
from test_workflow import write_texts

from residual_dynamics.io.store import open_store
from tiny_models import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
# The tiny recording taken through the statistics: 9 jobs (2 extraction shards) instead of the
# whole report's ~40, so the SLURM run stays near two minutes.
MODEL, DATASET = "tiny_llama", "texts"
TARGETS = [f"results/summaries/{MODEL}/{DATASET}/summary.json"]
RULES = {
    "prepare_dataset": 1,
    "extract_activations": 2,
    "merge_shards": 1,
    "transition_statistics": 1,
    "mutual_information": 1,
    "rotations": 1,
    "pca": 1,
    "summary": 1,
}


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    require_slurm()
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """One tiny Llama on 24 texts, extraction in 2 chunk-aligned shards (so merge links them)."""
    shared = tmp_path_factory.mktemp("inputs")
    model = save_tiny_model("llama", shared / "tiny_llama", n_layers=2)
    texts = write_texts(shared / "texts.txt", 24)
    config = {
        "models": {MODEL: {"path": str(model)}},
        "datasets": {DATASET: {"file": {"path": str(texts)}, "min_chars": 10, "max_chars": 200}},
        "runs": [{"models": [MODEL], "datasets": [DATASET]}],
        "extraction": {"n_shards": 2, "chunk_mib": 0.0005, "batch_size": 8},
        "rotations": {"n_permutations": 20, "n_surrogates": 10},
        "mutual_information": {"grid": 16, "ksg_units": 2},
        # The summary job also writes the reduction summary: PCA only, no CAE or teleports.
        "cae": {"enabled": False},
        "perturbation": {"enabled": False},
    }
    path = shared / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def local_run(tiny_config, tmp_path_factory):
    work = tmp_path_factory.mktemp("local")
    # --cores 4: two threads per job (rules/common.smk's JOB_THREADS), as the local reference had
    # before JOB_THREADS; with one thread the rotation percentiles of one near-tied unit can differ
    # from the SLURM jobs' (a rank flips on float rounding).
    snakemake(work, "--configfile", str(tiny_config), "--cores", "4", *TARGETS)
    return work


@pytest.fixture(scope="module")
def slurm_run(slurm, tiny_config, tmp_path_factory):
    work = tmp_path_factory.mktemp("onslurm")
    result = snakemake(
        work,
        "--configfile",
        str(tiny_config),
        "--profile",
        str(PROFILE),
        # The test cluster's own settings, given the way a user gives theirs: no accounts and
        # no accounting (job states from squeue), a fast first status check.
        "--slurm-no-account",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-keep-successful-logs",
        "--latency-wait",
        "5",
        *TARGETS,
        env=slurm.env,
    )
    return work, result


@pytest.mark.slow
def test_tiny_config_runs_through_sbatch(slurm, slurm_run):
    """Every job of the DAG was a SLURM job that completed, with the profile's resources."""
    work, result = slurm_run
    jobs = slurm.jobs()
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        match = re.match(r"rule_([A-Za-z0-9_]+?)(_wildcards_|$)", job.get("Comment", ""))
        assert match, job
        by_rule.setdefault(match.group(1), []).append(job)
    assert {rule: len(js) for rule, js in by_rule.items()} == RULES, result.stderr[-3000:]
    assert all(job["JobState"] == "COMPLETED" for job in jobs), jobs
    assert all(job["Partition"] == slurm.partition for job in jobs)
    # The profile's requests reached SLURM: a GPU, 8 CPUs and 64 GB for each extraction shard,
    # 16 CPUs for the Dask statistics, and the default time limits.
    for job in by_rule["extract_activations"]:
        assert "gpu:1" in job.get("TresPerJob", "") + job.get("TresPerNode", ""), job
        assert job["NumCPUs"] == "8" and megabytes(job["MinMemoryNode"]) == 64000, job
        assert job["TimeLimit"] == "04:00:00", job
    (stats_job,) = by_rule["transition_statistics"]
    assert stats_job["NumCPUs"] == "16" and stats_job["TimeLimit"] == "02:00:00"
    assert "gpu" not in stats_job.get("TresPerJob", "") + stats_job.get("TresPerNode", "")
    # Snakemake's own record: one SLURM log per job under .snakemake/slurm_logs.
    logs = list((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(logs) == sum(RULES.values())


@pytest.mark.slow
def test_slurm_outputs_equal_a_local_run(slurm_run, local_run):
    work, _ = slurm_run
    on_slurm = open_store(work / "results" / "activations" / MODEL / f"{DATASET}.zarr")
    local = open_store(local_run / "results" / "activations" / MODEL / f"{DATASET}.zarr")
    assert on_slurm.attrs["n_shards"] == 2
    for name in ("resid", "text_id", "text_index", "token_position", "n_tokens", "token_id"):
        np.testing.assert_array_equal(on_slurm[name][:], local[name][:], err_msg=name)
    summary = f"results/summaries/{MODEL}/{DATASET}/summary.json"
    assert_same_numbers(
        json.loads((work / summary).read_text()), json.loads((local_run / summary).read_text())
    )


def megabytes(size: str) -> float:
    """scontrol's memory sizes ('62.50G', '64000M') in MB (SLURM's M is 2**20 bytes)."""
    return float(size[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[size[-1]]


def assert_same_numbers(a, b, path: str = "summary") -> None:
    """Equal structure and strings; numbers equal to float rounding (thread counts differ: the
    profile's 8 and 16 threads against the local run's 2)."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_numbers(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_dask_workers_as_slurm_jobs_give_the_local_statistics(slurm, local_run, monkeypatch):
    """dask.cluster: slurm -- the analysis job becomes a scheduler and its workers are SLURM jobs
    (dask-jobqueue); the statistics equal those computed by the local cluster."""
    from residual_dynamics.analysis.cluster import dask_client
    from residual_dynamics.analysis.transitions import transition_statistics

    store = local_run / "results" / "activations" / MODEL / f"{DATASET}.zarr"
    for key, value in slurm.env.items():
        monkeypatch.setenv(key, value)
    settings = {
        "cluster": "slurm",
        "connect_timeout": 120,
        "slurm": {
            "jobs": 2,
            "cores": 1,
            "memory": "2GiB",
            "walltime": "00:10:00",
            "log_directory": str(slurm.root / "dask-logs"),
        },
    }
    before = {job["JobId"] for job in slurm.jobs()}
    with dask_client(settings) as client:
        remote = transition_statistics(store, block_rows=4, tile_mib=0.001)
        workers = client.scheduler_info()["workers"]
    worker_jobs = [job for job in slurm.jobs() if job["JobId"] not in before]
    assert len(worker_jobs) == 2 and all(job["JobName"] == "dask-worker" for job in worker_jobs)
    assert workers, "no Dask worker joined"
    with dask_client(threads=1, memory_limit="1GiB"):
        local = transition_statistics(store, block_rows=4, tile_mib=0.001)
    for name in ("r", "r_pairs", "cosine", "velocity"):
        np.testing.assert_allclose(remote[name].values, local[name].values, rtol=1e-12, atol=0)


def test_paper_config_dry_run_lists_the_jobs_and_their_resources(tmp_path):
    """config/paper.yaml through the slurm profile: validated without the network, every stage
    of the paper listed, with the GPU and memory requests of the profile."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    result = subprocess.run(
        [
            *SNAKEMAKE,
            "--dry-run",
            "--directory",
            str(tmp_path),
            "--configfile",
            str(REPO / "config" / "paper.yaml"),
            "--profile",
            str(PROFILE),
            "--slurm-no-account",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    # 2 models x 2 WikiText-2 recordings + Llama's untrained twin on WikiText-2 + Llama on
    # WikiText-103, each in 4 extraction shards; the two trained models' WikiText-2 recordings
    # each get a matched random walk (verdicts.datasets), analysed like a recording.
    recordings, shards, walks = 6, 4, 2
    assert int(counts["extract_activations"]) == recordings * shards
    assert int(counts["prepare_dataset"]) == 3
    assert int(counts["merge_shards"]) == recordings
    assert int(counts["control_store"]) == walks
    for rule in ("transition_statistics", "mutual_information", "rotations", "pca"):
        assert int(counts[rule]) == recordings + walks, rule
    assert int(counts["summary"]) == recordings + walks
    for rule in ("figures", "train_cae", "perturb"):
        assert int(counts.get(rule, 0)) == recordings, rule
    assert int(counts["claims"]) == 1
    assert int(counts["report"]) == 1
    resources = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\nrule )|\nrule ", out):
        name = re.match(r"(?:\[[^\]]+\]\n)?(?:rule )?(\w+):", block)
        found = re.search(r"resources: (.*)", block)
        if name and found:
            resources.setdefault(name.group(1), found.group(1))
    for gpu_rule in ("extract_activations", "train_cae", "perturb"):
        assert "gpu=1" in resources[gpu_rule], (gpu_rule, resources[gpu_rule])
    assert "mem_mb=64000" in resources["extract_activations"]
    assert "runtime=240" in resources["extract_activations"]
    for cpu_rule in ("transition_statistics", "mutual_information", "pca"):
        assert "gpu" not in resources[cpu_rule], (cpu_rule, resources[cpu_rule])
    assert "mem_mb=64000" in resources["transition_statistics"]
    # The extraction jobs name the paper's models and datasets.
    for model, dataset in (("llama31_8b", "wikitext2"), ("gemma2_9b", "wikitext2_shuffled")):
        assert f"results/activations/{model}/{dataset}.shards/3.zarr" in out


def test_profile_sets_resources_only_for_rules_that_exist():
    """A rule renamed or removed must not leave a silent stale entry in the profile."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), flags=re.M))
    for section in ("set-resources", "set-threads"):
        stale = set(profile[section]) - rules
        assert not stale, f"{section} names rules that do not exist: {sorted(stale)}"
    assert profile["executor"] == "slurm"
    for rule, resources in profile["set-resources"].items():
        assert {"mem_mb", "runtime"} <= set(resources), rule


def test_the_workflow_profile_does_not_override_the_cluster_profile():
    """Snakemake applies profiles/default (found next to the Snakefile) over a --profile: a key
    both set must agree, or the cluster profile's value is silently lost (default-resources is
    where a site puts slurm_account and slurm_partition)."""
    default = yaml.safe_load(
        (REPO / "workflow" / "profiles" / "default" / "config.yaml").read_text()
    )
    cluster = yaml.safe_load((PROFILE / "config.yaml").read_text())
    clashes = {
        key: {"profiles/default": default[key], "slurm": cluster[key]}
        for key in default.keys() & cluster.keys()
        if default[key] != cluster[key]
    }
    assert not clashes, (
        f"profiles/default overrides workflow/profiles/slurm on {sorted(clashes)}: {clashes}; "
        "keep those keys out of profiles/default (each rule sets its own mem_mb)"
    )

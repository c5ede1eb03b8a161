"""kill -9 at random moments of extraction, statistics and CAE training, then rerun: the workflow
resumes and its results equal an uninterrupted run's, bit for bit. A second run on the same results
folder while one is running is refused by Snakemake's lock.

The whole process group is killed (Snakemake and its jobs, Dask workers included), as a scheduler or
an OOM killer would. After a kill -9 of Snakemake itself its lock stays behind: ``snakemake --unlock``
is what a user runs (the README says so), then the same command again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from test_workflow import MODULES_OFF, SNAKEMAKE, TWO_JOBS, snakemake, write_texts

from tiny_models import save_tiny_model

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("RD_KILL_SEED", random.SystemRandom().randrange(10_000)))


def tiny_config(model: Path, texts: Path) -> dict:
    return {
        "models": {"tiny": {"path": str(model)}},
        "datasets": {"texts": {"file": {"path": str(texts)}, "min_chars": 10, "max_chars": 200}},
        "runs": [{"models": ["tiny"], "datasets": ["texts"]}],
        # Small batches and chunks: extraction takes long enough to be caught mid-write.
        "extraction": {"n_shards": 2, "chunk_mib": 0.0005, "batch_size": 2},
        "figures": {"dpi": 50, "formats": ["png"]},
        "rotations": {"n_permutations": 20, "n_surrogates": 10},
        "mutual_information": {"grid": 24, "ksg_units": 2},
        **MODULES_OFF,
        "pca": {"n_components": 8, "per_sublayer": False},
        # Enough epochs that a kill lands mid-training; patience so that all of them run.
        "cae": {"max_epochs": 80, "batch_size": 16, "patience": 200},
        "perturbation": {"enabled": False},
        # No negative-control recording (fewer jobs to kill); the bootstrap still runs, and must
        # resume to the same numbers.
        "verdicts": {"controls": [], "bootstrap": 50, "mi_bootstrap": 5, "mi_units": 4},
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    shared = tmp_path_factory.mktemp("inputs")
    model = save_tiny_model("llama", shared / "tiny_llama", n_layers=3)
    texts = write_texts(shared / "texts.txt", 120)
    config = shared / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(model, texts)))
    return config


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted")
    snakemake(work, "--configfile", str(inputs), *TWO_JOBS)
    return work


def _numbers(work: Path) -> dict[str, object]:
    """Every array of every Zarr store and every JSON summary under results/, by relative path."""
    results = work / "results"
    out = {}
    for store in sorted(results.rglob("*.zarr")):
        if ".zarr" in str(store.relative_to(results).parent):
            continue  # a group inside a store
        group = zarr.open_group(str(store), mode="r")
        for name, array in group.arrays():
            out[f"{store.relative_to(results)}/{name}"] = array[...]
    for path in sorted(results.glob("summaries/**/*.json")):
        out[str(path.relative_to(results))] = json.loads(path.read_text())
    return out


def _found(results: Path, pattern: str) -> bool:
    """Whether anything matches; a directory renamed away while the glob walks it (a store moved
    into place) counts as not found yet."""
    try:
        return any(results.glob(pattern))
    except FileNotFoundError:
        return False


def _triggers(work: Path) -> list[tuple[str, object]]:
    results = work / "results"
    return [
        # A shard store being written (only ever under its .partial name until complete).
        ("extraction", lambda: _found(results, "activations/**/*.partial")),
        # The Dask statistics job has started (its log is opened first thing).
        ("statistics", lambda: _found(results, "logs/transition_statistics/**/*.log")),
        # At least one CAE epoch is checkpointed.
        ("CAE training", lambda: _found(results, "reduction/**/cae_checkpoint.pt")),
    ]


def _start(work: Path, config: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen(
        [*SNAKEMAKE, "--directory", str(work), "--configfile", str(config), *TWO_JOBS],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: kill -9 reaches every job it started
    )


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 600) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.01)
    return False


def _leftover_processes(work: Path) -> list[str]:
    """Processes still running with this results folder on their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(work) in cmdline:
            found.append(cmdline[:200])
    return found


def test_kill_9_at_random_moments_then_rerun_equals_an_uninterrupted_run(
    inputs, reference, tmp_path
):
    rng = random.Random(SEED)
    work = tmp_path / "killed"
    work.mkdir()
    log = [f"RD_KILL_SEED={SEED}"]
    lock_refusal = None
    for stage, reached in _triggers(work):
        proc = _start(work, inputs)
        try:
            assert _wait_for(reached, proc), (
                f"{stage} never started",
                proc.communicate()[0][-3000:],
                log,
            )
            if lock_refusal is None:
                # A second run on the same folder while this one runs: refused by the lock.
                lock_refusal = snakemake(
                    work, "--configfile", str(inputs), "--cores", "1", check=False
                )
            time.sleep(rng.uniform(0, 1.5))
            running = proc.poll() is None
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        locks = work / ".snakemake" / "locks"
        stale = locks.exists() and any(locks.iterdir())
        log.append(f"killed during {stage} (snakemake running: {running}, lock left: {stale})")
        deadline = time.monotonic() + 10
        while _leftover_processes(work) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _leftover_processes(work), (_leftover_processes(work), log)
        # No store under its final name is ever incomplete: every one opens and is consolidated.
        for store in (work / "results").glob("activations/**/*.zarr"):
            assert (store / "zarr.json").exists(), (store, log)
        if stale:
            # Snakemake's lock survives a kill -9: the next run is refused until --unlock. (A
            # kill that lands after the last job, while Snakemake exits, finds it released.)
            refused = snakemake(work, "--configfile", str(inputs), "--cores", "1", check=False)
            assert refused.returncode != 0, log
            assert "--unlock" in refused.stdout + refused.stderr, (refused.stderr[-2000:], log)
            snakemake(work, "--configfile", str(inputs), "--unlock")

    assert any("lock left: True" in entry for entry in log), log  # the kill -9 case was tried
    assert lock_refusal.returncode != 0
    assert "cannot be locked" in lock_refusal.stdout + lock_refusal.stderr
    snakemake(work, "--configfile", str(inputs), *TWO_JOBS)
    assert not list((work / "results").rglob("*.partial")), log
    got, want = _numbers(work), _numbers(reference)
    assert sorted(got) == sorted(want), log
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[key], value, err_msg=f"{key} ({log})")
        else:
            assert got[key] == value, (key, log)
    # The page is there too, with every panel (figures are redrawn, so compare by presence).
    page = (work / "results" / "report" / "index.html").read_text()
    assert page.count("<figure id='tiny--texts--") == 16  # Figures 1B-4C (teleports are off)

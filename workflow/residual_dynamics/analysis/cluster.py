"""Where Dask analyses compute: a LocalCluster in the job, a running scheduler, or SLURM workers.

The choice is the config's ``dask`` section (workflow/schemas/modules/cluster.yaml):

- ``local`` (default): one worker inside the job, with the rule's threads and a memory limit. With
  ``dask.worker_process`` (``auto``: for stores over 256 MiB) the worker is a process of its own whose
  nanny enforces the limit; otherwise it runs as threads of the job's process, which saves the
  ~3.5 s a worker process costs to start and import into (a third of a small store's job), and
  has no memory limit of its own (it could not tell its memory from the job's): the job's bound
  holds. On a SLURM cluster that is the job's own allocation.
- ``address``: an existing scheduler (``dask.address``, or the older
  ``statistics.scheduler_address``), e.g. one a site runs for many users.
- ``slurm``: dask-jobqueue's SLURMCluster; the job becomes the scheduler and submits
  ``dask.slurm.jobs`` worker jobs with sbatch, for an analysis larger than one node. Workers read
  the stores by path, so they need the same shared filesystem (as Snakemake on SLURM does too).

Library code takes plain values; the rule scripts translate from ``snakemake.params``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator

from residual_dynamics.config.schema import ConfigError

log = logging.getLogger(__name__)

CLUSTERS = ("local", "address", "slurm")
DEFAULTS = {
    "cluster": "local",
    "address": None,
    "connect_timeout": 600,
    "worker_process": "auto",
    "slurm": {},
}
# dask.worker_process 'auto': a worker process (its nanny enforcing the memory limit) for stores
# larger than this; below it the analysis fits any job's memory, takes seconds, and the ~3.5 s a
# worker process costs to start would be a third of it. The default run's stores are 5-16 MB, the
# paper's (1000 texts x 64 sublayers x 4096 units) 1 GiB.
AUTO_PROCESS_BYTES = 256 << 20


def store_nbytes(store) -> int | None:
    """Uncompressed bytes of a store's ``resid`` array (from its metadata), None if unreadable."""
    import zarr

    try:
        resid = zarr.open_group(str(store), mode="r")["resid"]
        return int(resid.nbytes)
    except Exception:  # noqa: BLE001 - the analysis itself reports a bad store, with its fix
        return None


def worker_process(setting, store=None) -> bool:
    """Whether a local cluster's worker runs in a process of its own (``dask.worker_process``)."""
    if setting != "auto":
        return bool(setting)
    size = None if store is None else store_nbytes(store)
    return size is None or size > AUTO_PROCESS_BYTES


def resolve(settings: dict | None, address: str | None = None) -> dict:
    """The ``dask`` settings with ``statistics.scheduler_address`` folded in: a non-null address
    there means cluster 'address' (it predates the ``dask`` section and keeps working)."""
    out = {**DEFAULTS, **(settings or {})}
    if address:
        if out["cluster"] == "slurm" or (out["address"] and out["address"] != address):
            raise ConfigError(
                [
                    "statistics.scheduler_address and dask: both say where Dask runs "
                    f"(scheduler_address {address!r}, dask.cluster {out['cluster']!r}, "
                    f"dask.address {out['address']!r}); keep one (dask.cluster: address with "
                    "dask.address is the current form)"
                ]
            )
        out["cluster"], out["address"] = "address", address
    return out


def check_config(config: dict) -> list[str]:
    """Problems a schema cannot express, each naming its key (for validate_config)."""
    settings = config.get("dask", {})
    scheduler = config.get("statistics", {}).get("scheduler_address")
    try:
        settings = resolve(settings, scheduler)
    except ConfigError as error:
        return list(error.problems)
    problems = []
    if settings["cluster"] == "address" and not settings["address"]:
        problems.append(
            "dask.address: dask.cluster is 'address' but no address is given; set dask.address "
            "(e.g. tcp://host:8786) or use dask.cluster: local"
        )
    if settings["cluster"] == "slurm" and importlib.util.find_spec("dask_jobqueue") is None:
        problems.append(
            "dask.cluster: 'slurm' needs dask-jobqueue (pip install dask-jobqueue), or use "
            "dask.cluster: local"
        )
    return problems


def job_client(threads: int, statistics: dict, dask: dict, store=None):
    """The Dask client of one analysis job: the config's ``dask`` section chooses the cluster,
    its ``statistics`` section the scheduler address and the local worker's memory limit, the
    rule's ``threads`` the local worker's size, and the ``store`` it reads whether that worker
    needs a process of its own (``dask.worker_process: auto``)."""
    return dask_client(
        dask,
        threads=threads,
        memory_limit=statistics["memory_limit"],
        address=statistics["scheduler_address"],
        store=store,
    )


def slurm_cluster_kwargs(slurm: dict) -> dict:
    """SLURMCluster arguments from ``dask.slurm`` (defaults from the schema filled in)."""
    kwargs = {
        "cores": slurm.get("cores", 8),
        "memory": slurm.get("memory", "32GiB"),
        "processes": slurm.get("processes", 1),
        "walltime": slurm.get("walltime", "02:00:00"),
        "queue": slurm.get("queue"),
        "account": slurm.get("account"),
        "job_extra_directives": list(slurm.get("job_extra_directives", [])),
        "local_directory": slurm.get("local_directory"),
        "interface": slurm.get("interface"),
        "log_directory": slurm.get("log_directory"),
        # A free port: several analysis jobs may be schedulers on one node.
        "scheduler_options": {"dashboard_address": ":0"},
    }
    return {k: v for k, v in kwargs.items() if v is not None}


@contextlib.contextmanager
def dask_client(
    settings: dict | None = None,
    *,
    threads: int = 1,
    memory_limit: str = "auto",
    address: str | None = None,
    store=None,
) -> Iterator[object]:
    """A Dask distributed client for ``settings`` (the config's ``dask`` section); closed, and
    any cluster it started shut down, on exit. ``threads`` and ``memory_limit`` size the local
    worker; ``address`` is ``statistics.scheduler_address``; ``store``, the store the job reads,
    decides ``worker_process: auto``."""
    from dask.distributed import Client, LocalCluster

    settings = resolve(settings, address)
    kind = settings["cluster"]
    timeout = settings["connect_timeout"]
    if kind == "address":
        log.info("dask: connecting to the scheduler at %s", settings["address"])
        with Client(settings["address"], timeout=timeout) as client:
            yield client
        return
    if kind == "slurm":
        from dask_jobqueue import SLURMCluster

        slurm = settings["slurm"]
        with SLURMCluster(**slurm_cluster_kwargs(slurm)) as cluster:
            jobs = slurm.get("jobs", 4)
            cluster.scale(jobs=jobs)
            log.info("dask: %d SLURM worker job(s) submitted:\n%s", jobs, cluster.job_script())
            with Client(cluster) as client:
                # Work starts with the first worker; later ones join as SLURM starts them.
                client.wait_for_workers(1, timeout=timeout)
                yield client
        return
    if kind != "local":
        raise ConfigError([f"dask.cluster: {kind!r} is not one of {', '.join(CLUSTERS)}"])
    processes = worker_process(settings["worker_process"], store)
    if not processes:
        # A worker in the job's process measures the whole process's memory (the job's arrays,
        # torch, the client's results) against its limit, and at 80 % pauses until that falls,
        # which memory the worker does not own never does: the job would wait for ever. Its
        # bound is the job's own (Snakemake's resources, SLURM's --mem); only a worker process
        # has a nanny to enforce statistics.memory_limit.
        memory_limit = 0
    log.info(
        "dask: a local worker with %d thread(s), %s",
        max(1, threads),
        "in its own process" if processes else "in this job's process (no worker memory limit)",
    )
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=max(1, threads),
            processes=processes,
            memory_limit=memory_limit,
            dashboard_address=":0",  # a free port: parallel jobs must not clash on 8787
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client

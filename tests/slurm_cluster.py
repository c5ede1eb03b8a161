"""A real SLURM on this one machine, for tests: munged, slurmctld and slurmd as child processes.

Everything lives in one directory (slurm.conf, gres.conf, the munge key and socket, state, spool,
logs), so nothing under /etc or /run is touched and a system SLURM, if any, is left alone. Clients
find the cluster through ``SLURM_CONF`` in :attr:`SlurmCluster.env`; Snakemake's slurm executor
passes that environment on to the jobs (``sbatch --export=ALL``), so ``srun`` inside them finds it
too.

The node is declared larger than the machine (``SlurmdParameters=config_overrides``): the cluster
profile asks for the CPUs, memory and GPUs of a real GPU node, and the test is about submission
and the workflow's outputs, not about placement. The GPUs are counted GRES with no device file:
SLURM grants ``--gpus`` requests, and the jobs, seeing no CUDA device, run on the CPU.

Debian's ``slurm-wlm`` and ``munge`` provide the binaries (``.ci/run`` installs them). The daemons
must run as root (slurmd starts job steps as the submitting user).

    python tests/slurm_cluster.py DIR     # start a cluster in DIR and keep it up until Ctrl-C
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "srun", "scancel")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_binary(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    for folder in SBIN:  # daemons live in sbin, which is not on every user's PATH
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


def unavailable_reason() -> str | None:
    """Why a single-machine SLURM cannot be started here, or None when it can."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if find_binary(name) is None]
    if missing:
        return (
            f"SLURM/munge binaries not installed ({', '.join(missing)}): "
            "apt-get install slurm-wlm munge (as .ci/run does)"
        )
    if os.geteuid() != 0:
        return "the SLURM daemons must run as root (slurmd launches jobs as their user)"
    return None


def require_slurm() -> None:
    """Skip the calling test when SLURM is missing, or fail it under RD_REQUIRE_SLURM=1 (CI), so
    that CI cannot pass the SLURM tests by skipping them."""
    import pytest

    reason = unavailable_reason()
    if reason:
        if os.environ.get("RD_REQUIRE_SLURM") == "1":
            pytest.fail(f"RD_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    partition: str
    node: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(
            list(command), env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (finished ones for MinJobAge = 600 s), as
        ``scontrol show job`` key=value records."""
        out = self.run("scontrol", "show", "job", "--oneliner", check=False).stdout
        records = []
        for line in out.splitlines():
            if "JobId=" not in line:
                continue
            record = {}
            for token in line.split():
                key, _, value = token.partition("=")
                record[key] = value
            records.append(record)
        return records

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n" + (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
            for name in DAEMONS
            if (self.root / f"{name}.log").exists()
        )

    def stop(self) -> None:
        """Stop the daemons this object started (by their process ids), newest first."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self.processes.clear()


def write_config(
    root: Path, node: str, cpus: int, memory_mb: int, gpus: int, partition: str
) -> Path:
    for folder in ("state", "spool", "munge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    conf = root / "slurm.conf"
    conf.write_text(
        f"""\
# A one-node test cluster (tests/slurm_cluster.py); settings from docs/design.md.
ClusterName=rdtest
SlurmctldHost={node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root / "munge" / "munge.socket"}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Without accounting, job states come from squeue, which forgets finished jobs after MinJobAge.
MinJobAge=600
ReturnToService=2
MpiDefault=none
# The node as declared here, not as detected: the profile's requests must fit.
SlurmdParameters=config_overrides
{"GresTypes=gpu" if gpus else ""}
NodeName={node} CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    if gpus:
        # Counted GPUs with no device file: granted to --gpus requests, never bound to a device.
        (root / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={node} Name=gpu Count={gpus} File=/dev/null\n"
        )
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    return conf


def write_srun_shim(root: Path, conf: Path) -> Path:
    """A folder with an ``srun`` that points the real one at this cluster's slurm.conf.

    Snakemake's slurm-jobstep executor removes every SLURM_* variable, SLURM_CONF included,
    from the environment of the ``srun`` it starts inside a job. Real clusters keep slurm.conf
    at its compiled-in path (/etc/slurm) or run configless, so only a cluster whose config lives
    elsewhere, like this one, needs the variable set again for that ``srun``.
    """
    shim = root / "bin"
    shim.mkdir(exist_ok=True)
    srun = shim / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF="{conf}" exec "{find_binary("srun")}" "$@"\n')
    srun.chmod(0o755)
    return shim


def start_cluster(
    root: Path,
    *,
    cpus: int = 16,
    memory_mb: int = 256_000,
    gpus: int = 1,
    partition: str = "rdtest",
    timeout: float = 90,
) -> SlurmCluster:
    """Start munged, slurmctld and slurmd with state under ``root``; return once the node is
    idle. Raises RuntimeError with the daemons' logs when it does not come up."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    conf = write_config(root, node, cpus, memory_mb, gpus, partition)
    env = {
        **os.environ,
        "SLURM_CONF": str(conf),
        "PATH": f"{write_srun_shim(root, conf)}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cluster = SlurmCluster(root, partition, node, env)
    commands = {
        "munged": [
            find_binary("munged"),
            "--foreground",
            "--force",  # root, and a key in a directory munged would otherwise distrust
            f"--socket={root / 'munge' / 'munge.socket'}",
            f"--key-file={root / 'munge' / 'munge.key'}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
            f"--log-file={root / 'munged.log'}",
        ],
        # -D: stay in the foreground, so the process we hold is the daemon; -i: ignore old state.
        "slurmctld": [find_binary("slurmctld"), "-D", "-i", "-f", str(conf)],
        "slurmd": [find_binary("slurmd"), "-D", "-f", str(conf)],
    }
    try:
        for name, command in commands.items():
            log = open(root / f"{name}.stdout", "w")  # noqa: SIM115 - kept open by the daemon
            cluster.processes[name] = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            if name == "munged":
                _wait(lambda: (root / "munge" / "munge.socket").exists(), timeout, "munged")
            if name == "slurmctld":
                _wait(
                    lambda: cluster.run("scontrol", "ping", check=False).returncode == 0,
                    timeout,
                    "slurmctld",
                )
        _wait(lambda: node_state(cluster) in ("idle", "idle*"), timeout, "the node to be idle")
    except BaseException:
        cluster.stop()
        raise RuntimeError(f"the test SLURM did not start:\n{cluster.logs()}") from None
    return cluster


def node_state(cluster: SlurmCluster) -> str:
    out = cluster.run("sinfo", "--noheader", "--format=%T", check=False).stdout.strip()
    return out.splitlines()[0] if out else ""


def _wait(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "slurm-test")
    running = start_cluster(target)
    print(f"export SLURM_CONF={running.env['SLURM_CONF']}   # Ctrl-C stops the cluster")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        running.stop()

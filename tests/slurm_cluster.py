"""A one-node Slurm cluster on localhost for the tests: munged, slurmctld and slurmd from a temp folder.

Nothing is installed or written outside the folder; client commands find the cluster through
SLURM_CONF. `python -m tests.slurm_cluster DIR` starts one by hand (Ctrl-C or SIGTERM stops it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "srun")
APT_PACKAGES = ("slurm-wlm", "munge")


def missing_reason() -> str | None:
    """Why a local cluster cannot start here (None when it can)."""
    if os.geteuid() != 0:
        return "Slurm tests need root (slurmd runs jobs as their user; the cluster runs as root)"
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; apt-get install {' '.join(APT_PACKAGES)})"
    return None


def install_if_missing(timeout_s: float = 600) -> str | None:
    """apt-get install slurm-wlm munge when root and missing; returns why not when that is impossible or fails."""
    if os.geteuid() != 0 or missing_reason() is None or shutil.which("apt-get") is None:
        return missing_reason()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            return f"Slurm is not installed and `{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    return missing_reason()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    """A started local cluster: its folder, config file and daemons."""

    root: Path
    conf: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What a client command needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (slurmd first) and wait for them."""
        subprocess.run(["scancel", "--full", "--user", "root"], env=dict(os.environ, **self.env),
                       capture_output=True, timeout=30)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _write_config(root: Path, host: str, cpus: int) -> Path:
    for folder in ("state", "spool", "log", "munge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=dreamlabtest",
        f"SlurmctldHost={host}",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "ReturnToService=2",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none",
        "MinJobAge=300",  # finished jobs stay visible to scontrol for 5 minutes (no slurmdbd here)
        "KillWait=30",
        "SchedulerParameters=defer_batch=0",
        f"NodeName={host} CPUs={cpus} RealMemory=2000 State=UNKNOWN",
        # A job in `urgent` preempts jobs in `debug`: they get SIGTERM, 60 s of grace, then are requeued.
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=60",
        f"PartitionName=urgent Nodes={host} MaxTime=INFINITE State=UP PriorityTier=10",
        "",
    ]))
    return conf


def start(root: Path, cpus: int | None = None, timeout_s: float = 60) -> Cluster:
    """Write a config under `root`, start munged, slurmctld and slurmd, and wait until the node is idle."""
    host = socket.gethostname()
    conf = _write_config(root, host, cpus or os.cpu_count() or 1)
    munge = root / "munge"
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    cluster = Cluster(root, conf)
    env = dict(os.environ, SLURM_CONF=str(conf))
    logs = root / "log"
    try:
        cluster.processes.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge / 'munge.socket'}",
             f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}",
             f"--log-file={logs / 'munged.log'}"],
            stdout=subprocess.DEVNULL, stderr=open(logs / "munged.out", "wb"), start_new_session=True))
        _wait_for(lambda: (munge / "munge.socket").exists(), timeout_s, "munged did not create its socket", logs)
        for daemon in ("slurmctld", "slurmd"):
            cluster.processes.append(subprocess.Popen(
                [daemon, "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                stderr=open(logs / f"{daemon}.out", "wb"), start_new_session=True))
        _wait_for(lambda: _node_idle(env), timeout_s, "the node did not come up idle", logs)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_idle(env: dict[str, str]) -> bool:
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=10)
    return done.returncode == 0 and done.stdout.strip() == "idle"


def _wait_for(ready, timeout_s: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in sorted(logs.iterdir()))
            raise RuntimeError(f"{what} within {timeout_s:g} s\n{tails}")
        time.sleep(0.2)


if __name__ == "__main__":
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    started = time.monotonic()
    running = start(Path(sys.argv[1]).resolve())
    print(f"cluster up in {time.monotonic() - started:.1f} s: export SLURM_CONF={running.conf}", flush=True)
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        running.stop()

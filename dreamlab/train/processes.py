"""A run's processes seen with psutil (or its job through Slurm): is the worker alive (`probe`, `assess`), and
stopping it (`stop_run`: the process group here, `scancel` for a Slurm job)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import psutil

from dreamlab.store import Run, RunStore, StoreError
from dreamlab.store.health import Health, Liveness, Thresholds, judge
from dreamlab.store.ingest import ingest_run
from dreamlab.train import slurm

STOPPABLE = ("running", "lost")  # lost: silent for a while, but its processes may still be alive
SLURM_STOPPABLE = ("queued", *STOPPABLE)  # a pending job is cancelled
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
# psutil derives a creation time from clock ticks since boot: the same process reads the same value
# to within a tick, a reused pid differs by the time between the two processes' starts.
_SAME_PROCESS_S = 1.0
_REUSE_SLACK_S = 2.0  # stop_run's looser test: a pid created after the run started is another process


def probe(run: Run, host: str | None = None) -> Liveness:
    """Whether the run's rank-0 worker (else its launcher) is alive, as seen from `host` (this one by default)."""
    host = socket.gethostname() if host is None else host
    if run.worker_pid is not None:
        if run.worker_host != host:
            return Liveness.UNKNOWN
        return process_state(run.worker_pid, lambda created: abs(created - (run.worker_started or 0.0)) <= _SAME_PROCESS_S)
    if run.pid is None or run.host != host or run.started is None:
        return Liveness.UNKNOWN
    # No worker yet (torchrun still starting it): the launcher stands in; one made after the start is a reused pid.
    return process_state(run.pid, lambda created: created <= run.started + _SAME_PROCESS_S)


def assess(run: Run, lost_after_s: float | None = None, stall_after_s: float | None = None,
           now: float | None = None, jobs: Mapping[str, slurm.JobState | None] | None = None) -> Health:
    """`judge` with the run's thresholds (or these overrides) and its process probed from this host; a Slurm run's
    job as Slurm reports it (from `jobs`, `slurm.watched_jobs` of many runs, when given)."""
    now = time.time() if now is None else now
    thresholds = Thresholds.of_run(run, lost_after_s, stall_after_s)
    if run.launcher == "slurm" and run.job_id and run.status in ("queued", "running"):
        job = jobs[run.job_id] if jobs is not None and run.job_id in jobs else slurm.watched_jobs([run])[run.job_id]
        return slurm.slurm_health(run, job, now, thresholds)
    liveness = probe(run) if run.status == "running" else Liveness.UNKNOWN
    return judge(run, now, liveness, thresholds)


def process_state(pid: int, same: Callable[[float], bool]) -> Liveness:
    """Whether process `pid` is alive, stopped or gone; `same(creation time)` tells it from a newer one with its pid."""
    try:
        process = psutil.Process(pid)
        if not same(process.create_time()):
            return Liveness.GONE  # the pid now belongs to another process
        state = process.status()
    except psutil.NoSuchProcess:
        return Liveness.GONE
    except psutil.Error:
        return Liveness.UNKNOWN
    if state in _GONE:
        return Liveness.GONE
    return Liveness.STOPPED if state in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP) else Liveness.ALIVE


@dataclass
class StopResult:
    """What `stop_run` did: the signals sent, whether the group exited, whether the store was updated."""

    run: Run
    signals: list[str] = field(default_factory=list)
    exited: bool = False
    waited_s: float = 0.0
    marked_stopped: bool = False


def stop_run(store: RunStore, ref: int | str, grace_s: float = 60.0, *, poll_s: float = 0.1,
             kill_wait_s: float = 5.0, say: Callable[[str], None] = lambda message: None) -> StopResult:
    """SIGTERM the run's process group (its Slurm job's processes), wait up to `grace_s`, SIGKILL if needed; then mark
    it stopped if still running."""
    run = store.get_run(ref)
    if run.launcher == "slurm" and run.job_id:
        return _stop_slurm_run(store, run, grace_s, poll_s=max(poll_s, 1.0), kill_wait_s=kill_wait_s, say=say)
    if run.status not in STOPPABLE:
        raise StoreError(f"run {run.name} is not running (status {run.status})")
    pgid = _checked_group(run)
    result = StopResult(run=run)
    if not group_alive(pgid):
        say(f"no process of group {pgid} is left")
        result.exited = True
        result.marked_stopped = store.stop_if_running(run.id, "stopped by user (its processes were already gone)")
        return result
    _signal(pgid, signal.SIGTERM, run)
    result.signals.append("SIGTERM")
    store.record_event(run.id, "stop requested", f"SIGTERM to process group {pgid}; SIGKILL after {grace_s:g} s")
    say(f"sent SIGTERM to process group {pgid} of run {run.name}; waiting up to {grace_s:g} s")
    start = time.monotonic()
    result.exited = _wait_gone(pgid, grace_s, poll_s)
    if not result.exited:
        _signal(pgid, signal.SIGKILL, run)
        result.signals.append("SIGKILL")
        store.record_event(run.id, "killed", f"SIGKILL to process group {pgid}: still running after {grace_s:g} s")
        say(f"still running after {grace_s:g} s: sent SIGKILL")
        result.exited = _wait_gone(pgid, kill_wait_s, poll_s)
    result.waited_s = time.monotonic() - start
    if result.exited:
        say(f"process group {pgid} exited after {result.waited_s:.1f} s")
    else:
        say(f"process group {pgid} still has live processes after SIGKILL")
    how = "SIGTERM" if result.signals == ["SIGTERM"] else f"SIGKILL after {grace_s:g} s grace"
    result.marked_stopped = store.stop_if_running(run.id, f"stopped by user ({how})")
    return result


def _stop_slurm_run(store: RunStore, run: Run, grace_s: float, *, poll_s: float, kill_wait_s: float,
                    say: Callable[[str], None]) -> StopResult:
    """scancel a pending job; SIGTERM a running one's processes (so rank 0 checkpoints), then scancel after `grace_s`."""
    if run.status not in SLURM_STOPPABLE:
        raise StoreError(f"run {run.name} is not queued or running (status {run.status})")
    result = StopResult(run=run)
    job = slurm.job_state(run.job_id)
    state = slurm.map_state(job.state)[0] if job else None
    if state not in ("queued", "running"):
        say(f"Slurm job {run.job_id} has already ended" + (f" ({job.state})" if job else ""))
        result.exited = True
        ingest_run(store, run)  # its own ending, if it wrote one
        result.marked_stopped = store.end_if_unfinished(run.id, "stopped", "stopped by user (its Slurm job had already ended)")
        return result
    if state == "queued" and run.status == "queued":
        slurm.cancel(run.job_id)
        result.signals.append("scancel")
        say(f"cancelled pending Slurm job {run.job_id}")
        result.exited = slurm.wait_ended(run.job_id, kill_wait_s, poll_s) is not None
        result.marked_stopped = store.end_if_unfinished(run.id, "stopped", "cancelled by user while queued in Slurm")
        return result
    slurm.cancel(run.job_id, "TERM")
    result.signals.append("SIGTERM")
    store.record_event(run.id, "stop requested", f"scancel --signal=TERM {run.job_id}; scancel after {grace_s:g} s")
    say(f"sent SIGTERM to Slurm job {run.job_id} of run {run.name}; waiting up to {grace_s:g} s")
    start = time.monotonic()
    ended = slurm.wait_ended(run.job_id, grace_s, poll_s)
    result.exited = ended is None or slurm.map_state(ended.state)[0] not in ("queued", "running")
    if not result.exited:
        slurm.cancel(run.job_id)
        result.signals.append("scancel")
        store.record_event(run.id, "killed", f"scancel {run.job_id}: still running after {grace_s:g} s")
        say(f"still running after {grace_s:g} s: cancelled the job")
        ended = slurm.wait_ended(run.job_id, kill_wait_s, poll_s)
        result.exited = ended is None or slurm.map_state(ended.state)[0] not in ("queued", "running")
    result.waited_s = time.monotonic() - start
    ingest_run(store, run)  # the job's own ending (stopped, with its checkpoint) before a reader's guess
    say(f"Slurm job {run.job_id} " + (f"ended after {result.waited_s:.1f} s" if result.exited else "is still running"))
    how = "SIGTERM" if result.signals == ["SIGTERM"] else f"scancel after {grace_s:g} s grace"
    result.marked_stopped = store.end_if_unfinished(run.id, "stopped", f"stopped by user ({how}, Slurm job {run.job_id})")
    return result


def _checked_group(run: Run) -> int:
    pgid = run.pgid
    if pgid is None:
        raise StoreError(f"run {run.name} has no process group recorded: nothing to signal")
    if pgid <= 1:
        raise StoreError(f"run {run.name} records process group {pgid}: refusing to signal it")
    if pgid == os.getpgrp():
        raise StoreError(f"run {run.name} records process group {pgid}, which is this command's own: refusing")
    here = socket.gethostname()
    if run.host and run.host != here:
        raise StoreError(f"run {run.name} runs on {run.host}, not on this machine ({here}): stop it there")
    if run.pid is not None:
        try:
            process = psutil.Process(run.pid)
            reused = process.status() not in _GONE and (
                os.getpgid(run.pid) != pgid
                or (run.started is not None and process.create_time() > run.started + _REUSE_SLACK_S))
        except (psutil.Error, ProcessLookupError):
            reused = False  # gone: the group check below decides
        if reused:
            raise StoreError(f"pid {run.pid} of run {run.name} now belongs to another process: refusing to signal")
    return pgid


def _signal(pgid: int, signum: signal.Signals, run: Run) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # exited in the meantime
    except PermissionError:
        raise StoreError(f"not permitted to signal process group {pgid} of run {run.name}") from None


def _wait_gone(pgid: int, timeout_s: float, poll_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in the group."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() not in _GONE:
                return True
        except (psutil.Error, ProcessLookupError):
            continue
    return False


def reap_when_done(process: subprocess.Popen, name: str) -> None:
    """Wait for a detached child in a daemon thread, so a long-lived starter (the console) keeps no zombie."""
    # A starter that exits first (the CLI) leaves the child to init; the daemon thread dies with it.
    threading.Thread(target=process.wait, name=f"dreamlab-{name}-reaper", daemon=True).start()

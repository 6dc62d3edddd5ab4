"""Evals as jobs, like runs: start `dreamlab eval` detached, beat while it works, read it lost, stop it.

A detached eval is the same `dreamlab eval` command line without --detach, started in its own session
(so closing a terminal or the console never stops it) with its output in `<store folder>/evals/<job>/eval.log`.
The process doing the work records itself (`begin_eval_job`), beats from a thread every few seconds,
writes its progress after every batch, and records how it ended; SIGTERM (`dreamlab evals stop`) ends it
`stopped` with its finished samples kept, so the same command resumes it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from dreamlab.store import EvalJob, RunStore, StoreError
from dreamlab.store.health import Health, Liveness
from dreamlab.train.processes import group_alive, process_state, reap_when_done

HEARTBEAT_S = 5.0
LOST_AFTER_S = 60.0  # as runs: silent this long and its process not known alive
STOPPABLE = ("running", "lost")
_SAME_PROCESS_S = 1.0  # creation times read back to within a clock tick
MAIN = "from dreamlab.cli import main; main()"


def log_path(store_path: Path, job_id: int) -> Path:
    """Where a detached eval writes its output: `<store folder>/evals/<job id>/eval.log`."""
    return store_path.resolve().parent / "evals" / str(job_id) / "eval.log"


def eval_command(argv: Sequence[str], store_path: Path, job_id: int) -> list[str]:
    """The command line a detached job runs: `dreamlab eval ARGV --db STORE --job-id ID` with this Python."""
    return [sys.executable, "-c", MAIN, "eval", *argv, "--db", str(store_path.resolve()), "--job-id", str(job_id)]


def start_detached(store: RunStore, argv: Sequence[str], *, run_id: int | None = None, model: str | None = None,
                   task: str | None = None) -> EvalJob:
    """Record a job for `dreamlab eval ARGV` and start it in its own session; returns it running (pid = pgid)."""
    job = store.create_eval_job(argv, detached=True, run_id=run_id, model=model, task=task)
    log = log_path(store.path, job.id)
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(eval_command(argv, store.path, job.id), stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd(),
                                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except OSError as error:
        store.finish_eval_job(job.id, "failed", f"could not start: {error}")
        raise
    reap_when_done(process, f"eval-{job.id}")
    return store.mark_eval_job_started(job.id, pid=process.pid, pgid=process.pid, log_path=str(log))


class StopRequested(KeyboardInterrupt):
    """SIGTERM arrived: end like an interrupt (finished samples kept), recorded as stopped."""


@dataclass
class JobTracker:
    """The job this process works for (set up by `running_job`)."""

    store: RunStore
    job: EvalJob
    signalled: bool = False

    @property
    def id(self) -> int:
        """The job's id."""
        return self.job.id


@contextmanager
def running_job(store: RunStore, job_id: int | None, command: Sequence[str], *,
                heartbeat_s: float = HEARTBEAT_S) -> Iterator[JobTracker]:
    """Work for job `job_id` (a detached one), or a new foreground job recording `command`; beat meanwhile.

    The job ends completed when the body returns, stopped on SIGTERM or an interrupt (exit code 130),
    failed on anything else (the first line of the error as its reason).
    """
    if job_id is None:
        job = store.create_eval_job(command, detached=False)
        store.mark_eval_job_started(job.id, pid=os.getpid(), pgid=None)
        job_id = job.id
    job = store.begin_eval_job(job_id, host=socket.gethostname(), pid=os.getpid(),
                               pid_started=psutil.Process().create_time())
    tracker = JobTracker(store, job)

    def on_sigterm(signum: int, frame: object) -> None:
        tracker.signalled = True
        raise StopRequested()

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    beat = _Heartbeat(store.path, job_id, heartbeat_s)
    beat.start()
    try:
        yield tracker
    except BaseException as error:
        store.finish_eval_job(job_id, *_ending(error, tracker.signalled))
        raise
    else:
        store.finish_eval_job(job_id, "completed")
    finally:
        beat.stop()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _ending(error: BaseException, signalled: bool) -> tuple[str, str]:
    """(status, reason) of a job whose body raised `error`."""
    if signalled:
        return "stopped", "stopped by SIGTERM (dreamlab evals stop); finished samples are kept"
    if isinstance(error, KeyboardInterrupt) or getattr(error, "exit_code", None) == 130:
        return "stopped", "interrupted; finished samples are kept"
    text = str(error).strip().splitlines()
    return "failed", f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class _Heartbeat:
    """A daemon thread that beats for the job on its own store connection (model loads and long batches beat too)."""

    def __init__(self, db: Path, job_id: int, interval_s: float) -> None:
        self.db, self.job_id, self.interval_s = db, job_id, interval_s
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dreamlab-eval-heartbeat", daemon=True)

    def start(self) -> None:
        """Beat every interval until `stop`."""
        self._thread.start()

    def stop(self) -> None:
        """End the thread."""
        self._halt.set()
        self._thread.join(timeout=max(10.0, 2 * self.interval_s))

    def _run(self) -> None:
        try:
            store = RunStore(self.db)
        except Exception as error:  # noqa: BLE001 - the eval goes on; readers see it silent
            print(f"heartbeat: cannot open the run store: {error}", file=sys.stderr, flush=True)
            return
        try:
            while not self._halt.wait(self.interval_s):
                try:
                    store.eval_job_heartbeat(self.job_id)
                except Exception as error:  # noqa: BLE001 - a missed beat must not end the thread
                    print(f"heartbeat: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        finally:
            store.close()


def probe(job: EvalJob, host: str | None = None) -> Liveness:
    """Whether the job's working process (else the one started for it) is alive, seen from `host` (this one)."""
    host = socket.gethostname() if host is None else host
    if job.host != host:
        return Liveness.UNKNOWN
    if job.worker_pid is not None:
        return process_state(job.worker_pid, lambda created: abs(created - (job.worker_started or 0.0)) <= _SAME_PROCESS_S)
    if job.pid is None or job.started is None:
        return Liveness.UNKNOWN
    return process_state(job.pid, lambda created: created <= job.started + _SAME_PROCESS_S)


def judge(job: EvalJob, now: float, liveness: Liveness, lost_after_s: float = LOST_AFTER_S) -> Health:
    """The status a reader shows: a running job silent for `lost_after_s` whose process is not known alive is lost.

    A Slurm job has no heartbeat here: its status is Slurm's and its journal's (`refresh_eval_jobs`)."""
    if job.launcher == "slurm":  # queued: Slurm's pending reason; running: where; ended: the job's exit_reason
        if job.status == "running":
            return Health("running", job.reason or f"Slurm job {job.job_id}" + (f" on {job.nodes}" if job.nodes else ""))
        return Health(job.status, job.reason if job.status == "queued" else None)
    if job.status != "running":
        return Health(job.status, job.exit_reason if job.status == "lost" else None)
    silent = now - (job.heartbeat or job.started or job.created)
    if silent > lost_after_s and liveness in (Liveness.GONE, Liveness.UNKNOWN):
        pid = job.worker_pid or job.pid
        gone = f"; process {pid} is gone" if liveness is Liveness.GONE else "; its process cannot be checked from here"
        return Health("lost", f"no heartbeat for {silent:.0f} s (threshold {lost_after_s:g} s){gone}")
    if liveness is Liveness.STOPPED:
        return Health("running", f"process {job.worker_pid or job.pid} is stopped (SIGSTOP?)")
    return Health("running")


def assess(job: EvalJob, lost_after_s: float | None = None, now: float | None = None) -> Health:
    """`judge` with the job's process probed from this host."""
    liveness = probe(job) if job.status == "running" else Liveness.UNKNOWN
    return judge(job, time.time() if now is None else now, liveness, LOST_AFTER_S if lost_after_s is None else lost_after_s)


@dataclass
class StopResult:
    """What `stop_job` did: the signals sent, whether the processes exited, whether the store was updated here."""

    job: EvalJob
    signals: list[str] = field(default_factory=list)
    exited: bool = False
    marked_stopped: bool = False


def stop_job(store: RunStore, job_id: int, grace_s: float = 30.0, *, poll_s: float = 0.1, kill_wait_s: float = 5.0,
             say: Callable[[str], None] = lambda message: None) -> StopResult:
    """SIGTERM the job's process group (a foreground job: its process), SIGKILL after `grace_s`; then it is stopped.

    The eval itself records `stopped` on SIGTERM; the store is only written here when it could not (killed, gone).
    A Slurm eval job is stopped through Slurm (scancel --signal=TERM, then scancel).
    """
    job = store.get_eval_job(job_id)
    if job.launcher == "slurm":
        from dreamlab.train.eval_jobs import stop_slurm_eval_job

        return stop_slurm_eval_job(store, job, grace_s, say=say)
    if job.status not in STOPPABLE:
        raise StoreError(f"eval job {job.id} is not running (status {job.status})")
    here = socket.gethostname()
    if job.host and job.host != here:
        raise StoreError(f"eval job {job.id} runs on {job.host}, not on this machine ({here}): stop it there")
    result = StopResult(job=job)
    target = _target(job)
    if target is None:
        say(f"the processes of eval job {job.id} are already gone")
        result.exited = True
        result.marked_stopped = store.finish_eval_job(job.id, "stopped", "stopped by user (its process was already gone)")
        return result
    kind, number = target
    send = os.killpg if kind == "group" else os.kill
    alive = (lambda: group_alive(number)) if kind == "group" else (lambda: probe(job) in (Liveness.ALIVE, Liveness.STOPPED))
    _send(send, number, signal.SIGTERM)
    result.signals.append("SIGTERM")
    say(f"sent SIGTERM to {kind} {number} of eval job {job.id}; waiting up to {grace_s:g} s")
    result.exited = _wait(alive, grace_s, poll_s)
    if not result.exited:
        _send(send, number, signal.SIGKILL)
        result.signals.append("SIGKILL")
        say(f"still running after {grace_s:g} s: sent SIGKILL")
        result.exited = _wait(alive, kill_wait_s, poll_s)
    how = "SIGTERM" if result.signals == ["SIGTERM"] else f"SIGKILL after {grace_s:g} s grace"
    result.marked_stopped = store.finish_eval_job(job.id, "stopped", f"stopped by user ({how}); finished samples are kept")
    return result


def _target(job: EvalJob) -> tuple[str, int] | None:
    """('group', pgid) for a detached job, ('process', pid) for a foreground one; None when it is gone."""
    if probe(job) is Liveness.GONE:
        return None
    if job.pgid is not None:
        if job.pgid <= 1 or job.pgid == os.getpgrp():
            raise StoreError(f"eval job {job.id} records process group {job.pgid}: refusing to signal it")
        return ("group", job.pgid) if group_alive(job.pgid) else None
    pid = job.worker_pid or job.pid
    if pid is None or pid == os.getpid():
        raise StoreError(f"eval job {job.id} has no other process recorded: nothing to signal")
    return "process", pid


def _send(send: Callable[[int, int], None], number: int, signum: signal.Signals) -> None:
    try:
        send(number, signum)
    except ProcessLookupError:
        pass  # exited in the meantime
    except PermissionError:
        raise StoreError(f"not permitted to signal {number}") from None


def _wait(alive: Callable[[], bool], timeout_s: float, poll_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True

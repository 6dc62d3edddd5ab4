"""The run store's eval jobs: one `eval_jobs` row per `dreamlab eval` invocation, watched like a run.

A job runs here (launcher 'local': its process, heartbeat and liveness) or as a Slurm job (launcher
'slurm': its job id, node list and folder, whose journal the readers of the store ingest).

A job's eval rows are the ones carrying its grid_id; its progress (samples done, correct) is summed
from them in SQL each time the job writes progress, so it can never disagree with the samples.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dreamlab.store.errors import StoreError
from dreamlab.store.evals import StoreCore
from dreamlab.store.records import EvalJob
from dreamlab.store.schema import EVAL_JOB_STATUSES

ENDED_JOB_STATUSES = ("completed", "failed", "stopped")
# Samples done and correct over the job's grid, and its eval ids (kept when the job ends: a later rerun of
# the same cells moves their grid_id to the new job).
_SUM_PROGRESS = """UPDATE eval_jobs SET
    n_done = COALESCE((SELECT SUM(n_done) FROM evals WHERE grid_id = eval_jobs.grid_id), n_done),
    n_correct = COALESCE((SELECT SUM(n_correct) FROM evals WHERE grid_id = eval_jobs.grid_id), n_correct),
    eval_ids = (SELECT json_group_array(id) FROM (SELECT id FROM evals WHERE grid_id = eval_jobs.grid_id ORDER BY id))
    WHERE id = :id AND grid_id IS NOT NULL AND status IN ('queued', 'running', 'lost')"""
# A job that ended without ending its eval rows (killed, lost, stopped by SIGKILL): they are interrupted.
_INTERRUPT_EVALS = """UPDATE evals SET status = 'interrupted', ended = :now WHERE status = 'running'
    AND grid_id = (SELECT grid_id FROM eval_jobs WHERE id = :id)"""
LAUNCHERS = ("local", "slurm")
# What Slurm (or a Slurm job's journal) says of a job before it ends; a field changes only when named, even to NULL.
_SLURM_FIELDS = ("status", "job_id", "nodes", "reason", "started")
_UPDATE_SLURM_JOB = """UPDATE eval_jobs SET status = CASE WHEN :set_status THEN :status ELSE status END,
    job_id = CASE WHEN :set_job_id THEN :job_id ELSE job_id END,
    nodes = CASE WHEN :set_nodes THEN :nodes ELSE nodes END,
    reason = CASE WHEN :set_reason THEN :reason ELSE reason END,
    started = CASE WHEN :set_started THEN :started ELSE started END,
    ended = CASE WHEN :set_status AND :status = 'running' THEN NULL ELSE ended END,
    exit_reason = CASE WHEN :set_status AND :status = 'running' THEN NULL ELSE exit_reason END
    WHERE id = :id AND launcher = 'slurm'"""
_LIST_JOBS = """SELECT * FROM eval_jobs WHERE (:run_id IS NULL OR run_id = :run_id)
    AND (:status IS NULL OR status = :status) ORDER BY id DESC LIMIT :limit"""


class EvalJobStoreMixin:
    """Eval job reads and writes of a StoreCore; mixed into RunStore."""

    def create_eval_job(self: StoreCore, command: Sequence[str], *, detached: bool, run_id: int | None = None,
                        model: str | None = None, task: str | None = None, launcher: str = "local",
                        folder: str | None = None) -> EvalJob:
        """Record a queued job for this `dreamlab eval` command line (its options, without --detach); a Slurm job
        (launcher 'slurm') with the folder its script, log and journal go to."""
        if launcher not in LAUNCHERS:
            raise StoreError(f"unknown eval job launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
        if launcher == "slurm" and not folder:
            raise StoreError("a Slurm eval job needs its folder (where its journal is written)")
        with self._write() as conn:
            if run_id is not None:
                self._resolve(int(run_id), conn)
            conn.execute("INSERT INTO eval_jobs (status, command, detached, run_id, model, task, host, created, launcher, "
                         "folder) VALUES ('queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (json.dumps([str(part) for part in command]), int(detached), run_id, model, task,
                          None if launcher == "slurm" else socket.gethostname(), time.time(), launcher, folder))
            job_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        return _get_job(self, job_id)

    def mark_eval_job_started(self: StoreCore, job_id: int, *, pid: int, pgid: int | None,
                              log_path: str | None = None) -> EvalJob:
        """The job's process started: its pid, process group (a detached job's own) and log file."""
        with self._write() as conn:
            now = time.time()
            cursor = conn.execute("UPDATE eval_jobs SET status = 'running', pid = ?, pgid = ?, log_path = ?, started = ?, "
                                  "heartbeat = ? WHERE id = ? AND status = 'queued'",
                                  (int(pid), pgid, log_path, now, now, int(job_id)))
            if cursor.rowcount == 0:
                raise StoreError(f"eval job {job_id} is not queued")
        return _get_job(self, job_id)

    def begin_eval_job(self: StoreCore, job_id: int, *, host: str, pid: int, pid_started: float) -> EvalJob:
        """The process doing the work records itself (for liveness); refused when the job already ended."""
        with self._write() as conn:
            now = time.time()
            cursor = conn.execute("UPDATE eval_jobs SET status = 'running', host = ?, worker_pid = ?, worker_started = ?, "
                                  "started = COALESCE(started, ?), heartbeat = ?, ended = NULL, exit_reason = NULL "
                                  "WHERE id = ? AND status IN ('queued', 'running', 'lost')",
                                  (host, int(pid), float(pid_started), now, now, int(job_id)))
            if cursor.rowcount == 0:
                job = _get_job(self, job_id)
                raise StoreError(f"eval job {job_id} already ended ({job.status})")
        return _get_job(self, job_id)

    def describe_eval_job(self: StoreCore, job_id: int, *, run_id: int | None, model: str, task: str, grid_id: str,
                          n_total: int) -> None:
        """What the job evaluates, once the model and the samples are known: its grid and samples x cells."""
        with self._write() as conn:
            conn.execute("UPDATE eval_jobs SET run_id = ?, model = ?, task = ?, grid_id = ?, n_total = ? WHERE id = ?",
                         (run_id, model, task, grid_id, int(n_total), int(job_id)))

    def eval_job_heartbeat(self: StoreCore, job_id: int) -> None:
        """A sign of life now (a job read as lost comes back to running)."""
        with self._write() as conn:
            conn.execute("UPDATE eval_jobs SET heartbeat = ?, status = CASE status WHEN 'lost' THEN 'running' "
                         "ELSE status END, ended = CASE status WHEN 'lost' THEN NULL ELSE ended END WHERE id = ?",
                         (time.time(), int(job_id)))

    def record_eval_job_progress(self: StoreCore, job_id: int, samples_per_s: float | None) -> None:
        """A batch finished: sum done / correct over the job's grid, the rate this session, a heartbeat."""
        with self._write() as conn:
            now = time.time()
            conn.execute(_SUM_PROGRESS, {"id": int(job_id)})
            conn.execute("UPDATE eval_jobs SET samples_per_s = ?, progress_time = ?, heartbeat = ? WHERE id = ?",
                         (samples_per_s, now, now, int(job_id)))

    def finish_eval_job(self: StoreCore, job_id: int, status: str, exit_reason: str | None = None,
                        when: float | None = None) -> bool:
        """End a queued, running or lost job (completed / failed / stopped) now or at `when`; False when it had
        already ended."""
        if status not in ENDED_JOB_STATUSES:
            raise StoreError(f"cannot end an eval job as {status!r}: use one of {', '.join(ENDED_JOB_STATUSES)}")
        with self._write() as conn:
            now = time.time() if when is None else when
            conn.execute(_SUM_PROGRESS, {"id": int(job_id)})
            cursor = conn.execute("UPDATE eval_jobs SET status = ?, ended = ?, exit_reason = ? WHERE id = ? AND status IN "
                                  "('queued', 'running', 'lost')", (status, now, exit_reason, int(job_id)))
            if cursor.rowcount == 1 and status != "completed":
                conn.execute(_INTERRUPT_EVALS, {"id": int(job_id), "now": now})
            return cursor.rowcount == 1

    def update_slurm_eval_job(self: StoreCore, eval_job_id: int, /, **changes: Any) -> EvalJob:
        """Set some of status (queued / running: a job that runs again is no longer ended), job_id, nodes, reason
        (Slurm's word, e.g. why it is pending) and started of a Slurm eval job; endings go through finish_eval_job."""
        unknown = set(changes) - set(_SLURM_FIELDS)
        if unknown:
            raise StoreError(f"unknown eval job fields {sorted(unknown)}; expected some of {list(_SLURM_FIELDS)}")
        if changes.get("status", "queued") not in ("queued", "running"):
            raise StoreError(f"eval job status {changes['status']!r}: set queued or running here; end a job with "
                             "finish_eval_job")
        job = _get_job(self, eval_job_id)
        if job.launcher != "slurm":
            raise StoreError(f"eval job {job.id} is not a Slurm job (launcher {job.launcher})")
        args: dict[str, Any] = {"id": job.id}
        for name in _SLURM_FIELDS:
            args[name], args[f"set_{name}"] = changes.get(name), name in changes
        with self._write() as conn:
            conn.execute(_UPDATE_SLURM_JOB, args)
            if changes.get("status") == "running":
                conn.execute(_SUM_PROGRESS, {"id": job.id})
        return _get_job(self, job.id)

    def sum_eval_job_progress(self: StoreCore, job_id: int) -> None:
        """Sum done / correct over the job's grid from its eval rows (a Slurm job's, as its journal is read in)."""
        with self._write() as conn:
            conn.execute(_SUM_PROGRESS, {"id": int(job_id)})

    def replace_eval_job_ending(self: StoreCore, job_id: int, status: str, exit_reason: str | None, when: float) -> None:
        """Put the job's own ending (a Slurm job's journal) in place of one a reader guessed from Slurm's state first."""
        if status not in ENDED_JOB_STATUSES:
            raise StoreError(f"cannot end an eval job as {status!r}: use one of {', '.join(ENDED_JOB_STATUSES)}")
        with self._write() as conn:
            conn.execute("UPDATE eval_jobs SET status = ?, ended = ?, exit_reason = ? WHERE id = ? AND status IN "
                         "('completed', 'failed', 'stopped')", (status, when, exit_reason, int(job_id)))

    def mark_eval_job_lost(self: StoreCore, job_id: int, reason: str) -> bool:
        """Mark a running job lost (ended at its last heartbeat), its running eval rows interrupted."""
        with self._write() as conn:
            cursor = conn.execute("UPDATE eval_jobs SET status = 'lost', ended = COALESCE(heartbeat, started, created), "
                                  "exit_reason = ? WHERE id = ? AND status = 'running'", (reason, int(job_id)))
            if cursor.rowcount == 1:
                conn.execute(_INTERRUPT_EVALS, {"id": int(job_id), "now": time.time()})
            return cursor.rowcount == 1

    def get_eval_job(self: StoreCore, job_id: int) -> EvalJob:
        """One eval job by id; StoreError if unknown."""
        return _get_job(self, job_id)

    def list_eval_jobs(self: StoreCore, *, run_id: int | None = None, status: str | None = None,
                       limit: int | None = None) -> list[EvalJob]:
        """Eval jobs newest first, optionally of one run or one status, at most `limit`."""
        if status is not None and status not in EVAL_JOB_STATUSES:
            raise StoreError(f"unknown eval job status {status!r}: use one of {', '.join(EVAL_JOB_STATUSES)}")
        with self._read() as conn:
            rows = conn.execute(_LIST_JOBS, {"run_id": run_id, "status": status, "limit": -1 if limit is None else limit})
            return [_job_from_row(row) for row in rows]


def _get_job(store: StoreCore, job_id: int) -> EvalJob:
    with store._read() as conn:
        row = conn.execute("SELECT * FROM eval_jobs WHERE id = ?", (int(job_id),)).fetchone()
    if row is None:
        raise StoreError(f"no eval job with id {job_id} in {store.path}")
    return _job_from_row(row)


def _job_from_row(row: Mapping[str, Any]) -> EvalJob:
    values = {key: row[key] for key in row.keys()}
    values["command"] = json.loads(values["command"] or "[]")
    values["eval_ids"] = json.loads(values["eval_ids"] or "[]")
    values["detached"] = bool(values["detached"])
    return EvalJob(**values)

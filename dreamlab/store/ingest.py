"""Reading Slurm jobs' journals into the store, on the host that owns it (`runs list`, `runs show`, the console, ...).

A training job's rank 0 writes the same records a local run writes to the store directly; `apply_run_record`
is the one place that turns a record into store writes, for both (the local trainer calls it at once,
ingestion later with the record's own time). An eval job's records go through `apply_eval_job_record`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dreamlab.store.errors import StoreError
from dreamlab.store.evals import settings_key
from dreamlab.store.journal import JOURNAL_NAME
from dreamlab.store.records import EvalJob, Progress, Run
from dreamlab.store.runstore import RunStore


def apply_run_record(store: RunStore, run_id: int, record: dict[str, Any]) -> None:
    """Write one run record (started, worker, heartbeat, metrics, checkpoint, event, finish, submitted) to the store."""
    kind, when = record["kind"], float(record["time"])
    if kind == "started":  # rank 0 of a Slurm job is up
        try:
            store.mark_started(run_id, pid=record.get("pid"), when=when)
        except StoreError as error:  # still `running`: a job Slurm requeued after its node failed
            store.record_event(run_id, "note", f"run store: {error}; continuing", when=when)
        if record.get("nodes") is not None:
            store.record_nodes(run_id, record["nodes"])
    elif kind == "worker":
        store.record_worker(run_id, record["host"], record["pid"], record["created"])
    elif kind == "heartbeat":
        progress = record.get("progress")
        store.heartbeat(run_id, None if progress is None else Progress(*progress), when=when)
    elif kind == "metrics":
        store.record_metrics(run_id, record["step"], record["values"], time=when)
    elif kind == "checkpoint":
        store.record_checkpoint(run_id, record["step"], record["path"], kind="model+state", complete=True, when=when)
        for old in store.checkpoints(run_id):  # rotated out by trainer.max_checkpoints
            if old.complete and not Path(old.path).exists():
                store.record_checkpoint(run_id, old.step, old.path, kind=old.kind, complete=False, when=when)
    elif kind == "event":
        store.record_event(run_id, record["event"], record.get("message"), when=when)
    elif kind == "finish":
        store.record_ending(run_id, record["status"], record.get("reason"), when=when)
    elif kind == "submitted":  # the job resubmitted the run (trainer.slurm_requeue)
        store.mark_submitted(run_id, record["job_id"], when=when)
    else:
        raise StoreError(f"unknown run record kind {kind!r}")


def journal_of(run: Run) -> Path | None:
    """Where a Slurm run's job writes its journal (None for a run without a folder)."""
    return Path(run.run_dir) / JOURNAL_NAME if run.run_dir else None


def ingest_run(store: RunStore, run: Run) -> int:
    """Read a Slurm run's new journal lines into the store; how many were applied (skipped ones become a note)."""
    path = journal_of(run)
    if path is None or not path.is_file():
        return 0
    applied, skipped = store.ingest_journal(path, lambda record: apply_run_record(store, run.id, record))
    for problem in skipped:
        store.record_event(run.id, "note", f"journal {path}: skipped {problem}")
    return applied


def ingest_runs(store: RunStore, runs: Iterable[Run] | None = None) -> int:
    """Ingest the journal of every Slurm run (of `runs`) that grew since it was last read; lines applied in all."""
    offsets = store.journal_offsets()
    total = 0
    for run in store.list_runs() if runs is None else runs:
        if run.launcher == "slurm" and _grew(journal_of(run), offsets):
            total += ingest_run(store, run)
    return total


def apply_eval_job_record(store: RunStore, job: EvalJob, record: dict[str, Any]) -> None:
    """Write one eval job record (started, job, eval, samples, eval_finish, finish) to the store.

    The job's eval rows are those of its grid (grid_id, from its `job` line); its samples done / correct are
    summed from them after each line, as a local job's are after each batch."""
    kind, when = record["kind"], float(record["time"])
    if kind == "started":
        store.update_slurm_eval_job(job.id, status="running", started=when, nodes=record.get("nodes"), reason=None)
    elif kind == "job":
        store.describe_eval_job(job.id, run_id=record.get("run_id"), model=record["model"], task=record["task"],
                                grid_id=record["grid_id"], n_total=record["n_total"])
    elif kind == "eval":
        if settings_key(record["settings"]) != record["key"]:
            raise StoreError(f"eval {record['key']}: its settings hash to {settings_key(record['settings'])} here "
                             "(another dreamlab version?)")
        store.create_or_resume_eval(record["settings"])
    elif kind == "samples":
        store.record_eval_samples(store.find_eval(record["key"]).id, record["rows"])
    elif kind == "eval_finish":
        store.finish_eval(store.find_eval(record["key"]).id, record["status"], record.get("summary"))
    elif kind == "finish":  # the job's own word, also over an ending a reader guessed from Slurm first
        if not store.finish_eval_job(job.id, record["status"], record.get("reason"), when=when):
            store.replace_eval_job_ending(job.id, record["status"], record.get("reason"), when)
    else:
        raise StoreError(f"unknown eval job record kind {kind!r}")
    if kind in ("eval", "samples", "eval_finish"):
        store.sum_eval_job_progress(job.id)


def journal_of_eval_job(job: EvalJob) -> Path | None:
    """Where a Slurm eval job writes its journal (None for a local job)."""
    return Path(job.folder) / JOURNAL_NAME if job.launcher == "slurm" and job.folder else None


def ingest_eval_job(store: RunStore, job: EvalJob) -> int:
    """Read a Slurm eval job's new journal lines into the store; how many were applied."""
    path = journal_of_eval_job(job)
    if path is None or not path.is_file():
        return 0
    applied, skipped = store.ingest_journal(path, lambda record: apply_eval_job_record(store, job, record))
    if skipped:
        store.update_slurm_eval_job(job.id, reason=f"journal {path}: skipped {len(skipped)} lines ({skipped[0]})")
    return applied


def ingest_eval_jobs(store: RunStore) -> int:
    """Ingest the journal of every Slurm eval job that grew since it was last read; lines applied in all."""
    offsets = store.journal_offsets()
    total = 0
    for job in store.list_eval_jobs():
        if _grew(journal_of_eval_job(job), offsets):
            total += ingest_eval_job(store, job)
    return total


def _grew(path: Path | None, offsets: dict[str, int]) -> bool:
    """Whether a journal holds bytes past where it was last read (False for none, or one that cannot be read)."""
    if path is None:
        return False
    try:
        return path.stat().st_size > offsets.get(str(path.resolve()), 0)
    except OSError:
        return False


def ingest_all(store: RunStore) -> int:
    """Ingest every run's and eval job's journal that grew; lines applied in all."""
    return ingest_runs(store) + ingest_eval_jobs(store)

"""The run store's side of Slurm jobs: how far each job journal has been read in, and evals submitted as jobs."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from dreamlab.store.errors import StoreError
from dreamlab.store.journal import read_from
from dreamlab.store.records import EvalJob

EVAL_JOB_STATUSES = ("queued", "running", "completed", "failed", "stopped")
_EVAL_JOB_FIELDS = ("status", "reason", "job_id", "nodes", "started", "ended")
# A field changes only when the update names it (`set_<field>` true), even to NULL.
_UPDATE_EVAL_JOB = """UPDATE eval_jobs SET status = CASE WHEN :set_status THEN :status ELSE status END,
    reason = CASE WHEN :set_reason THEN :reason ELSE reason END,
    job_id = CASE WHEN :set_job_id THEN :job_id ELSE job_id END,
    nodes = CASE WHEN :set_nodes THEN :nodes ELSE nodes END,
    started = CASE WHEN :set_started THEN :started ELSE started END,
    ended = CASE WHEN :set_ended THEN :ended ELSE ended END WHERE id = :id"""
INGEST_BATCH_LINES = 500  # journal lines a transaction (a backlog must not hold the write lock for long)
_UPSERT_JOURNAL = """INSERT INTO journals (path, offset, lines, bad_lines) VALUES (:path, :offset, :lines, :bad)
    ON CONFLICT (path) DO UPDATE SET offset = :offset, lines = lines + :lines, bad_lines = bad_lines + :bad"""


class StoreCore(Protocol):
    """What the job methods need of the store that holds them (RunStore)."""

    path: Path

    def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...


class JobStoreMixin:
    """Journal offsets and eval jobs of a StoreCore; mixed into RunStore."""

    def journal_offsets(self: StoreCore) -> dict[str, int]:
        """How many bytes of each journal (by path) are in the store already."""
        with self._read() as conn:
            return dict(conn.execute("SELECT path, offset FROM journals").fetchall())

    def ingest_journal(self: StoreCore, path: str | os.PathLike[str], apply: Callable[[dict[str, Any]], None],
                       batch_lines: int = INGEST_BATCH_LINES) -> tuple[int, list[str]]:
        """Apply the journal's lines that are not in the store yet, in order; returns (lines applied, descriptions of
        the lines skipped).

        Each batch of lines is applied in one transaction with the new offset: two readers ingesting at once
        take turns on the write lock and the second starts where the first stopped, so each line is applied
        once; batches keep the lock short for the other writers when a long journal is read in. A line whose
        record the store refuses (StoreError) is skipped alone (a savepoint per line)."""
        key = str(Path(path).resolve())
        applied, skipped = 0, []
        while True:
            with self._write() as conn:
                row = conn.execute("SELECT offset FROM journals WHERE path = ?", (key,)).fetchone()
                chunk = read_from(key, row[0] if row else 0, max_lines=batch_lines)
                refused = [f"unreadable line: {text!r}" for text in chunk.bad_lines]
                for record in chunk.records:
                    conn.execute("SAVEPOINT journal_line")
                    try:
                        apply(record)
                        applied += 1
                    except (StoreError, KeyError, TypeError, ValueError) as error:
                        conn.execute("ROLLBACK TO journal_line")
                        refused.append(f"{record.get('kind')} line: {error}")
                    conn.execute("RELEASE journal_line")
                if row is not None and chunk.offset == row[0]:
                    return applied, skipped
                conn.execute(_UPSERT_JOURNAL, {"path": key, "offset": chunk.offset,
                                               "lines": len(chunk.records) + len(chunk.bad_lines), "bad": len(refused)})
                skipped += refused
            if not chunk.records and not chunk.bad_lines:
                return applied, skipped

    # -- eval jobs ----------------------------------------------------------------------------------

    def create_eval_job(self: StoreCore, name: str, folder: str | os.PathLike[str], command: list[str]) -> EvalJob:
        """Record an eval about to be submitted to Slurm (queued, no job id yet)."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM eval_jobs WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"an eval job named {name} already exists")
            job_id = conn.execute("INSERT INTO eval_jobs (name, status, folder, command, created) VALUES (?, 'queued', ?, ?, ?)",
                                  (name, str(Path(folder).resolve()), json.dumps(command), time.time())).lastrowid
        return self.get_eval_job(job_id)

    def update_eval_job(self: StoreCore, job_ref: int | str, **changes: Any) -> EvalJob:
        """Set some of status, reason, job_id, nodes, started, ended of an eval job (a field not named stays)."""
        unknown = set(changes) - set(_EVAL_JOB_FIELDS)
        if unknown:
            raise StoreError(f"unknown eval job fields {sorted(unknown)}; expected some of {list(_EVAL_JOB_FIELDS)}")
        if "status" in changes and changes["status"] not in EVAL_JOB_STATUSES:
            raise StoreError(f"eval job status {changes['status']!r}: use one of {', '.join(EVAL_JOB_STATUSES)}")
        job = self.get_eval_job(job_ref)
        args = {"id": job.id}
        for name in _EVAL_JOB_FIELDS:
            args[name], args[f"set_{name}"] = changes.get(name), name in changes
        with self._write() as conn:
            conn.execute(_UPDATE_EVAL_JOB, args)
        return self.get_eval_job(job.id)

    def link_eval_to_job(self: StoreCore, eval_id: int, job_ref: int | str) -> None:
        """Mark eval row `eval_id` as recorded by this eval job."""
        job = self.get_eval_job(job_ref)
        with self._write() as conn:
            conn.execute("UPDATE evals SET eval_job_id = ? WHERE id = ?", (job.id, int(eval_id)))

    def get_eval_job(self: StoreCore, job_ref: int | str) -> EvalJob:
        """An eval job by id or name; StoreError if unknown."""
        by_id = isinstance(job_ref, int)
        with self._read() as conn:
            row = conn.execute("SELECT * FROM eval_jobs WHERE id = :id OR name = :name",
                               {"id": job_ref if by_id else None, "name": None if by_id else str(job_ref)}).fetchone()
            if row is None:
                raise StoreError(f"no eval job {job_ref} in {self.path}")
            return _eval_job(conn, row)

    def list_eval_jobs(self: StoreCore, status: str | None = None) -> list[EvalJob]:
        """Eval jobs, newest first (of one status when given)."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM eval_jobs WHERE (:status IS NULL OR status = :status) "
                                "ORDER BY created DESC, id DESC", {"status": status}).fetchall()
            return [_eval_job(conn, row) for row in rows]


def _eval_job(conn: sqlite3.Connection, row: Mapping[str, Any]) -> EvalJob:
    ids = [eval_id for (eval_id,) in conn.execute("SELECT id FROM evals WHERE eval_job_id = ? ORDER BY id", (row["id"],))]
    return EvalJob(id=row["id"], name=row["name"], status=row["status"], folder=row["folder"],
                   command=json.loads(row["command"] or "[]"), reason=row["reason"], job_id=row["job_id"],
                   nodes=row["nodes"], created=row["created"], started=row["started"], ended=row["ended"], eval_ids=ids)

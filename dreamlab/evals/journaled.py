"""An eval job's store: what the harness records goes to the job folder's journal, never to SQLite.

`dreamlab eval --slurm` runs the eval as a Slurm job on a node that may not see the submitting host's
disk. The harness talks to this class as it talks to RunStore (create_or_resume_eval, record_eval_samples,
done_sample_indices, eval_samples, finish_eval); each call appends a record to the journal, which the
submitting host reads into its store (`dreamlab.store.ingest.apply_eval_job_record`). A rerun of the job
in the same folder (Slurm's requeue) replays its own journal first, so it resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dreamlab.store.errors import StoreError
from dreamlab.store.evals import settings_key
from dreamlab.store.journal import JOURNAL_NAME, Journal, read_from
from dreamlab.store.records import EvalRecord

class JournalEvalStore:
    """The eval methods of RunStore, recorded as journal lines in `folder`."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        """Replay the folder's journal (a rerun resumes), then append to it."""
        self.path = Path(folder) / JOURNAL_NAME
        self._settings: dict[str, dict[str, Any]] = {}
        self._samples: dict[str, dict[int, dict[str, Any]]] = {}
        self._ended: dict[str, tuple[str, dict[str, Any]]] = {}
        for record in read_from(self.path, 0).records:
            self._replay(record)
        self.journal = Journal(self.path)

    def _replay(self, record: dict[str, Any]) -> None:
        kind, key = record["kind"], record.get("key")
        if kind == "eval":
            self._settings[key] = record["settings"]
            self._samples.setdefault(key, {})
            if self._ended.get(key, ("",))[0] != "completed":
                self._ended.pop(key, None)
        elif kind == "samples" and key in self._settings:
            self._samples[key].update({row["idx"]: row for row in record["rows"]})
        elif kind == "eval_finish" and key in self._settings:
            self._ended[key] = (record["status"], record.get("summary") or {})

    def job_started(self) -> None:
        """Say that the job runs, where (the node list Slurm gave it)."""
        self.journal.write("started", host=socket.gethostname(), pid=os.getpid(),
                           nodes=os.environ.get("SLURM_JOB_NODELIST") or socket.gethostname())

    def describe_job(self, *, run_id: int | None, model: str, task: str, grid_id: str, n_total: int) -> None:
        """Say what the job evaluates: its model, task, grid (its eval rows' grid_id) and samples x cells."""
        self.journal.write("job", run_id=run_id, model=model, task=task, grid_id=grid_id, n_total=n_total)

    def job_ended(self, status: str, reason: str | None = None) -> None:
        """Say how the job ended (completed, failed, stopped) and close the journal."""
        self.journal.write("finish", status=status, reason=reason)
        self.journal.close()

    def create_or_resume_eval(self, settings: Mapping[str, Any]) -> EvalRecord:
        """The cell's record: new (running), or as this job's journal left it (completed cells stay completed)."""
        if not settings.get("task"):
            raise StoreError("an eval needs a task")
        key = settings_key(settings)
        plain = json.loads(json.dumps(dict(settings), default=str))
        if self._ended.get(key, ("",))[0] != "completed":
            self._record("eval", key=key, settings=plain)
        return self._eval(key)

    def record_eval_samples(self, eval_id: Any, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append finished samples (by idx; a rewrite replaces)."""
        self._record("samples", key=self._key(eval_id), rows=[dict(row) for row in rows])

    def done_sample_indices(self, eval_id: Any) -> set[int]:
        """The idx of every sample this job has recorded for the cell."""
        return set(self._samples[self._key(eval_id)])

    def eval_samples(self, eval_id: Any) -> list[dict[str, Any]]:
        """The cell's recorded samples by idx."""
        samples = self._samples[self._key(eval_id)]
        return [samples[idx] for idx in sorted(samples)]

    def finish_eval(self, eval_id: Any, status: str, summary: Mapping[str, Any] | None = None) -> EvalRecord:
        """Record the cell's ending and summary."""
        plain = json.loads(json.dumps(dict(summary or {}), default=str))
        key = self._key(eval_id)
        self._record("eval_finish", key=key, status=status, summary=plain)
        return self._eval(key)

    def _record(self, kind: str, **fields: Any) -> None:
        self.journal.write(kind, **fields)
        self._replay({"kind": kind, "time": time.time(), **fields})

    def _key(self, eval_id: Any) -> str:
        key = eval_id.settings_key if isinstance(eval_id, EvalRecord) else str(eval_id)
        if key not in self._settings:
            raise StoreError(f"no eval with settings key {key} in {self.path}")
        return key

    def _eval(self, key: str) -> EvalRecord:
        """The cell as an EvalRecord whose id is its settings key (the store gives it a number when it ingests it)."""
        settings = self._settings[key]
        status, summary = self._ended.get(key, ("running", {}))
        samples = self._samples[key]
        values = {**settings, "n_done": len(samples), "n_correct": sum(bool(row.get("correct")) for row in samples.values()),
                  **summary}
        return EvalRecord(id=key, status=status, settings_key=key, **values)

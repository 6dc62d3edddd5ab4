"""Where rank 0 sends its run records: the store at once (a local run), or the run folder's journal (a Slurm job,
which must not write the store: the submitting host reads the journal in, see `dreamlab.store.ingest`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dreamlab.store.journal import JOURNAL_NAME, Journal


class RecordSink(Protocol):
    """Takes run records: `write("metrics", step=3, values={...})`, ..., then `close()`."""

    def write(self, kind: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


class StoreSink:
    """Run records applied to the store as they come (the same writes ingestion makes from a journal)."""

    def __init__(self, db: str | Path, run_id: int) -> None:
        """Open the store at `db` for run `run_id`."""
        from dreamlab.store import RunStore

        self.store = RunStore(db)
        self.run_id = run_id

    def write(self, kind: str, **fields: Any) -> None:
        """Apply one record now."""
        from dreamlab.store.ingest import apply_run_record

        apply_run_record(self.store, self.run_id, {"kind": kind, "time": time.time(), **fields})

    def close(self) -> None:
        """Close the store."""
        self.store.close()


def sink_factory(run_dir: Path, db: str | None, run_id: int | None, *,
                 journal: bool) -> Callable[[], RecordSink] | None:
    """What opens a sink for this run (each thread opens its own): the journal, the store, or None (nothing to record)."""
    if journal:
        return lambda: Journal(run_dir / JOURNAL_NAME)
    if db and run_id is not None:
        return lambda: StoreSink(db, run_id)
    return None

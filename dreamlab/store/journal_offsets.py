"""The run store's side of Slurm jobs' journals: how far each journal has been read in, each line applied once."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from dreamlab.store.errors import StoreError
from dreamlab.store.journal import read_from

INGEST_BATCH_LINES = 500  # journal lines a transaction (a backlog must not hold the write lock for long)
_UPSERT_JOURNAL = """INSERT INTO journals (path, offset, lines, bad_lines) VALUES (:path, :offset, :lines, :bad)
    ON CONFLICT (path) DO UPDATE SET offset = :offset, lines = lines + :lines, bad_lines = bad_lines + :bad"""


class StoreCore(Protocol):
    """What the job methods need of the store that holds them (RunStore)."""

    path: Path

    def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...


class JournalStoreMixin:
    """Journal offsets of a StoreCore and the ingestion of a journal's new lines; mixed into RunStore."""

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

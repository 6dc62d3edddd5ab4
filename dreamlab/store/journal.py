"""A job's append-only journal: what a Slurm job records in its own folder instead of writing the store.

SQLite must not be written over a network file system, and a compute node may not see the submitting
host's disk at all: a job appends JSON lines (`{"kind": ..., "time": ..., ...}`) to `journal.jsonl` in
its folder on the shared `runs/`, and the submitting host reads them into the store (`dreamlab.store.ingest`).
Each line is one `write` on an O_APPEND descriptor; a line cut short by a crash has no newline, and
the next writer starts on a fresh line, so a torn line is one unreadable line, never a merged one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL_NAME = "journal.jsonl"


class Journal:
    """Appends records to one journal file; safe to share between the threads of one process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open `path` for appending (created if missing), ending a torn last line first."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        if not _ends_with_newline(self.path):
            os.write(self._fd, b"\n")

    def write(self, kind: str, **fields: Any) -> None:
        """Append one record `{"kind": kind, "time": now, **fields}` as one line."""
        record = {"kind": kind, "time": time.time(), **fields}
        line = (json.dumps(record, default=str) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        """Flush the file to disk and close it."""
        with self._lock:
            if self._fd >= 0:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass  # a file system without fsync: the lines are written all the same
                os.close(self._fd)
                self._fd = -1


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


@dataclass(frozen=True)
class Chunk:
    """The complete lines found after an offset: their records (in order), the unreadable ones, the new offset."""

    records: list[dict[str, Any]]
    bad_lines: list[str]
    offset: int


def read_from(path: str | os.PathLike[str], offset: int, max_lines: int | None = None) -> Chunk:
    """The complete lines of `path` after byte `offset` (at most `max_lines` of them); a last line without its
    newline is left for the next read."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return Chunk([], [], offset)
    records, bad, end = [], [], 0
    while max_lines is None or len(records) + len(bad) < max_lines:
        newline = data.find(b"\n", end)
        if newline < 0:
            break  # no line is complete after `end` (yet)
        raw, end = data[end:newline], newline + 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("kind"), str):
            records.append(record)
        else:
            bad.append(raw[:200].decode(errors="replace"))
    return Chunk(records, bad, offset + end)

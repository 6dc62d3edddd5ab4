"""Ad-hoc SQL against the run store that cannot write: mode=ro, query_only and an authorizer."""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any

from dreamlab.store.errors import StoreError
from dreamlab.store.schema import check_sqlite_file

# What one SELECT needs; everything else (writes, ATTACH, PRAGMA assignments, DDL) is denied.
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_READ_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                 "foreign_key_list"}


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def query_readonly(path: str | os.PathLike[str], sql: str, *, max_rows: int | None = None,
                   timeout_s: float = 10.0) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of one read-only statement; StoreError with a one-line message otherwise."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no run store at {path}")
    check_sqlite_file(path)
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None)
    try:
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master")  # a truncated file fails here, not as a refused query
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot open run store {path}: {error}") from None
        conn.execute("PRAGMA query_only = 1")
        conn.set_authorizer(_authorize)
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cursor = conn.execute(sql)
            rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows)
        except (sqlite3.Error, sqlite3.Warning) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            if "interrupted" in message and time.monotonic() > deadline:
                message = f"query stopped after {timeout_s:g} s"
            raise StoreError(f"query refused (read-only store): {message}") from None
        columns = [column[0] for column in cursor.description or ()]
        return columns, rows
    finally:
        conn.close()

"""A store left at an older schema version, for the tests of the migrations after it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dreamlab.store.schema import migrate


def store_at_version(path: Path, version: int, *statements: str | tuple[str, Sequence[Any]]) -> Path:
    """Create `path` migrated only to `version` and run `statements` (SQL, or SQL and its parameters) on it."""
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=version) == version
    for statement in statements:
        sql, parameters = (statement, ()) if isinstance(statement, str) else statement
        conn.execute(sql, parameters)
    conn.close()
    return path

"""The Textual console (`dreamlab` with no command): the only package that imports Textual."""

from __future__ import annotations

import sys
from pathlib import Path

from dreamlab.store import RunStore, StoreError


def open_store(db: Path) -> RunStore:
    """The store at `db` (created if missing); one `error:` line on stderr and exit code 2 if it cannot open."""
    try:
        return RunStore(db)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run_console(db: Path) -> None:
    """Open the console on the store at `db` until the user quits."""
    from dreamlab.tui.app import build_app

    open_store(db).close()  # a bad store is refused on one line before the console takes the screen
    build_app(db).run()

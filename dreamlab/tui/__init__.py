"""The Textual console (`dreamlab` with no command): the only package that imports Textual."""

from __future__ import annotations

from pathlib import Path


def run_console(db: Path) -> None:
    """Open the console on the store at `db` until the user quits."""
    from dreamlab.tui.app import build_app

    build_app(db).run()

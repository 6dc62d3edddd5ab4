"""Option types shared by command groups (huggingface_hub style `Annotated` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dreamlab.store import DB_ENV, default_db_path

DbOption = Annotated[
    Path | None,
    typer.Option("--db", envvar=DB_ENV, show_envvar=True, show_default=False,
                 help="The run store's SQLite file (default: runs/dreamlab.db under the current folder)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def resolve_db(db: Path | None) -> Path:
    """--db, else $DREAMLAB_DB, else runs/dreamlab.db (typer already applied the flag > variable order)."""
    return db if db is not None else default_db_path()

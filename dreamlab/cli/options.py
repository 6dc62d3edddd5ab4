"""Option types shared by command groups (huggingface_hub style `Annotated` aliases)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from dreamlab.store import DB_ENV, RunStore, StoreError, default_db_path

DbOption = Annotated[
    Path | None,
    typer.Option("--db", envvar=DB_ENV, show_envvar=True, show_default=False,
                 help="The run store's SQLite file (default: runs/dreamlab.db under the current folder)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def resolve_db(db: Path | None) -> Path:
    """--db, else $DREAMLAB_DB, else runs/dreamlab.db (typer already applied the flag > variable order)."""
    return db if db is not None else default_db_path()


def open_existing_store(db: Path | None, hint: str = "pass --db or set DREAMLAB_DB") -> RunStore:
    """The store resolve_db names, refusing (StoreError, with `hint`) one that does not exist yet; Slurm jobs'
    journals that grew since the last reader are read in first."""
    from dreamlab.store.ingest import ingest_all

    path = resolve_db(db)
    if not path.is_file():
        raise StoreError(f"no run store at {path} ({hint})")
    store = RunStore(path)
    ingest_all(store)
    return store


# Slurm: for train and sweep each option sets a recipe key of the trainer section (so a recipe can hold it too).
_SLURM = "Slurm"
SlurmFlag = Annotated[bool, typer.Option("--slurm", help="Submit to Slurm with sbatch (recipes: trainer.launcher=slurm).",
                                         rich_help_panel=_SLURM)]
PartitionOption = Annotated[str | None, typer.Option(help="Partition (recipes: trainer.slurm_partition).", rich_help_panel=_SLURM)]
NodesOption = Annotated[int | None, typer.Option(min=1, help="Nodes (trainer.nnodes).", rich_help_panel=_SLURM)]
GpusPerNodeOption = Annotated[int | None, typer.Option(
    min=0, help="GPUs per node (recipes: trainer.slurm_gpus_per_node, and the processes per node when above 0).",
    rich_help_panel=_SLURM)]
TimeOption = Annotated[str | None, typer.Option("--time", help="Time limit, e.g. 1-00:00:00 (recipes: trainer.slurm_time).",
                                                rich_help_panel=_SLURM)]
AccountOption = Annotated[str | None, typer.Option(help="Account to charge (recipes: trainer.slurm_account).",
                                                   rich_help_panel=_SLURM)]
SlurmArgOption = Annotated[list[str] | None, typer.Option(
    help="Another sbatch option as KEY=VALUE (repeatable; recipes: trainer.slurm_args).", rich_help_panel=_SLURM)]
RequeueOption = Annotated[bool, typer.Option("--requeue", help="Resubmit by itself when stopped at its time limit "
                                             "(trainer.slurm_requeue).", rich_help_panel=_SLURM)]


def slurm_overrides(*, slurm: bool, partition: str | None, nodes: int | None, gpus_per_node: int | None,
                    time_limit: str | None, account: str | None, slurm_args: list[str] | None,
                    requeue: bool) -> list[str]:
    """The Slurm options as recipe overrides (trainer section)."""
    overrides = ["trainer.launcher=slurm"] if slurm else []
    for key, value in (("trainer.slurm_partition", partition), ("trainer.nnodes", nodes),
                       ("trainer.slurm_gpus_per_node", gpus_per_node), ("trainer.slurm_time", time_limit),
                       ("trainer.slurm_account", account)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if gpus_per_node:
        overrides.append(f"trainer.nproc_per_node={gpus_per_node}")
    if slurm_args:
        overrides.append("trainer.slurm_args=" + json.dumps(list(slurm_args)))
    if requeue:
        overrides.append("trainer.slurm_requeue=true")
    return overrides


@contextmanager
def store_errors() -> Iterator[None]:
    """Store errors become one `error:` line and exit code 2."""
    try:
        yield
    except StoreError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None

"""`dreamlab sweep`: queue a grid of runs under one sweep id and run them detached: one after another, or as many at
once as there are free GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dreamlab.cli.options import (
    AccountOption,
    DbOption,
    GpusPerNodeOption,
    NodesOption,
    PartitionOption,
    RequeueOption,
    SlurmArgOption,
    SlurmFlag,
    TimeOption,
    resolve_db,
    slurm_overrides,
)
from dreamlab.config import RecipeError, split_recipe_args
from dreamlab.gpu import free_devices
from dreamlab.train import slurm as slurm_jobs
from dreamlab.train.sweep import drive, parse_gpus, plan
from dreamlab.store import RunStore
from dreamlab.store.errors import StoreError


def sweep(
    args: Annotated[list[str], typer.Argument(
        help="[RECIPE] key=v1,v2 ...: every combination of the comma lists becomes a run.")],
    name: Annotated[str | None, typer.Option(help="Run-name prefix (runs are PREFIX-1, PREFIX-2, ...).")] = None,
    foreground: Annotated[bool, typer.Option(help="Run the queue attached instead of detached.")] = False,
    gpus: Annotated[str, typer.Option(help="GPUs to run on at once, each run on its own trainer.nproc_per_node of "
                                      "them: auto (every GPU free now), none (one run at a time), or 0,1,2,3.")] = "auto",
    slurm: SlurmFlag = False,
    partition: PartitionOption = None,
    nodes: NodesOption = None,
    gpus_per_node: GpusPerNodeOption = None,
    time_limit: TimeOption = None,
    account: AccountOption = None,
    slurm_arg: SlurmArgOption = None,
    requeue: RequeueOption = False,
    db: DbOption = None,
) -> None:
    """Queue a grid (e.g. optim.lr=1e-6,2e-6,5e-6 trainer.total_epochs=2,3) as runs sharing a sweep id; with
    --slurm every point is its own Slurm job and Slurm does the queueing."""
    from dreamlab.train.launcher import check_before_launch, environment_meta, write_run_spec  # torch

    console = Console()
    store_path = resolve_db(db)
    recipe_name, words = split_recipe_args(args)
    words += slurm_overrides(slurm=slurm, partition=partition, nodes=nodes, gpus_per_node=gpus_per_node,
                             time_limit=time_limit, account=account, slurm_args=slurm_arg, requeue=requeue)
    sweep_id = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    try:
        points = plan(recipe_name, words)
        for _, recipe in points:
            check_before_launch(recipe)
        launchers = {recipe.trainer.launcher for _, recipe in points}
        if len(launchers) > 1:
            raise RecipeError("trainer.launcher: a sweep runs every point with the same launcher (local or slurm)")
        on_slurm = launchers == {"slurm"}
        if on_slurm and foreground:
            raise RecipeError("--foreground drives a local queue; Slurm queues the points of a --slurm sweep itself")
        devices = [] if on_slurm else _devices(gpus, [recipe for _, recipe in points])
        if on_slurm and slurm_jobs.available():
            raise RecipeError(f"trainer.launcher=slurm: {slurm_jobs.available()}")
        store = RunStore(store_path)
        meta = environment_meta()
        for index, (combo, recipe) in enumerate(points, start=1):
            run = store.create_run(name=f"{name}-{index}" if name else None, recipe=recipe.to_dict(), meta=meta,
                                   sweep_id=sweep_id)
            write_run_spec(Path(run.run_dir), recipe, run.id, None if on_slurm else store_path.resolve())
            if on_slurm:
                run = slurm_jobs.submit(store, run, recipe)
            job = f" (Slurm job {run.job_id})" if on_slurm else ""
            console.print(f"queued [bold]{run.name}[/bold]{job}: {' '.join(combo) or '(recipe as is)'}")
    except (RecipeError, StoreError, OSError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if on_slurm:
        console.print(f"sweep [bold]{sweep_id}[/bold]: {len(points)} Slurm jobs")
        console.print(f"  compare: dreamlab runs compare --sweep {sweep_id}")
        return
    if devices:
        per_run = max(recipe.trainer.nproc_per_node for _, recipe in points)
        console.print(f"GPUs {','.join(map(str, devices))}: up to {len(devices) // per_run} runs at once")
    if foreground:
        raise typer.Exit(drive(store_path.resolve(), sweep_id, devices))
    with open(store.runs_dir / f"{sweep_id}.log", "ab") as log:  # the driver keeps its own descriptor
        driver = subprocess.Popen(
            [sys.executable, "-m", "dreamlab.train.sweep", "--db", str(store_path.resolve()), "--sweep-id", sweep_id,
             "--gpus", ",".join(map(str, devices))],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    console.print(f"sweep [bold]{sweep_id}[/bold]: {len(points)} runs, driver pid {driver.pid} (detached)")
    console.print(f"  compare: dreamlab runs compare --sweep {sweep_id}")


def _devices(text: str, recipes: list) -> list[int]:
    """The GPUs the sweep runs on at once ([] = one run at a time); refuses points that cannot share them."""
    if text == "none":
        return []
    devices = free_devices() if text == "auto" else parse_gpus(text)
    if not devices:
        return []  # no GPU (or none free): the runs take turns
    for recipe in recipes:
        t = recipe.trainer
        if t.nnodes > 1:
            raise RecipeError(f"trainer.nnodes={t.nnodes}: a multi-node run cannot share this node's GPUs with "
                              "others; run the sweep with --gpus none")
        if t.nproc_per_node > len(devices):
            raise RecipeError(f"trainer.nproc_per_node={t.nproc_per_node} needs more GPUs than the sweep has "
                              f"({','.join(map(str, devices))})")
    return devices

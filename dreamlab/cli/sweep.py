"""`dreamlab sweep`: queue a grid of runs under one sweep id and run them detached: one after another, or as many at
once as there are free GPUs."""

from __future__ import annotations

import os
import shlex
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
from dreamlab.train.sweep import SweepEval, drive, evals_argument, parse_gpus, plan
from dreamlab.store import RunStore
from dreamlab.store.errors import StoreError


def sweep(
    args: Annotated[list[str] | None, typer.Argument(
        help="[RECIPE] key=v1,v2 ...: every combination of the comma lists becomes a run.")] = None,
    evals: Annotated[list[str] | None, typer.Option("--eval", help="A `dreamlab eval` command line to queue too "
                                                    "(repeatable): with --model or --run it runs as given; without, "
                                                    "it evaluates each run of the sweep when the run completes.")] = None,
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
    """Queue a grid (e.g. optim.lr=1e-6,2e-6,5e-6 trainer.total_epochs=2,3) as runs sharing a sweep id, and evals
    (--eval); with --slurm every point is its own Slurm job and Slurm does the queueing."""
    from dreamlab.train.launcher import check_before_launch, environment_meta, write_run_spec  # torch

    console = Console()
    store_path = resolve_db(db)
    recipe_name, words = split_recipe_args(args or [])
    words += slurm_overrides(slurm=slurm, partition=partition, nodes=nodes, gpus_per_node=gpus_per_node,
                             time_limit=time_limit, account=account, slurm_args=slurm_arg, requeue=requeue)
    sweep_id = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    try:
        if not args and not evals:
            raise RecipeError("nothing to sweep: give [RECIPE] key=a,b ... and / or --eval \"EVAL OPTIONS\"")
        queued_evals = [sweep_eval(text) for text in evals or []]
        points = plan(recipe_name, words) if args else []
        if not points and any(e.after_each_run for e in queued_evals):
            raise RecipeError("an --eval without --model or --run evaluates the sweep's runs, and this sweep has none")
        for _, recipe in points:
            check_before_launch(recipe)
        launchers = {recipe.trainer.launcher for _, recipe in points}
        if len(launchers) > 1:
            raise RecipeError("trainer.launcher: a sweep runs every point with the same launcher (local or slurm)")
        on_slurm = launchers == {"slurm"} or (slurm and not points)
        if on_slurm and queued_evals:
            raise RecipeError("--eval queues evals on this machine's driver; a Slurm sweep has none "
                              "(submit evals with `dreamlab eval --slurm`)")
        if on_slurm and foreground:
            raise RecipeError("--foreground drives a local queue; Slurm queues the points of a --slurm sweep itself")
        devices = [] if on_slurm else _devices(gpus, [recipe for _, recipe in points], queued_evals)
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
    for queued in queued_evals:
        target = "each run of the sweep when it completes" if queued.after_each_run else "as given"
        console.print(f"queued eval ({target}): {shlex.join(queued.args)}")
    if devices:
        per_job = max([recipe.trainer.nproc_per_node for _, recipe in points] + [e.nproc for e in queued_evals])
        console.print(f"GPUs {','.join(map(str, devices))}: up to {len(devices) // per_job} "
                      f"{'jobs' if queued_evals else 'runs'} at once")
    if foreground:
        raise typer.Exit(drive(store_path.resolve(), sweep_id, devices, evals=queued_evals))
    with open(store.runs_dir / f"{sweep_id}.log", "ab") as log:  # the driver keeps its own descriptor
        driver = subprocess.Popen(
            [sys.executable, "-m", "dreamlab.train.sweep", "--db", str(store_path.resolve()), "--sweep-id", sweep_id,
             "--gpus", ",".join(map(str, devices)), "--evals", evals_argument(queued_evals)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    console.print(f"sweep [bold]{sweep_id}[/bold]: {len(points)} runs, {len(queued_evals)} evals, driver pid "
                  f"{driver.pid} (detached)")
    console.print(f"  compare: dreamlab runs compare --sweep {sweep_id}")


# Eval options a sweep sets itself, or that would take the eval off this node's GPUs.
_SWEEP_OWNS = ("--db", "--slurm", "--nnodes", "--rdzv-endpoint", "--help")


def sweep_eval(text: str) -> SweepEval:
    """One --eval: its options parsed and checked as `dreamlab eval` checks them; ValueError naming the bad part."""
    from dreamlab.cli.eval import app as eval_app
    from dreamlab.cli.eval import check_options
    from dreamlab.evals.grid import SAMPLER_TYPES
    from dreamlab.evals.tasks import TaskError

    try:
        args = shlex.split(text)
        owned = [flag for flag in _SWEEP_OWNS if any(arg == flag or arg.startswith(flag + "=") for arg in args)]
        if owned:
            raise ValueError(f"{owned[0]} is the sweep's to set" if owned[0] != "--help" else "--help is not an eval")
        ctx = typer.main.get_command(eval_app).make_context("eval", list(args))
    except (ValueError, typer.TyperException) as error:  # shlex, or typer's parser (its own vendored click)
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        raise ValueError(f"--eval {text!r}: {message}") from None
    if ctx.args or getattr(ctx, "_protected_args", None):
        raise ValueError(f"--eval {text!r}: give `dreamlab eval` options only (not score / compare / frontier)")
    params = ctx.params
    try:
        check_options(params["task"], {k: v for k, v in params.items() if k in SAMPLER_TYPES}, params["template"],
                      params["shots"], params["limit"], params["batch_size"], params["question_field"],
                      params["answer_field"], processes=params["nproc_per_node"] * params["nnodes"])
    except (ValueError, TaskError) as error:
        raise ValueError(f"--eval {text!r}: {error}") from None
    if params["nproc_per_node"] < 1:
        raise ValueError(f"--eval {text!r}: --nproc-per-node must be >= 1")
    return SweepEval(tuple(args), after_each_run=params["model"] is None and params["run"] is None,
                     nproc=params["nproc_per_node"])


def _devices(text: str, recipes: list, evals: list[SweepEval] = ()) -> list[int]:
    """The GPUs the sweep runs on at once ([] = one job at a time); refuses jobs that cannot share them."""
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
    for queued in evals:
        if queued.nproc > len(devices):
            raise RecipeError(f"--eval {shlex.join(queued.args)}: --nproc-per-node {queued.nproc} needs more GPUs than "
                              f"the sweep has ({','.join(map(str, devices))})")
    return devices

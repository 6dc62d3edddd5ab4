"""`dreamlab train`: validate a recipe, record the run, and start it detached (or attached)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
from dreamlab.config import RecipeError, load_recipe, recipe_from_dict, split_recipe_args
from dreamlab.store import RunStore
from dreamlab.store.errors import StoreError
from dreamlab.train import STOP_FILE

STEP_LINE = re.compile(r"^step (\d+) (.*)$")


def train(
    args: Annotated[list[str] | None, typer.Argument(
        help="[RECIPE] [section.key=value ...]: a recipe name (dreamlab/recipes) or YAML path, then overrides.",
    )] = None,
    name: Annotated[str | None, typer.Option(help="Run name (letters, digits, - _ .); generated if absent.")] = None,
    foreground: Annotated[bool, typer.Option(help="Stay attached: stream the log and a progress bar.")] = False,
    resume: Annotated[str | None, typer.Option(
        help="Continue RUN from its newest complete checkpoint; overrides may change only its layout "
             "(trainer.nproc_per_node, trainer.nnodes, trainer.rdzv_endpoint, micro batch, accumulation).",
    )] = None,
    estimate: Annotated[bool, typer.Option("--estimate", help="Print the per-GPU memory estimate and exit.")] = False,
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
    """Train a model with Dream's diffusion SFT (no recipe: the tiny model on the built-in task, CPU)."""
    from dreamlab.train.launcher import (  # torch
        launch,
        memory_estimate,
        relayout,
        start_process,
        submit,
        torchrun_command,
        write_run_spec,
    )

    console = Console()
    args = [*(args or []), *slurm_overrides(slurm=slurm, partition=partition, nodes=nodes, gpus_per_node=gpus_per_node,
                                             time_limit=time_limit, account=account, slurm_args=slurm_arg,
                                             requeue=requeue)]
    if estimate:
        try:
            recipe = load_recipe(*split_recipe_args(args))
            parts = memory_estimate(recipe)
        except (RecipeError, OSError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        table = Table(title=f"estimated memory per GPU: {recipe.model.partial_pretrain}, micro batch "
                            f"{recipe.data.micro_batch_size_per_gpu}, length {recipe.data.max_length}, "
                            f"{recipe.trainer.nproc_per_node * recipe.trainer.nnodes} processes, checkpointing "
                            f"{'on' if recipe.model.enable_gradient_checkpointing else 'off'}")
        table.add_column("part")
        table.add_column("GiB", justify="right")
        for part, gib in parts.parts.items():
            table.add_row(part, f"{gib:.2f}")
        table.add_row("[bold]total[/bold]", f"[bold]{parts.total_gb:.2f}[/bold]")
        console.print(table)
        return
    store_path = resolve_db(db)
    try:
        store = RunStore(store_path)
        if resume:
            run = store.get_run(resume)
            if run.launcher == "slurm":  # the last job's final lines (its ending, its checkpoint) first
                from dreamlab.store.ingest import ingest_run

                ingest_run(store, run)
                run = store.get_run(run.id)
            run_dir = Path(run.run_dir)
            recipe = recipe_from_dict(json.loads((run_dir / "run.json").read_text())["recipe"])
            if not slurm and recipe.trainer.launcher == "slurm":  # without --slurm, a resume runs here
                args.append("trainer.launcher=local")
            changes = relayout(recipe, args)
            on_slurm = recipe.trainer.launcher == "slurm"
            if changes:
                write_run_spec(run_dir, recipe, run.id, None if on_slurm else store_path.resolve())
                store.record_event(run.id, "relayout", ", ".join(changes))
            if on_slurm:
                refuse_foreground(foreground)
                from dreamlab.train import slurm as slurm_jobs

                run = slurm_jobs.submit(store, run, recipe)
                process = None
            else:
                (run_dir / STOP_FILE).unlink(missing_ok=True)  # a Slurm job's time-limit request, answered already
                command = torchrun_command(recipe, run_dir, store_path.resolve(), resume=True)
                process = start_process(command, run_dir, capture=foreground)
                store.mark_started(run.id, pid=process.pid, pgid=process.pid)
        else:
            recipe = load_recipe(*split_recipe_args(args))
            if recipe.trainer.launcher == "slurm":
                refuse_foreground(foreground)
                run, process = submit(store, store_path, recipe, name=name), None
            else:
                run, process = launch(store, store_path, recipe, name=name, capture=foreground)
            run_dir = Path(run.run_dir)
    except (RecipeError, StoreError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if process is None:
        console.print(f"submitted run [bold]{run.name}[/bold] as Slurm job {run.job_id} (queued)")
        console.print(f"  script: {run_dir / 'slurm.sbatch'}")
        console.print(f"  log:    tail -f {run_dir / 'train.log'}")
        console.print(f"  status: dreamlab runs show {run.name}")
        console.print(f"  stop:   dreamlab runs stop {run.name}")
        return
    if not foreground:
        console.print(f"started run [bold]{run.name}[/bold] (process group {process.pid}), detached")
        console.print(f"  log:    tail -f {run_dir / 'train.log'}")
        console.print(f"  status: dreamlab runs show {run.name}")
        console.print(f"  stop:   dreamlab runs stop {run.name}")
        return
    final = follow_to_end(store, run, process, console)
    raise typer.Exit(0 if final.status in ("completed", "stopped") else 1)


def refuse_foreground(foreground: bool) -> None:
    """--foreground follows a local process; a Slurm job is followed through its log and the store."""
    if foreground:
        raise RecipeError("--foreground follows a run started here; a Slurm job's output is in its train.log")


def follow_to_end(store: RunStore, run, process, console: Console):
    """Stay attached to a started run (log tee, progress bar, Ctrl-C) and return its recorded ending."""
    code = _follow(process, Path(run.run_dir), console)
    final = store.get_run(run.id)
    if final.status == "running":  # the workers died before recording an ending
        store.finish(run.id, "failed", exit_reason=f"torchrun exited with code {code}")
        final = store.get_run(run.id)
    console.print(f"run [bold]{run.name}[/bold]: {final.status}" + (f" ({final.exit_reason})" if final.exit_reason else ""))
    return final


def _follow(process, run_dir: Path, console: Console) -> int:
    """Tee the run's output into train.log, draw a progress bar from its step lines, pass on Ctrl-C."""
    def forward_interrupt(signum, frame):
        os.killpg(process.pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGINT, forward_interrupt)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    try:
        with open(run_dir / "train.log", "ab", buffering=0) as log, Progress(*columns, console=console, transient=False,
                                                                  disable=not console.is_terminal) as bars:
            task = bars.add_task("training", total=None, loss="")
            log_error = None
            for raw in process.stdout:
                if log_error is None:
                    try:
                        log.write(raw)
                        log.flush()
                    except OSError as error:  # a full disk must not stop us following the run to its end
                        log_error = error
                        bars.console.print(f"train.log: cannot write ({error.strerror or error}); "
                                           "output continues here only", markup=False, highlight=False)
                line = raw.decode(errors="replace").rstrip()
                match = STEP_LINE.match(line)
                if match:
                    values = dict(item.split("=", 1) for item in match.group(2).split() if "=" in item)
                    if "trainer/total_steps" in values:
                        bars.update(task, total=int(float(values["trainer/total_steps"])))
                    loss = values.get("train/loss")
                    bars.update(task, completed=int(match.group(1)), loss=f"loss {loss}" if loss else "")
                    if not console.is_terminal:
                        print(line, flush=True)
                elif line:
                    bars.console.print(line, markup=False, highlight=False)
            return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.stdout.flush()

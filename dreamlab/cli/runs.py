"""`dreamlab runs ...`: list, show, compare, stop and remove runs; read-only SQL on the run store."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dreamlab.cli.options import DbOption, JsonOption, open_existing_store, resolve_db, store_errors
from dreamlab.display import STATUS_STYLES
from dreamlab.display import fmt_duration as _duration
from dreamlab.display import fmt_number as _number
from dreamlab.display import fmt_value as _text
from dreamlab.display import fmt_when as _when
from dreamlab.store import Run, RunStore, StoreError
from dreamlab.store.health import Health
from dreamlab.store.ingest import ingest_run, ingest_runs
from dreamlab.store.records import TERMINAL_STATUSES
from dreamlab.store.params import flatten
from dreamlab.train.processes import assess, stop_run
from dreamlab.train.slurm import watched_jobs

app = typer.Typer(help="Runs in the run store: list, show, compare, stop, remove, query.", no_args_is_help=True)

# Recipe highlights for the list: the first dotted key present wins.
MODEL_KEYS = ("model.partial_pretrain",)
LR_KEYS = ("optim.lr",)
LOSS_KEY = "train/loss"

LostAfterOption = Annotated[float | None, typer.Option(
    min=0, help="Seconds without a heartbeat before a running run whose process is not seen alive reads lost "
                "[default: the run's trainer.lost_after_s, 60].")]
StallAfterOption = Annotated[float | None, typer.Option(
    min=0, help="Least seconds without an optimizer step before a running run reads stalled (raised to "
                "trainer.stall_factor x its median step time) [default: the run's trainer.stall_after_s, 600].")]


def _open(db: Path | None) -> RunStore:
    return open_existing_store(db, hint="no runs yet? pass --db or set DREAMLAB_DB")


@app.command("list")
def list_command(
    db: DbOption = None,
    status: Annotated[str | None, typer.Option(
        help="Only runs with this status (stalled: the running runs that read stalled).")] = None,
    sweep: Annotated[str | None, typer.Option(help="Only runs of this sweep id.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show the newest this many runs.")] = 50,
    all_runs: Annotated[bool, typer.Option("--all", help="Show every run (overrides --limit).")] = False,
    lost_after: LostAfterOption = None,
    stall_after: StallAfterOption = None,
    as_json: JsonOption = False,
) -> None:
    """Runs, newest first: status (and why a run is stalled or lost), steps, latest train/loss, start, duration,
    model and lr. A running run that reads lost is marked lost in the store."""
    with store_errors():
        store = _open(db)
        running = _record_lost(store, lost_after, stall_after)
        def health_of(run: Run) -> Health:  # a running run as just assessed (a run started since: now)
            return running.get(run.id) or assess(run, lost_after, stall_after)

        if status == "stalled":  # derived, never stored
            found = [run for run in store.list_runs(status="running", sweep_id=sweep) if health_of(run).status == "stalled"]
            runs, total = (found if all_runs else found[:limit]), len(found)
        else:
            runs = store.list_runs(status=status, sweep_id=sweep, limit=None if all_runs else limit)
            total = len(runs) if all_runs or len(runs) < limit else store.count_runs(status=status, sweep_id=sweep)
        health = {run.id: health_of(run) for run in runs}
        ids = [run.id for run in runs]
        steps = store.max_steps(ids)
        losses = store.latest_metrics_for(ids, keys=[LOSS_KEY])
    rows = []
    for run in runs:
        flat = flatten(run.recipe)
        loss = losses.get(run.id, {}).get(LOSS_KEY)
        rows.append({"name": run.name, "status": health[run.id].status, "reason": health[run.id].reason,
                     "steps": steps.get(run.id),
                     "train_loss": None if loss is None else _json_number(loss[1]), "started": run.started,
                     "duration_s": run.duration(), "model": _first(flat, MODEL_KEYS), "lr": _first(flat, LR_KEYS),
                     "sweep_id": run.sweep_id, "id": run.id})
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=f"runs in {store.path}", title_justify="left")
    for column, justify in (("name", "left"), ("status", "left"), ("steps", "right"), (LOSS_KEY, "right"),
                            ("started", "left"), ("duration", "right"), ("model", "left"), ("lr", "right")):
        table.add_column(column, justify=justify, no_wrap=column in ("name", "status"))  # type: ignore[arg-type]
    for row in rows:
        table.add_row(row["name"], _status(row["status"]), _text(row["steps"]), _number(row["train_loss"]),
                      _when(row["started"]), _duration(row["duration_s"]), _text(row["model"]), _number(row["lr"]))
    if len(rows) < total:
        table.caption = f"the newest {len(rows)} of {total} runs (--limit N or --all for more)"
    console = _console()
    console.print(table if rows else "no runs", soft_wrap=not rows)
    for row in rows:  # below the table: a reason is a sentence, too long for a column
        if row["reason"]:
            console.print(Text.assemble((row["name"], "bold"), " ", _status(row["status"]), f": {row['reason']}"))


@app.command("show")
def show_command(
    run: Annotated[str, typer.Argument(help="Run name, unique name prefix or id.")],
    db: DbOption = None,
    lost_after: LostAfterOption = None,
    stall_after: StallAfterOption = None,
    as_json: JsonOption = False,
) -> None:
    """One run: its record and status (why it is stalled or lost), params, latest metrics, checkpoints, history
    (events) and evals."""
    with store_errors():
        store = _open(db)
        found = store.get_run(run)
        health = assess(found, lost_after, stall_after)
        if health.status in TERMINAL_STATUSES and not found.finished and ingest_run(store, found):
            found = store.get_run(found.id)  # the job wrote its ending after the store was opened: its own word
            health = assess(found, lost_after, stall_after)
        params = store.params(found.id)
        latest = store.latest_metrics(found.id)
        checkpoints = store.checkpoints(found.id)
        events = store.events(found.id)
        evals = store.list_evals(run_ref=found.id)
    if as_json:
        payload = {"run": found.to_dict(), "health": vars(health), "params": params,
                   "evals": [record.to_dict() for record in evals],
                   "latest_metrics": {key: {"step": step, "value": _json_number(value)} for key, (step, value) in latest.items()},
                   "checkpoints": [vars(checkpoint) for checkpoint in checkpoints],
                   "events": [vars(event) for event in events]}
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    console = _console()
    console.print(_run_table(found, health))
    params_table = Table("param", "value", title="params", title_justify="left")
    for key, value in params.items():
        params_table.add_row(key, _text(value))
    console.print(params_table)
    metrics_table = Table("metric", "step", "value", title="latest metrics", title_justify="left")
    for key, (step, value) in latest.items():
        metrics_table.add_row(key, str(step), _number(value))
    console.print(metrics_table)
    checkpoints_table = Table("step", "kind", "complete", "path", title="checkpoints", title_justify="left")
    for checkpoint in checkpoints:
        checkpoints_table.add_row(str(checkpoint.step), checkpoint.kind, "yes" if checkpoint.complete else "no",
                                  checkpoint.path)
    console.print(checkpoints_table)
    events_table = Table("time", "event", "detail", title="history", title_justify="left")
    for event in events:
        events_table.add_row(_when(event.time), _status(event.kind), _text(event.message))
    console.print(events_table)
    if evals:
        console.print(_evals_table(evals))


def _record_lost(store: RunStore, lost_after: float | None, stall_after: float | None) -> dict[int, Health]:
    """Assess every running run (and queued Slurm job) and record what the console only shows: lost runs, and the
    endings of Slurm jobs whose run recorded none; returns each one's health by id."""
    def unfinished() -> list[Run]:
        return [*store.list_runs(status="running"), *(run for run in store.list_runs(status="queued")
                                                      if run.launcher == "slurm")]

    # What Slurm says first, then the journals: a job that Slurm reports ended wrote its last line before that.
    jobs = watched_jobs(unfinished())
    ingest_runs(store, unfinished())
    assessed = {run.id: assess(run, lost_after, stall_after, jobs=jobs) for run in unfinished()}
    for run_id, health in assessed.items():
        if health.status == "lost":
            store.mark_lost(run_id, health.reason or "lost")
        elif health.status in TERMINAL_STATUSES:
            store.end_if_unfinished(run_id, health.status, health.reason or health.status)
    return assessed


def _evals_table(evals: list[Any], names: dict[int, str] | None = None) -> Table:
    """One line per eval: task, sampler cell, accuracy with its 95% CI, NFE, tokens/s, status."""
    table = Table(title="evals", title_justify="left")
    columns = (["run"] if names else []) + ["id", "task", "shots", "alg", "steps", "tokens", "accuracy", "95% CI",
                                            "NFE", "tok/s", "done", "status"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("run", "task", "alg", "status") else "right")
    for record in evals:
        accuracy = "—" if record.accuracy is None else f"{100 * record.accuracy:.1f}%"
        interval = "—" if record.ci_low is None else f"{100 * record.ci_low:.1f}–{100 * record.ci_high:.1f}"
        cells = [str(record.id), record.task, _text(record.shots), _text(record.alg), _text(record.steps),
                 _text(record.max_new_tokens), accuracy, interval, _number(record.nfe_mean), _number(record.tokens_per_s),
                 f"{record.n_done}/{_text(record.n_samples)}", record.status]
        table.add_row(*(([names.get(record.run_id, "—")] if names else []) + cells))
    return table


@app.command("compare")
def compare_command(
    runs: Annotated[list[str] | None, typer.Argument(help="Runs to compare (names, unique prefixes or ids).")] = None,
    sweep: Annotated[str | None, typer.Option(help="Add every run of this sweep.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The params that differ and the final metrics of two or more runs, side by side."""
    with store_errors():
        store = _open(db)
        refs: list[int | str] = list(runs or [])
        if sweep is not None:
            members = store.list_runs(sweep_id=sweep)
            if not members:
                raise StoreError(f"no runs in sweep {sweep}")
            refs.extend(run.id for run in reversed(members))  # oldest first
        comparison = store.compare(refs)
        if len(comparison.runs) < 2:
            raise StoreError("compare needs two or more runs (names, or --sweep ID)")
        evals = [record for run in comparison.runs for record in store.list_evals(run_ref=run.id)]
        best = store.best_eval_accuracy([run.id for run in comparison.runs])
    if as_json:
        payload = comparison.to_dict()
        if evals:  # the key appears only when there is something in it
            payload["evals"] = [record.to_dict() for record in evals]
        for metrics in payload["final_metrics"].values():
            for entry in metrics.values():
                entry["value"] = _json_number(entry["value"])
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    table = Table(title=f"{len(comparison.runs)} runs: {len(comparison.params)} params differ, "
                        f"{len(comparison.same_params)} the same", title_justify="left")
    table.add_column("")
    for run in comparison.runs:
        table.add_column(run.name, justify="right")
    table.add_row("status", *[_status(run.status) for run in comparison.runs])
    for key, values in comparison.params.items():
        table.add_row(key, *[_text(value) for value in values])
    keys = comparison.metric_keys()
    if keys:
        table.add_section()
        for key in keys:
            cells = []
            for metrics in comparison.final_metrics:
                entry = metrics.get(key)
                cells.append("—" if entry is None else f"{_number(entry[1])} @{entry[0]}")
            table.add_row(key, *cells)
    if best:
        table.add_section()
        table.add_row("best eval accuracy", *[_number(best.get(run.id)) for run in comparison.runs])
    console = _console()
    console.print(table)
    if evals:
        console.print(_evals_table(evals, names={run.id: run.name for run in comparison.runs}))


@app.command("stop")
def stop_command(
    run: Annotated[str, typer.Argument(help="Run name, unique name prefix or id.")],
    grace: Annotated[float, typer.Option(min=0, help="Seconds to wait after SIGTERM before SIGKILL.")] = 60.0,
    db: DbOption = None,
) -> None:
    """SIGTERM the run's process group (a Slurm job: scancel --signal=TERM, a pending one is cancelled), SIGKILL
    (scancel) after the grace period, then mark it stopped."""
    with store_errors():
        store = _open(db)
        result = stop_run(store, run, grace_s=grace, say=typer.echo)
    if result.marked_stopped:
        typer.echo(f"marked {result.run.name} stopped")
    else:
        typer.echo(f"{result.run.name} ended on its own: {store.get_run(result.run.id).status}")


@app.command("rm")
def rm_command(
    run: Annotated[str, typer.Argument(help="Run name, unique name prefix or id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    keep_folder: Annotated[bool, typer.Option(help="Delete the rows only, leaving the run folder.")] = False,
    db: DbOption = None,
) -> None:
    """Delete a run's rows and its folder (only a folder inside the store's runs directory)."""
    with store_errors():
        store = _open(db)
        found = store.get_run(run)
        if found.status == "running":
            raise StoreError(f"run {found.name} is running: stop it first (dreamlab runs stop {found.name})")
        folder = None if keep_folder else _removable_folder(found, store.runs_dir)
        if not yes:
            what = f"run {found.name}" + (f" and its folder {folder}" if folder else "")
            typer.confirm(f"delete {what}?", abort=True)
        store.delete_run(found.id)
    if folder is not None:
        shutil.rmtree(folder)
        typer.echo(f"deleted run {found.name} and {folder}")
    else:
        typer.echo(f"deleted run {found.name}" + ("" if keep_folder else " (it had no folder)"))


@app.command("query")
def query_command(
    sql: Annotated[str, typer.Argument(help="One SELECT statement (the store is opened read-only).")],
    db: DbOption = None,
    max_rows: Annotated[int, typer.Option(min=1, help="Show at most this many rows.")] = 1000,
    as_json: JsonOption = False,
) -> None:
    """Run one read-only SQL statement on the run store (writes, ATTACH and PRAGMA assignments fail)."""
    with store_errors():
        columns, rows = RunStore.query_readonly(resolve_db(db), sql, max_rows=max_rows + 1)
    more = len(rows) > max_rows
    rows = rows[:max_rows]
    if as_json:
        typer.echo(json.dumps([dict(zip(columns, row)) for row in rows], indent=2, default=str))
        return
    table = Table(*columns, caption=f"first {max_rows} rows" if more else None)
    for row in rows:
        table.add_row(*[_text(value) for value in row])
    _console().print(table)


# -- helpers ----------------------------------------------------------------------------------------


def _removable_folder(run: Run, runs_dir: Path) -> Path | None:
    """The run folder if it exists and lies strictly inside the runs directory; refuse otherwise."""
    if not run.run_dir:
        return None
    folder = Path(run.run_dir)
    if not folder.exists() and not folder.is_symlink():
        return None
    resolved = folder.resolve()
    inside = resolved != runs_dir and resolved.is_relative_to(runs_dir)
    if folder.is_symlink() or not folder.is_dir() or not inside:
        raise StoreError(f"run folder {folder} is not a folder inside {runs_dir}: refusing to delete it "
                         "(--keep-folder deletes the rows only)")
    return resolved


def _console() -> Console:
    return Console(highlight=False)


def _run_table(run: Run, health: Health) -> Table:
    table = Table("field", "value", title=f"run {run.name}", title_justify="left", show_header=False)
    table.add_row("id", str(run.id))
    table.add_row("status", _status(health.status))
    if health.reason and health.reason != run.exit_reason:
        table.add_row("why", health.reason)
    for label, value in (("exit reason", run.exit_reason), ("sweep", run.sweep_id), ("created", _when(run.created)),
                         ("started", _when(run.started)), ("ended", _when(run.ended)),
                         ("duration", _duration(run.duration())), ("heartbeat", _when(run.heartbeat)),
                         ("last step", _progress(run)), ("host", run.host), ("gpus", ", ".join(run.gpus) or None), ("pid / pgid", _pids(run)),
                         ("worker", _worker(run)), ("Slurm job", run.job_id), ("nodes", run.nodes),
                         ("git commit", run.git_commit), ("folder", run.run_dir)):
        table.add_row(label, _text(value))
    versions = ", ".join(f"{key} {value}" for key, value in run.versions.items() if value)
    table.add_row("versions", versions or "—")
    return table


def _progress(run: Run) -> str | None:
    if run.progress is None:
        return None
    median = run.progress.step_seconds
    return f"{run.progress.step} at {_when(run.progress.time)}" + (f" (median step {median:.3g} s)" if median else "")


def _worker(run: Run) -> str | None:
    return None if run.worker_pid is None else f"rank 0, pid {run.worker_pid} on {run.worker_host}"


def _pids(run: Run) -> str | None:
    return None if run.pid is None and run.pgid is None else f"{run.pid} / {run.pgid}"


def _first(flat: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((flat[key] for key in keys if flat.get(key) is not None), None)


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no NaN / Infinity

"""`dreamlab evals ...`: eval jobs (each `dreamlab eval` invocation) as they run and ended: list, stop."""

from __future__ import annotations

import json
import shlex
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dreamlab.cli.options import DbOption, JsonOption, open_existing_store, store_errors
from dreamlab.display import STATUS_STYLES, fmt_duration, fmt_percent
from dreamlab.evals.jobs import LOST_AFTER_S, assess, stop_job
from dreamlab.evals.progress import eta_seconds, running_accuracy
from dreamlab.store import EVAL_JOB_STATUSES, EvalJob, RunStore
from dreamlab.store.health import Health
from dreamlab.train.eval_jobs import refresh_eval_jobs

app = typer.Typer(help="Eval jobs: list running and recent evals with their progress, stop one.", no_args_is_help=True)


def job_row(job: EvalJob, health: Health, now: float) -> dict[str, Any]:
    """One job as the list shows it: status as assessed, progress, running accuracy, rate and ETA."""
    eta = eta_seconds(job.n_total, job.n_done, job.samples_per_s) if health.status == "running" else None
    return {"id": job.id, "status": health.status, "reason": health.reason or job.exit_reason, "task": job.task,
            "model": job.model, "run_id": job.run_id, "n_done": job.n_done, "n_total": job.n_total,
            "n_correct": job.n_correct, "accuracy": running_accuracy(job.n_correct, job.n_done),
            "samples_per_s": job.samples_per_s, "eta_s": eta, "started": job.started,
            "duration_s": None if job.started is None else (job.ended or now) - job.started,
            "detached": job.detached, "launcher": job.launcher, "slurm_job": job.job_id, "nodes": job.nodes,
            "pid": job.pid, "pgid": job.pgid, "log": job.log_path, "eval_ids": job.eval_ids,
            "command": "dreamlab eval " + shlex.join(job.command)}


def assess_and_record(store: RunStore, jobs: list[EvalJob], lost_after_s: float | None) -> dict[int, Health]:
    """Each job's status as read now; a running job that reads lost is marked lost in the store."""
    health = {}
    for job in jobs:
        health[job.id] = found = assess(job, lost_after_s)
        if job.status == "running" and found.status == "lost":
            store.mark_eval_job_lost(job.id, found.reason or "lost")
    return health


@app.command("list")
def list_command(
    db: DbOption = None,
    status: Annotated[str | None, typer.Option(help=f"Only jobs with this status ({', '.join(EVAL_JOB_STATUSES)}).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show the newest this many jobs.")] = 20,
    lost_after: Annotated[float | None, typer.Option(
        min=0, help=f"Seconds without a heartbeat before a running job whose process is not seen alive reads lost "
                    f"[default: {LOST_AFTER_S:g}].")] = None,
    as_json: JsonOption = False,
) -> None:
    """Eval jobs, newest first: status (lost when its process died without recording an ending), samples done /
    total, running accuracy, samples/s and ETA. A running job that reads lost is marked lost in the store. Slurm
    eval jobs (`dreamlab eval --slurm`) are listed too, their journals read in first: queued with Slurm's pending
    reason, running with their nodes, or ended."""
    with store_errors():
        store = open_existing_store(db, hint="no evals yet? pass --db or set DREAMLAB_DB")
        refresh_eval_jobs(store)  # Slurm eval jobs: Slurm's state and their journals read in
        newly_lost = assess_and_record(store, store.list_eval_jobs(status="running"), lost_after)  # before filtering
        jobs = store.list_eval_jobs(status=status, limit=limit)
        health = {job.id: newly_lost.get(job.id) or assess(job, lost_after) for job in jobs}
    now = time.time()
    rows = [job_row(job, health[job.id], now) for job in jobs]
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=f"eval jobs in {store.path}", title_justify="left")
    for column in ("id", "status", "task", "model", "done", "accuracy", "samples/s", "eta", "duration"):
        table.add_column(column, justify="right" if column in ("id", "done", "accuracy", "samples/s", "eta") else "left",
                         no_wrap=column in ("id", "status"))
    for row in rows:
        table.add_row(str(row["id"]), Text(row["status"], style=STATUS_STYLES.get(row["status"], "")), row["task"] or "—",
                      row["model"] or "—", progress_text(row["n_done"], row["n_total"]), fmt_percent(row["accuracy"]),
                      "—" if row["samples_per_s"] is None else f"{row['samples_per_s']:.2f}", fmt_duration(row["eta_s"]),
                      fmt_duration(row["duration_s"]))
    console = Console(highlight=False)
    console.print(table if rows else "no eval jobs", soft_wrap=not rows)
    for row in rows:
        if row["reason"] and row["status"] != "completed":
            console.print(Text.assemble((f"job {row['id']}", "bold"), f" {row['status']}: {row['reason']}"))


def progress_text(done: int, total: int | None) -> str:
    """`12/50 (24%)`, or `12/?` while the total is unknown."""
    if not total:
        return f"{done}/?"
    return f"{done}/{total} ({100 * done / total:.0f}%)"


@app.command("stop")
def stop_command(
    job: Annotated[int, typer.Argument(help="The eval job's id (dreamlab evals list).")],
    grace: Annotated[float, typer.Option(min=0, help="Seconds to wait after SIGTERM before SIGKILL.")] = 30.0,
    db: DbOption = None,
) -> None:
    """SIGTERM the eval's process group: it ends stopped with its finished samples kept (the same command resumes
    it); SIGKILL after the grace period. A Slurm eval job: scancel --signal=TERM, scancel after the grace period
    (a pending one is cancelled at once)."""
    with store_errors():
        store = open_existing_store(db, hint="pass --db or set DREAMLAB_DB")
        result = stop_job(store, job, grace_s=grace, say=typer.echo)
        after = store.get_eval_job(job)
    resume = ("" if after.launcher == "slurm" else  # its journal is its own: a new submission starts afresh
              f"; rerun `dreamlab eval {shlex.join(after.command)}` to resume")
    typer.echo(f"eval job {job} {after.status}: {after.n_done}/{after.n_total or '?'} samples kept{resume}"
               if after.status == "stopped" else f"eval job {job} ended on its own: {after.status}")
    if not result.exited:
        typer.echo("warning: some of its processes are still alive", err=True)

"""What the console reads from the store and the run folders, as plain records (no Textual here).

Each function is called from a thread worker; none of them scans the metrics table for more than one
run (the runs table uses latest_metrics through `latest_metrics_for` / `max_steps`, and one grouped
query over evals for `best_eval_accuracy`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamlab.evals import jobs
from dreamlab.evals.progress import eta_seconds, running_accuracy
from dreamlab.evals.published import published_note
from dreamlab.store import Checkpoint, Comparison, EvalJob, Event, MetricPoint, Run, RunStore
from dreamlab.store.health import Health
from dreamlab.store.ingest import ingest_all
from dreamlab.train.eval_jobs import refresh_eval_jobs
from dreamlab.train.processes import assess
from dreamlab.train.slurm import watched_jobs

LOSS_KEY = "train/loss"
VAL_LOSS_KEY = "val/loss"
LR_KEY = "train/lr"
MEMORY_PREFIX = "memory/"
LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class RunRow:
    """One line of the runs table."""

    id: int
    name: str
    status: str
    model: str | None
    lr: float | None
    steps: int | None
    loss: float | None
    started: float | None
    duration_s: float | None
    sweep_id: str | None
    best_eval: float | None = None
    reason: str | None = None  # why the status reads stalled or lost (or a note on a running run)

    def text(self) -> str:
        """Everything the filter box matches against, lower-cased."""
        return " ".join(str(part) for part in (self.name, self.status, self.model, self.lr, self.sweep_id)).lower()


def load_runs(store: RunStore, lost_after_s: float | None = None) -> list[RunRow]:
    """Every run, newest first, with its highlights and its status as `assess` reads it; the only writes are the
    Slurm jobs' new journal lines, read in (after asking Slurm, so a job it reports ended has its ending in)."""
    jobs = watched_jobs(store.list_runs())  # one squeue call for every Slurm run
    ingest_all(store)
    runs = store.list_runs()
    ids = [run.id for run in runs]
    steps = store.max_steps(ids)
    losses = store.latest_metrics_for(ids, keys=[LOSS_KEY])
    best_evals = store.best_eval_accuracy(ids)
    now = time.time()
    rows = []
    for run in runs:
        loss = losses.get(run.id, {}).get(LOSS_KEY)
        health = assess(run, lost_after_s=lost_after_s, now=now, jobs=jobs)
        rows.append(RunRow(
            id=run.id, name=run.name, status=health.status, reason=health.reason,
            model=_nested(run.recipe, "model", "partial_pretrain"), lr=_nested(run.recipe, "optim", "lr"),
            steps=steps.get(run.id), loss=None if loss is None else loss[1], started=run.started,
            duration_s=run.duration(now), sweep_id=run.sweep_id, best_eval=best_evals.get(run.id),
        ))
    return rows


def _nested(recipe: dict[str, Any], section: str, key: str) -> Any:
    values = recipe.get(section)
    return values.get(key) if isinstance(values, dict) else None


@dataclass(frozen=True)
class RunSummary:
    """The detail screen's header, recipe, checkpoints and history."""

    run: Run
    params: dict[str, Any]
    checkpoints: list[Checkpoint]
    latest: dict[str, tuple[int, float]]
    events: list[Event]
    health: Health


def load_summary(store: RunStore, run_id: int, lost_after_s: float | None = None) -> RunSummary:
    """A run's record, flattened recipe, checkpoints, latest metrics, events and status as `assess` reads it."""
    run = store.get_run(run_id)
    return RunSummary(run=run, params=store.params(run_id), checkpoints=store.checkpoints(run_id),
                      latest=store.latest_metrics(run_id), events=store.events(run_id),
                      health=assess(run, lost_after_s=lost_after_s))


@dataclass(frozen=True)
class Curves:
    """Metric series by key: key -> (steps, values), NaN points dropped."""

    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)

    def get(self, key: str) -> tuple[list[int], list[float]]:
        """The series of `key`, or two empty lists."""
        return self.series.get(key, ([], []))


def load_curves(store: RunStore, run_id: int, keys: list[str]) -> Curves:
    """The listed metric series of one run (one indexed query per key)."""
    return Curves({key: _series(store.metrics(run_id, key)) for key in keys})


def load_memory_curves(store: RunStore, run_id: int) -> Curves:
    """Every memory/* series the run recorded (allocated / reserved / peak on GPUs, rss on CPUs)."""
    keys = [key for key in store.latest_metrics(run_id) if key.startswith(MEMORY_PREFIX)]
    return load_curves(store, run_id, sorted(keys))


def _series(points: list[MetricPoint]) -> tuple[list[int], list[float]]:
    kept = [(point.step, point.value) for point in points if not math.isnan(point.value)]
    return [step for step, _ in kept], [value for _, value in kept]


def tail_log(path: Path, lines: int = 200) -> list[str] | None:
    """The last `lines` lines of a log file (reads at most its last 64 KiB); None if it does not exist."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            data = handle.read()
    except OSError:
        return None
    text = data.decode(errors="replace")
    if len(data) == LOG_TAIL_BYTES:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return text.splitlines()[-lines:]


@dataclass(frozen=True)
class CompareData:
    """Runs side by side and each run's training loss curve."""

    comparison: Comparison
    losses: dict[int, tuple[list[int], list[float]]]


def load_compare(store: RunStore, run_ids: list[int]) -> CompareData:
    """The params that differ, final metrics and loss curves of the chosen runs."""
    comparison = store.compare(run_ids)
    return CompareData(comparison, {run.id: _series(store.metrics(run.id, LOSS_KEY)) for run in comparison.runs})


@dataclass(frozen=True)
class EvalJobRow:
    """One eval job as the evals screen shows it: status as assessed now (never written), accuracy and ETA so far."""

    job: EvalJob
    status: str
    reason: str | None
    accuracy: float | None
    eta_s: float | None


@dataclass(frozen=True)
class EvalsView:
    """The evals screen's data: the recent jobs and every eval row (of one run, or of the store)."""

    jobs: list[EvalJobRow]
    evals: list[Any]


def load_evals_view(store: RunStore, run_id: int | None, limit: int = 20) -> EvalsView:
    """The newest `limit` eval jobs and the eval rows of run `run_id` (None: of every run and model); Slurm eval jobs
    with Slurm's state and their journals read in first."""
    refresh_eval_jobs(store)
    now = time.time()
    rows = []
    for job in store.list_eval_jobs(run_id=run_id, limit=limit):
        health = jobs.assess(job, now=now)
        eta = eta_seconds(job.n_total, job.n_done, job.samples_per_s) if health.status == "running" else None
        rows.append(EvalJobRow(job, health.status, health.reason or job.exit_reason,
                               running_accuracy(job.n_correct, job.n_done), eta))
    evals = store.list_evals(run_ref=run_id)
    for record in evals:
        published_note(record)  # reads the task files here, not on the UI thread (cached)
    return EvalsView(rows, evals)


def age(seconds_ago: float | None, now: float | None = None) -> str:
    """'12 s', '3 min', '2.5 h' since a unix time; '-' when unknown."""
    if seconds_ago is None:
        return "-"
    return duration(max(0.0, (time.time() if now is None else now) - seconds_ago))


def duration(seconds: float | None) -> str:
    """A short human duration; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"

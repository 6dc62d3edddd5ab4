"""The plain records the store hands out: runs, progress, metric points, checkpoints, events, comparisons."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Any, NamedTuple

from dreamlab.diffusion.settings import SamplerSettings, field_types

TERMINAL_STATUSES = ("completed", "failed", "diverged", "stopped")


@dataclass(frozen=True)
class Run:
    """One row of `runs`; times are unix seconds (None until they happen)."""

    id: int
    name: str
    status: str
    recipe: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    host: str | None = None
    gpus: list[str] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    pid: int | None = None
    pgid: int | None = None
    run_dir: str | None = None
    sweep_id: str | None = None
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    heartbeat: float | None = None
    exit_reason: str | None = None
    worker_host: str | None = None
    worker_pid: int | None = None
    worker_started: float | None = None
    progress: Progress | None = None
    launcher: str = "local"
    job_id: str | None = None
    nodes: str | None = None

    @property
    def finished(self) -> bool:
        """True once the run reached a final status (completed, failed, diverged, stopped)."""
        return self.status in TERMINAL_STATUSES

    def duration(self, now: float | None = None) -> float | None:
        """Seconds from start to end (to `now` while it runs); None before it starts."""
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else (time.time() if now is None else now)
        return max(0.0, end - self.started)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    """A run's last completed optimizer step, when it ended, and the median step time (s) so far."""

    step: int
    time: float
    step_seconds: float | None = None


class MetricPoint(NamedTuple):
    """One logged value: (step, key, value, time); a NaN logged by the trainer reads back as NaN."""

    step: int
    key: str
    value: float
    time: float


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a run; `complete` is False while it is being written."""

    run_id: int
    step: int
    path: str
    kind: str
    created: float
    complete: bool


@dataclass(frozen=True)
class Event:
    """One moment of a run's history: queued, started, checkpoint, resumed, note, revived or a final status."""

    run_id: int
    time: float
    kind: str
    message: str | None


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: the params that differ and the final (latest) metrics, aligned with `runs`."""

    runs: list[Run]
    params: dict[str, list[Any]]
    same_params: dict[str, Any]
    final_metrics: list[dict[str, tuple[int, float]]]

    def metric_keys(self) -> list[str]:
        """Every metric key any of the runs logged, sorted."""
        return sorted({key for metrics in self.final_metrics for key in metrics})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: run names, differing params per run, final metrics per run."""
        return {
            "runs": [run.name for run in self.runs],
            "params": self.params,
            "same_params": self.same_params,
            "final_metrics": {run.name: {key: {"step": step, "value": value} for key, (step, value) in metrics.items()}
                              for run, metrics in zip(self.runs, self.final_metrics)},
        }


def _eval_record_to_dict(self: Any) -> dict[str, Any]:
    """A JSON-ready dict of every field."""
    return asdict(self)


# Built from SamplerSettings' fields, so a new sampler setting is a new field here too.
EvalRecord = make_dataclass("EvalRecord", [
    ("id", int), ("task", str), ("status", str), ("settings_key", str), ("run_id", int | None, None),
    ("checkpoint", str | None, None), ("model", str | None, None), ("shots", int | None, None),
    ("template", str | None, None), ("add_bos", bool | None, None), ("template_hash", str | None, None),
    *((name, kind | None, None) for name, kind in field_types(SamplerSettings).items()),
    ("batch_size", int | None, None), ("seed", int | None, None), ("limit_n", int | None, None),
    ("versions", dict[str, Any], field(default_factory=dict)), ("device", str | None, None),
    ("dtype", str | None, None), ("n_samples", int | None, None), ("n_done", int, 0), ("n_correct", int, 0), ("accuracy", float | None, None),
    ("strict_accuracy", float | None, None), ("flexible_accuracy", float | None, None), ("ci_low", float | None, None), ("ci_high", float | None, None), ("nfe_mean", float | None, None),
    ("tokens_per_s", float | None, None), ("grid_id", str | None, None), ("started", float | None, None),
    ("ended", float | None, None), ("metrics", dict[str, Any] | None, None),
    ("tokens_per_forward", float | None, None), ("answer_tokens_per_s", float | None, None),
    ("wall_seconds", float | None, None), ("batch_size_used", int | None, None),
], frozen=True, namespace={"to_dict": _eval_record_to_dict, "__module__": __name__,
                            "__doc__": "One row of `evals`: a grid cell's settings, progress and summary (None until known)."})


@dataclass(frozen=True)
class EvalJob:
    """One `dreamlab eval` invocation as a job (local, or a Slurm job): its command, process, heartbeat and progress."""

    id: int
    status: str
    command: list[str] = field(default_factory=list)
    detached: bool = False
    run_id: int | None = None
    model: str | None = None
    task: str | None = None
    grid_id: str | None = None
    eval_ids: list[int] = field(default_factory=list)
    host: str | None = None
    pid: int | None = None
    pgid: int | None = None
    log_path: str | None = None
    worker_pid: int | None = None
    worker_started: float | None = None
    n_total: int | None = None
    n_done: int = 0
    n_correct: int = 0
    samples_per_s: float | None = None
    progress_time: float | None = None
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    heartbeat: float | None = None
    exit_reason: str | None = None
    launcher: str = "local"
    job_id: str | None = None
    nodes: str | None = None
    folder: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

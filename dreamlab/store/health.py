"""Is a running run healthy, stalled or lost? Derived where the store is read; a reader never writes it.

- lost: no heartbeat for `lost_after_s` and its process is not known to be alive (gone, or not
  checkable from this host). Heartbeats come from a thread of rank 0, so they continue through model
  loads, checkpoint saves and validation.
- stalled: not lost, and no optimizer step completed for max(`stall_after_s`, `stall_factor` x the
  median step time), counted from the later of the last step and the start. A hung collective or a
  process stopped with SIGSTOP reads stalled, not lost, when a reader on its host sees it alive.

The thresholds come from the run's recipe (trainer section), with the defaults below for older runs;
a reader may override them. Only the CLI persists `lost` (`runs list`); the console only shows it.
What the process is doing comes from `dreamlab.train.processes` (`probe`, `assess`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from dreamlab.store.records import Run

HEARTBEAT_S = 5.0
LOST_AFTER_S = 60.0
STALL_AFTER_S = 600.0
STALL_FACTOR = 20.0


class Liveness(enum.Enum):
    """What this host can tell about a run's process."""

    ALIVE = "alive"
    STOPPED = "stopped"  # alive but not scheduled (SIGSTOP, a debugger)
    GONE = "gone"
    UNKNOWN = "unknown"  # another host, or no process recorded


@dataclass(frozen=True)
class Thresholds:
    """When a silent run reads lost and a run without steps reads stalled (seconds)."""

    lost_after_s: float = LOST_AFTER_S
    stall_after_s: float = STALL_AFTER_S
    stall_factor: float = STALL_FACTOR

    @classmethod
    def of_run(cls, run: Run, lost_after_s: float | None = None, stall_after_s: float | None = None) -> Thresholds:
        """The run's recipe thresholds (defaults where it has none), with a reader's overrides."""
        trainer: Any = run.recipe.get("trainer")
        trainer = trainer if isinstance(trainer, dict) else {}
        found = cls(**{key: float(trainer[key]) for key in ("lost_after_s", "stall_after_s", "stall_factor")
                       if isinstance(trainer.get(key), (int, float))})
        overrides = {"lost_after_s": lost_after_s, "stall_after_s": stall_after_s}
        return replace(found, **{key: value for key, value in overrides.items() if value is not None})

    def stall_limit(self, run: Run) -> float:
        """Seconds without an optimizer step before the run reads stalled."""
        step_seconds = run.progress.step_seconds if run.progress else None
        return max(self.stall_after_s, self.stall_factor * (step_seconds or 0.0))


@dataclass(frozen=True)
class Health:
    """A run's status as a reader should show it, and why when it is not plainly what the row says."""

    status: str
    reason: str | None = None


def judge(run: Run, now: float, liveness: Liveness, thresholds: Thresholds) -> Health:
    """The status a reader shows for `run` at `now`, given what it knows of the run's process."""
    if run.status != "running":
        return Health(run.status, run.exit_reason if run.status == "lost" else None)
    silent = now - (run.heartbeat or run.started or run.created)
    quiet = now - max(run.progress.time if run.progress else 0.0, run.started or run.created)
    notes = []
    if silent > thresholds.lost_after_s:
        notes.append(f"no heartbeat for {_span(silent)} (threshold {_span(thresholds.lost_after_s)})")
        if liveness in (Liveness.GONE, Liveness.UNKNOWN):
            gone = f"; process {run.worker_pid or run.pid} is gone" if liveness is Liveness.GONE else ""
            return Health("lost", notes[0] + gone)
    if liveness is Liveness.STOPPED:
        notes.append(f"process {run.worker_pid or run.pid} is stopped (SIGSTOP?)")
    limit = thresholds.stall_limit(run)
    if quiet > limit:
        since = "no optimizer step" if run.progress else "no optimizer step since the start"
        return Health("stalled", "; ".join([f"{since} for {_span(quiet)} (threshold {_span(limit)})", *notes]))
    return Health("running", "; ".join(notes) or None)


def _span(seconds: float) -> str:
    """'45 s', '12 min', '2.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

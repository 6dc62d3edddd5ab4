"""Live progress of an eval job: the rate and ETA arithmetic, and the harness Progress that writes it to the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the harness imports torch; readers of the arithmetic (the console) must not
    from dreamlab.evals.harness import Progress


def running_accuracy(correct: int, done: int) -> float | None:
    """Correct / done so far; None before any sample is done."""
    return correct / done if done > 0 else None


def samples_per_second(count: int, seconds: float) -> float | None:
    """Samples finished per second in this session; None until one finished after some time passed."""
    return count / seconds if count > 0 and seconds > 0 else None


def eta_seconds(total: int | None, done: int, rate: float | None) -> float | None:
    """Seconds left at `rate` samples per second: 0 when done, None while the total or the rate is unknown."""
    if total is None:
        return None
    left = max(0, total - done)
    if left == 0:
        return 0.0
    return left / rate if rate else None


class StoreProgress:
    """A harness Progress that passes everything to `inner` and writes the job's progress after every batch.

    The rate counts only the samples this process finished (a resumed cell's earlier samples took no time
    here), from the first cell's start (after the model loaded).
    """

    def __init__(self, store: Any, job_id: int, inner: Progress, clock: Callable[[], float] = time.monotonic) -> None:
        """Report job `job_id` in `store`; `clock` is a monotonic time in seconds."""
        self.store, self.job_id, self.inner, self.clock = store, job_id, inner, clock
        self.count = 0
        self.since: float | None = None

    def rate(self) -> float | None:
        """Samples per second this session so far."""
        return None if self.since is None else samples_per_second(self.count, self.clock() - self.since)

    def start_cell(self, label: str, total: int, done: int) -> None:
        """A cell starts (the first one starts the rate's clock)."""
        if self.since is None:
            self.since = self.clock()
        self.inner.start_cell(label, total, done)
        self.store.record_eval_job_progress(self.job_id, self.rate())

    def advance(self, count: int) -> None:
        """A batch was scored and recorded: write the job's progress."""
        self.count += count
        self.inner.advance(count)
        self.store.record_eval_job_progress(self.job_id, self.rate())

    def end_cell(self, record: Any) -> None:
        """A cell ended."""
        self.inner.end_cell(record)
        self.store.record_eval_job_progress(self.job_id, self.rate())

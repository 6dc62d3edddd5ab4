"""Rank 0's sign of life: a daemon thread that beats into the run's record whatever the main thread is doing.

The training loop only tells it when an optimizer step completes (`step_done`, no I/O); each beat
writes the heartbeat and the latest progress as one record through the thread's own sink (its own store
connection, or its own descriptor on the Slurm job's journal).
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

import psutil

from dreamlab.store import Progress
from dreamlab.train.sinks import RecordSink

STEP_WINDOW = 101  # recent step times the median is taken over


class HeartbeatThread:
    """Beats into the sink `open_sink` opens, every `interval_s` seconds from `start` to `stop`."""

    def __init__(self, open_sink: Callable[[], RecordSink], interval_s: float) -> None:
        self.open_sink = open_sink
        self.interval_s = interval_s
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._step_times: deque[float] = deque(maxlen=STEP_WINDOW)
        self._thread = threading.Thread(target=self._run, name="dreamlab-heartbeat", daemon=True)
        self._ready = threading.Event()

    def start(self) -> None:
        """Record this process as the run's worker, beat once, and keep beating in the background."""
        self._thread.start()
        self._ready.wait(timeout=max(30.0, 6 * self.interval_s))

    def step_done(self, step: int, seconds: float) -> None:
        """An optimizer step completed in `seconds`: the next beat reports it."""
        with self._lock:
            self._step_times.append(seconds)
            self._progress = Progress(step, time.time(), statistics.median(self._step_times))

    def stop(self) -> None:
        """Beat a last time (with the final progress) and end the thread."""
        self._halt.set()
        self._thread.join(timeout=max(30.0, 6 * self.interval_s))

    def _run(self) -> None:
        try:
            sink = self.open_sink()
        except Exception as error:  # noqa: BLE001 - the run goes on; readers will see it silent
            _warn(f"heartbeat: cannot open the run's record: {error}")
            self._ready.set()
            return
        try:
            me = psutil.Process()
            self._guarded(lambda: sink.write("worker", host=socket.gethostname(), pid=os.getpid(),
                                             created=me.create_time()))
            self._beat(sink)
            self._ready.set()
            while not self._halt.wait(self.interval_s):
                self._beat(sink)
            self._beat(sink)
        finally:
            self._ready.set()
            sink.close()

    def _beat(self, sink: RecordSink) -> None:
        with self._lock:
            progress = self._progress
        fields = None if progress is None else [progress.step, progress.time, progress.step_seconds]
        self._guarded(lambda: sink.write("heartbeat", progress=fields))

    @staticmethod
    def _guarded(write: Callable[[], None]) -> None:
        """One write; a failure (a locked or full disk) is logged and the next beat tries again."""
        try:
            write()
        except Exception as error:  # noqa: BLE001 - a missed beat must not end the thread
            _warn(f"heartbeat: {type(error).__name__}: {error}")


def _warn(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass

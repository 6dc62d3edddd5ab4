"""Polling for widgets: load in a thread worker, post the result, re-arm a one-shot timer after applying it.

Polls never overlap (the next one is armed only after the previous result was applied) and the UI
thread only applies results; a failed load is shown by the widget and polling goes on.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, cast

from textual import work
from textual.dom import DOMNode
from textual.message import Message
from textual.timer import Timer
from textual.widget import Widget
from textual.worker import get_current_worker


class PollingApp(Protocol):
    """What a polling widget needs of its app: the poll interval (0 or less: poll only on demand)."""

    poll_s: float


class Polling(Widget):
    """A widget that polls: define `load()` (worker thread) and `apply(data)` / `show_error(text)` (UI thread).

    Put it last among the bases (`class LossPlot(PlotextPlot, Polling)`): Textual takes CSS and component
    classes from the first base only.
    """

    _poll_timer: Timer | None = None
    polls_applied: int = 0  # results applied so far (tests and the benchmark wait on it)
    last_cycle_s: float = 0.0  # load in the worker + apply on the UI thread, of the last poll

    class Loaded(Message):
        """A poll finished: its data (or error) and how long the load took (handled by the widget itself)."""

        bubble = False

        def __init__(self, data: Any, error: str | None, seconds: float) -> None:
            super().__init__()
            self.data = data
            self.error = error
            self.seconds = seconds

    def load(self) -> Any:
        """Read what the widget shows; runs in a thread worker."""
        raise NotImplementedError

    def apply(self, data: Any) -> None:
        """Show freshly loaded data; runs on the UI thread."""
        raise NotImplementedError

    _last_error: str | None = None

    def show_error(self, error: str) -> None:
        """Show why the last load failed (default: a notification, once per distinct error)."""
        if error != self._last_error:
            self.notify(error, title="refresh failed", severity="error")
        self._last_error = error

    def poll_now(self) -> None:
        """Load now (cancelling the armed timer); the next poll is armed when this one is applied."""
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None
        self._poll_worker()

    @work(thread=True, exclusive=True, group="poll")
    def _poll_worker(self) -> None:
        start = time.perf_counter()
        try:
            data, error = self.load(), None
        except Exception as failure:  # noqa: BLE001 - shown in the widget; polling continues
            data, error = None, f"{type(failure).__name__}: {failure}"
        if not get_current_worker().is_cancelled:
            self.post_message(self.Loaded(data, error, time.perf_counter() - start))

    def on_polling_loaded(self, message: Loaded) -> None:
        """Apply the result, then arm the next poll."""
        start = time.perf_counter()
        if message.error is None:
            self._last_error = None
            self.apply(message.data)
        else:
            self.show_error(message.error)
        self.last_cycle_s = message.seconds + time.perf_counter() - start
        self.polls_applied += 1
        interval = cast(PollingApp, self.app).poll_s
        if interval > 0 and self.is_mounted:
            self._poll_timer = self.set_timer(interval, self.poll_now)


def pollers(node: DOMNode) -> list[Polling]:
    """Every polling widget under `node`.

    By isinstance, not `node.query(Polling)`: Textual's type selectors follow a class's first base only,
    and Polling comes last among its widgets' bases, so that query matches none of them.
    """
    return [widget for widget in node.query("*") if isinstance(widget, Polling)]

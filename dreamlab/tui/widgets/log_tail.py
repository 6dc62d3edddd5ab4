"""The tail of a run's train.log, re-read while the run is alive."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Log

from dreamlab.tui.queries import tail_log
from dreamlab.tui.widgets.polling import Polling


class LogTail(Log, Polling):
    """The last lines of a log file (its last 64 KiB), refreshed when the file grew."""

    def __init__(self, path: Path, lines: int = 200, **kwargs) -> None:
        super().__init__(highlight=False, auto_scroll=True, **kwargs)
        self.path = path
        self.lines_kept = lines
        self.shown: list[str] | None = None

    def on_mount(self) -> None:
        """First poll."""
        self.poll_now()

    def load(self) -> list[str] | None:
        """The file's last lines, None if it does not exist (worker thread)."""
        return tail_log(self.path, self.lines_kept)

    def apply(self, data: list[str] | None) -> None:
        """Replace the text when it changed."""
        if data == self.shown:
            return
        self.shown = data
        self.clear()
        self.write_lines(data if data is not None else [f"no log at {self.path}"])

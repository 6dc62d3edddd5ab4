"""The run history: a sortable, filterable DataTable refreshed by polling the store."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from dreamlab.display import STATUS_STYLES, fmt_duration, fmt_number, fmt_when
from dreamlab.tui.queries import RunRow, load_runs
from dreamlab.tui.widgets.polling import Polling

MARK = "●"
FIRST_CHUNK = 60  # rows added before the first paint (DataTable measures every cell it adds)
CHUNK = 250


def _number_key(value: float | None) -> tuple[int, float]:
    return (1, 0.0) if value is None or math.isnan(value) else (0, value)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


# column key, label, how a row renders, how a row sorts
COLUMNS: list[tuple[str, str, Callable[[RunRow], Any], Callable[[RunRow], Any]]] = [
    ("name", "name", lambda r: r.name, lambda r: r.name),
    ("status", "status", lambda r: Text(r.status, style=STATUS_STYLES.get(r.status, "")), lambda r: r.status),
    ("steps", "steps", lambda r: Text(fmt_number(r.steps), justify="right"), lambda r: _number_key(r.steps)),
    ("loss", "loss", lambda r: Text(fmt_number(r.loss), justify="right"), lambda r: _number_key(r.loss)),
    ("eval", "eval", lambda r: Text(_percent(r.best_eval), justify="right"), lambda r: _number_key(r.best_eval)),
    ("started", "started", lambda r: fmt_when(r.started, short=True), lambda r: _number_key(r.started)),
    ("duration", "time", lambda r: Text(fmt_duration(r.duration_s), justify="right"),
     lambda r: _number_key(r.duration_s)),
    ("model", "model", lambda r: r.model or "—", lambda r: str(r.model)),
    ("lr", "lr", lambda r: Text(fmt_number(r.lr), justify="right"), lambda r: _number_key(r.lr)),
]


class RunsTable(DataTable, Polling):
    """Every run, newest first by default; `sort_by` / `filter_text` / marks change what it shows."""

    class Highlighted(Message):
        """The cursor moved to a run (None: the table is empty)."""

        def __init__(self, run: RunRow | None) -> None:
            super().__init__()
            self.run = run

    def __init__(self, lost_after_s: float | None, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.lost_after_s = lost_after_s
        self.rows_by_id: dict[int, RunRow] = {}
        self.all_rows: list[RunRow] = []
        self.marked: set[int] = set()
        self.sort_by: str | None = None
        self.sort_reverse = False
        self.filter_text = ""
        self._shown: list[RunRow] = []
        self._generation = 0

    def on_mount(self) -> None:
        """Columns, then the first poll."""
        self.add_column(" ", key="mark", width=1)
        for key, label, _, _ in COLUMNS:
            self.add_column(label, key=key)
        self.poll_now()

    def load(self) -> list[RunRow]:
        """Runs from the store (worker thread)."""
        return load_runs(self.app.store, self.lost_after_s)

    def apply(self, data: list[RunRow]) -> None:
        """Keep the new rows and redraw."""
        self.all_rows = data
        self.rows_by_id = {row.id: row for row in data}
        self.marked &= set(self.rows_by_id)
        self.redraw()

    def visible_rows(self) -> list[RunRow]:
        """The rows the filter keeps, in the chosen order."""
        needle = self.filter_text.lower().strip()
        rows = [row for row in self.all_rows if not needle or needle in row.text()]
        if self.sort_by is not None:
            sort_key = next(column[3] for column in COLUMNS if column[0] == self.sort_by)
            rows.sort(key=sort_key, reverse=self.sort_reverse)
        elif self.sort_reverse:
            rows.reverse()
        return rows

    def redraw(self) -> None:
        """Update cells in place when the same runs show in the same order, else rebuild (cursor kept)."""
        rows = self.visible_rows()
        if [row.id for row in rows] == [row.id for row in self._shown]:
            for old, new in zip(self._shown, rows):
                if old != new and str(new.id) in self.rows:  # rows still to be added get the new values
                    for key, _, render, _ in COLUMNS:
                        self.update_cell(str(new.id), key, render(new))
            self._shown = rows
        else:
            current = self.current_run()
            self.clear()
            self._shown = rows
            self._generation += 1
            self._fill(0, self._generation, None if current is None else current.id)
        self.post_message(self.Highlighted(self.current_run()))

    def _fill(self, start: int, generation: int, cursor_id: int | None) -> None:
        """Add rows in chunks, one chunk per screen refresh: a screenful paints before 1,000 rows are measured."""
        if generation != self._generation:
            return  # a newer rebuild took over
        end = start + (FIRST_CHUNK if start == 0 else CHUNK)
        for row in self._shown[start:end]:
            self.add_row(MARK if row.id in self.marked else "", *(column[2](row) for column in COLUMNS),
                         key=str(row.id))
            if row.id == cursor_id:
                self.move_cursor(row=self.row_count - 1)
        if end < len(self._shown):
            self.call_after_refresh(self._fill, end, generation, cursor_id)

    def current_run(self) -> RunRow | None:
        """The run under the cursor, or None."""
        if not self._shown or self.row_count == 0:
            return None
        row_key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return self.rows_by_id.get(int(row_key.value)) if row_key.value is not None else None

    def toggle_mark(self) -> None:
        """Mark / unmark the run under the cursor (for compare)."""
        run = self.current_run()
        if run is None:
            return
        self.marked ^= {run.id}
        self.update_cell(str(run.id), "mark", MARK if run.id in self.marked else "")

    def cycle_sort(self) -> str:
        """Sort by the next column (newest first again after the last); returns a description."""
        keys = [None, *(column[0] for column in COLUMNS)]
        self.sort_by = keys[(keys.index(self.sort_by) + 1) % len(keys)]
        self.redraw()
        return "newest first" if self.sort_by is None else f"by {self.sort_by}" + (" (reversed)" if self.sort_reverse else "")

    def sort_on(self, key: str) -> None:
        """Sort by a column; the same column again reverses the order."""
        if self.sort_by == key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_by, self.sort_reverse = key, False
        self.redraw()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """A click on a column header sorts by it."""
        event.stop()
        if event.column_key.value in {column[0] for column in COLUMNS}:
            self.sort_on(event.column_key.value)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Tell the screen which run is current."""
        self.post_message(self.Highlighted(self.current_run()))

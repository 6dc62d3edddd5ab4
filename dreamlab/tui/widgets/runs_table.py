"""The run history: a sortable, filterable DataTable refreshed by polling the store."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.message import Message
from textual.widgets import DataTable

from dreamlab.display import STATUS_STYLES, fmt_duration, fmt_number, fmt_percent, fmt_when
from dreamlab.tui.queries import RunRow, load_runs
from dreamlab.tui.widgets.polling import Polling

MARK = "●"
FIRST_CHUNK = 60  # rows added before the first paint (DataTable measures every cell it adds)
CHUNK = 250


def _number_key(value: float | None) -> tuple[int, float]:
    return (1, 0.0) if value is None or math.isnan(value) else (0, value)


# column key, label, how a row renders, how a row sorts
COLUMNS: list[tuple[str, str, Callable[[RunRow], Any], Callable[[RunRow], Any]]] = [
    ("name", "name", lambda r: r.name, lambda r: r.name),
    ("status", "status", lambda r: Text(r.status, style=STATUS_STYLES.get(r.status, "")), lambda r: r.status),
    ("steps", "steps", lambda r: Text(fmt_number(r.steps), justify="right"), lambda r: _number_key(r.steps)),
    ("loss", "loss", lambda r: Text(fmt_number(r.loss), justify="right"), lambda r: _number_key(r.loss)),
    ("eval", "eval", lambda r: Text(fmt_percent(r.best_eval), justify="right"), lambda r: _number_key(r.best_eval)),
    ("started", "started", lambda r: fmt_when(r.started, short=True), lambda r: _number_key(r.started)),
    ("duration", "time", lambda r: Text(fmt_duration(r.duration_s), justify="right"),
     lambda r: _number_key(r.duration_s)),
    ("model", "model", lambda r: r.model or "—", lambda r: str(r.model)),
    ("lr", "lr", lambda r: Text(fmt_number(r.lr), justify="right"), lambda r: _number_key(r.lr)),
]
# What a narrow terminal keeps first; the rest show when they fit (all of them are in the run's detail).
PRIORITY = ("name", "status", "steps", "loss", "eval", "duration", "started", "model", "lr")
_GUTTER = 5  # the mark column with its padding, and the scrollbar


def column_widths(rows: list[RunRow]) -> dict[str, int]:
    """The cells each column needs for these rows (its label or its widest value, plus padding)."""
    return {key: 2 + max([len(label), *(cell_len(str(render(row))) for row in rows)])
            for key, label, render, _ in COLUMNS}


def fitting_columns(widths: dict[str, int], room: int) -> list[str]:
    """The columns to show in `room` cells: by PRIORITY while they fit (the name always), in table order."""
    chosen, left = {"name"}, room - _GUTTER - widths["name"]
    for key in PRIORITY[1:]:
        if widths[key] <= left:
            chosen.add(key)
            left -= widths[key]
    return [key for key, *_ in COLUMNS if key in chosen]


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
        self.widths = column_widths([])
        self.shown_columns: list[str] = []
        self._shown: list[RunRow] = []
        self._generation = 0

    def on_mount(self) -> None:
        """Columns, then the first poll."""
        self.redraw()
        self.poll_now()

    def on_resize(self, event: events.Resize) -> None:
        """Show the columns that fit the new width."""
        if fitting_columns(self.widths, event.size.width) != self.shown_columns:
            self.redraw()

    def load(self) -> tuple[list[RunRow], dict[str, int]]:
        """Runs from the store and the widths of their columns (worker thread)."""
        rows = load_runs(self.app.store, self.lost_after_s)
        return rows, column_widths(rows)

    def apply(self, data: tuple[list[RunRow], dict[str, int]]) -> None:
        """Keep the new rows and redraw."""
        self.all_rows, self.widths = data
        self.rows_by_id = {row.id: row for row in self.all_rows}
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
        columns = fitting_columns(self.widths, self.size.width)
        if columns == self.shown_columns and [row.id for row in rows] == [row.id for row in self._shown]:
            for old, new in zip(self._shown, rows):
                if old != new and str(new.id) in self.rows:  # rows still to be added get the new values
                    for key, render in self._renders():
                        self.update_cell(str(new.id), key, render(new))
            self._shown = rows
        else:
            current = self.current_run()
            self.clear(columns=columns != self.shown_columns)
            if columns != self.shown_columns:
                self.shown_columns = columns
                self.add_column(" ", key="mark", width=1)
                for key, label, _, _ in COLUMNS:
                    if key in columns:
                        self.add_column(label, key=key)
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
            self.add_row(MARK if row.id in self.marked else "", *(render(row) for _, render in self._renders()),
                         key=str(row.id))
            if row.id == cursor_id:
                self.move_cursor(row=self.row_count - 1)
        if end < len(self._shown):
            self.call_after_refresh(self._fill, end, generation, cursor_id)

    def _renders(self) -> list[tuple[str, Callable[[RunRow], Any]]]:
        return [(key, render) for key, _, render, _ in COLUMNS if key in self.shown_columns]

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
        keys = [None, *self.shown_columns]
        self.sort_by = keys[(keys.index(self.sort_by) + 1) % len(keys) if self.sort_by in keys else 0]
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
        if event.column_key.value in self.shown_columns:
            self.sort_on(event.column_key.value)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Tell the screen which run is current."""
        self.post_message(self.Highlighted(self.current_run()))

"""The main screen: the run history table with a filter box."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from dreamlab.tui.widgets.runs_table import RunsTable


class RunsScreen(Screen):
    """Runs, newest first: open one, see its evals, mark several to compare, launch, stop, filter, sort."""

    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("e", "evals", "Evals"),
        Binding("a", "app.all_evals", "All evals"),
        Binding("n", "new_run", "New run"),
        Binding("x", "stop", "Stop"),
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("r", "reverse", "Reverse", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def compose(self) -> ComposeResult:
        """Title line, filter box, table, key bar."""
        yield Static(f"dreamlab · runs in {self.app.store.path}", id="title")
        yield Input(placeholder="/ to filter by name, status, model, lr or sweep", id="filter")
        yield RunsTable(self.app.lost_after_s, id="runs")
        yield Static(self.empty_text(), id="empty")
        yield Footer()

    def empty_text(self) -> str:
        """What a newcomer can do in an empty store."""
        return (f"No runs yet in {self.app.store.path.resolve()}\n\n"
                "  n              start a run from here (the tiny CPU recipe by default)\n"
                "  dreamlab demo  (in a shell) trains and evaluates a first small run\n\n"
                "Another store: dreamlab --db PATH, or set DREAMLAB_DB.")

    def on_mount(self) -> None:
        """Keys go to the table first."""
        self.table.focus()

    @property
    def table(self) -> RunsTable:
        """The runs table."""
        return self.query_one(RunsTable)

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        """Filter as the user types."""
        self.table.filter_text = event.value
        self.table.redraw()

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        """Enter in the filter box goes back to the table."""
        self.table.focus()

    @on(RunsTable.Highlighted)
    def highlighted(self, event: RunsTable.Highlighted) -> None:
        """Title line: how many runs, how many shown, how many running; why the highlighted run is stalled or lost."""
        table = self.table
        running = sum(row.status == "running" for row in table.all_rows)
        shown = len(table.visible_rows())
        total = f"{len(table.all_rows)} run{'' if len(table.all_rows) == 1 else 's'}"
        counts = f"{shown} of {total}" if shown != len(table.all_rows) else total
        self.set_class(table.polls_applied > 0 and not table.all_rows, "-empty")
        marked = f", {len(table.marked)} marked" if table.marked else ""
        run = event.run
        where = f"{run.name} {run.status}: {run.reason}" if run and run.reason else str(self.app.store.path)
        self.query_one("#title", Static).update(f"dreamlab · {counts}, {running} running{marked} · {where}")

    @on(DataTable.RowSelected, "#runs")
    def row_selected(self) -> None:
        """Enter on a row opens it."""
        self.action_open()

    def action_open(self) -> None:
        """Open the run under the cursor."""
        run = self.table.current_run()
        if run is not None:
            self.app.open_run(run.id)

    def action_mark(self) -> None:
        """Mark / unmark the run under the cursor for compare."""
        self.table.toggle_mark()
        self.highlighted(RunsTable.Highlighted(self.table.current_run()))

    def action_compare(self) -> None:
        """Compare the marked runs (at least two)."""
        marked = [row.id for row in self.table.all_rows if row.id in self.table.marked]
        if len(marked) < 2:
            self.notify("mark two or more runs with space first", severity="warning")
            return
        self.app.compare_runs(marked)

    def action_evals(self) -> None:
        """Open the evals of the run under the cursor."""
        run = self.table.current_run()
        if run is not None:
            self.app.open_evals(run.id, run.name)

    def action_new_run(self) -> None:
        """Open the launch form."""
        self.app.action_new_run()

    def action_stop(self) -> None:
        """Stop the run under the cursor (after confirmation)."""
        run = self.table.current_run()
        if run is not None:
            self.app.confirm_stop(run.id, run.name, run.status)

    def action_filter(self) -> None:
        """Focus the filter box."""
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        """Empty the filter box and go back to the table."""
        self.query_one("#filter", Input).value = ""
        self.table.focus()

    def action_sort(self) -> None:
        """Sort by the next column."""
        self.notify(f"sorted {self.table.cycle_sort()}", timeout=2)

    def action_reverse(self) -> None:
        """Reverse the sort order."""
        self.table.sort_reverse = not self.table.sort_reverse
        self.table.redraw()

"""Runs side by side: the parameters that differ, the final metrics, and their loss curves overlaid."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from dreamlab.display import fmt_number, fmt_value
from dreamlab.tui.queries import LOSS_KEY, CompareData, load_compare
from dreamlab.tui.widgets.plots import CurvesPlot


class CompareScreen(Screen):
    """A table (differing params, then final metrics; one column per run) above the overlaid losses."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("r", "reload", "Reload")]

    class Loaded(Message):
        """The comparison arrived (or why it could not be made)."""

        def __init__(self, data: CompareData | None, error: str | None) -> None:
            super().__init__()
            self.data, self.error = data, error

    def __init__(self, run_ids: list[int]) -> None:
        super().__init__()
        self.run_ids = run_ids
        self.data: CompareData | None = None

    def compose(self) -> ComposeResult:
        """Title, table, plot, key bar."""
        yield Static(f"comparing {len(self.run_ids)} runs…", id="title")
        yield DataTable(id="compare-table", zebra_stripes=True)
        yield CurvesPlot(id="compare-plot")
        yield Footer()

    def on_mount(self) -> None:
        """Load in a worker."""
        self.action_reload()

    def action_reload(self) -> None:
        """Read the runs again."""
        self._load(list(self.run_ids))

    @work(thread=True, exclusive=True)
    def _load(self, run_ids: list[int]) -> None:
        try:
            self.post_message(self.Loaded(load_compare(self.app.store, run_ids), None))
        except Exception as failure:  # noqa: BLE001 - shown in the title line
            self.post_message(self.Loaded(None, f"{type(failure).__name__}: {failure}"))

    def on_compare_screen_loaded(self, message: Loaded) -> None:
        """Fill the table and the plot."""
        title = self.query_one("#title", Static)
        if message.error is not None or message.data is None:
            title.update(f"cannot compare: {message.error}")
            return
        self.data = data = message.data
        comparison = data.comparison
        title.update(f"{len(comparison.runs)} runs · {len(comparison.params)} params differ, "
                     f"{len(comparison.same_params)} the same")
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        table.add_column("", key="key")
        for run in comparison.runs:
            table.add_column(run.name, key=str(run.id))
        for key, values in comparison.params.items():
            table.add_row(key, *(fmt_value(value) for value in values), key=f"param:{key}")
        if not comparison.params:
            table.add_row("(no parameter differs)", *("" for _ in comparison.runs))
        for key in comparison.metric_keys():
            cells = []
            for metrics in comparison.final_metrics:
                point = metrics.get(key)
                cells.append("—" if point is None else f"{fmt_number(point[1])} @{point[0]}")
            table.add_row(f"final {key}", *cells, key=f"metric:{key}")
        self.query_one(CurvesPlot).show(LOSS_KEY, {run.name: data.losses[run.id] for run in comparison.runs})

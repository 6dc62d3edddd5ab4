"""One run: header, then tabs for the loss plot, GPUs, recipe, log, checkpoints and history."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane

from dreamlab.store import Run
from dreamlab.tui.widgets.gpu_panel import GpuPanel
from dreamlab.tui.widgets.log_tail import LogTail
from dreamlab.tui.widgets.plots import LossPlot
from dreamlab.tui.widgets.run_summary import RunSummaryView

TABS = ("loss", "gpu", "recipe", "log", "checkpoints", "history")


class RunDetailScreen(Screen):
    """Everything about one run, live."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("x", "stop", "Stop"),
        Binding("e", "evals", "Evals"),
        Binding("v", "evaluate", "Evaluate"),
        Binding("l", "tab('loss')", "Loss"),
        Binding("g", "tab('gpu')", "GPU"),
        Binding("p", "tab('recipe')", "Recipe"),
        Binding("o", "tab('log')", "Log"),
        Binding("k", "tab('checkpoints')", "Ckpts"),
        Binding("h", "tab('history')", "History"),
        Binding("y", "plot('log_y')", "Log scale", show=False),
        Binding("s", "plot('smooth')", "Smooth", show=False),
    ]

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        """Header, tabs, key bar."""
        yield RunSummaryView(self.run.id, id="summary")
        with TabbedContent(initial="loss"):
            with TabPane("Loss", id="loss"):
                yield LossPlot(self.run.id, id="loss-plot")
            with TabPane("GPU", id="gpu"):
                yield GpuPanel(self.run.id, id="gpu-panel")
            with TabPane("Recipe", id="recipe-tab"):
                with VerticalScroll():
                    yield Static("loading…", id="recipe")
            with TabPane("Log", id="log"):
                yield LogTail(Path(self.run.run_dir or ".") / "train.log", id="log-tail")
            with TabPane("Checkpoints", id="checkpoints-tab"):
                yield DataTable(id="checkpoints", cursor_type="row")
            with TabPane("History", id="history-tab"):
                yield DataTable(id="history", cursor_type="row")
        yield Footer()

    def action_tab(self, tab: str) -> None:
        """Switch tab by key."""
        self.query_one(TabbedContent).active = {"recipe": "recipe-tab", "checkpoints": "checkpoints-tab",
                                                   "history": "history-tab"}.get(tab, tab)

    def action_plot(self, setting: str) -> None:
        """Toggle the loss plot's log scale or smoothing (kept for the session)."""
        self.query_one(LossPlot).toggle(setting)

    def action_stop(self) -> None:
        """Stop this run (after confirmation)."""
        summary = self.query_one(RunSummaryView).summary
        run = summary.run if summary is not None else self.run
        self.app.confirm_stop(run.id, run.name, run.status)

    def action_evals(self) -> None:
        """Open this run's evals."""
        self.app.open_evals(self.run.id, self.run.name)

    def action_evaluate(self) -> None:
        """The eval form for this run's newest checkpoint."""
        self.app.open_eval_form(self.run.id, self.run.name)

    @on(DataTable.RowSelected, "#checkpoints")
    def checkpoint_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a checkpoint: the eval form for that checkpoint."""
        summary = self.query_one(RunSummaryView).summary
        checkpoints = summary.checkpoints if summary is not None else []
        if not 0 <= event.cursor_row < len(checkpoints):
            return
        checkpoint = checkpoints[event.cursor_row]
        if not checkpoint.complete:
            self.notify(f"checkpoint {checkpoint.step} is still being written", severity="warning")
            return
        self.app.open_eval_form(self.run.id, self.run.name, checkpoint.path)

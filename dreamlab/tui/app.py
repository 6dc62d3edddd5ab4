"""The dreamlab console: one factory builds the app for the CLI, `textual serve` and the tests."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message

from dreamlab.store import RunStore, StoreError
from dreamlab.evals.jobs import stop_job
from dreamlab.train.processes import stop_run
from dreamlab.tui.commands import ConsoleCommands
from dreamlab.tui.queries import RunRow
from dreamlab.tui.screens.compare import CompareScreen
from dreamlab.tui.screens.detail import RunDetailScreen
from dreamlab.tui.screens.dialogs import ConfirmScreen, ErrorScreen
from dreamlab.tui.screens.eval_compare import EvalCompareScreen
from dreamlab.tui.screens.eval_launch import EvalLaunchScreen
from dreamlab.tui.screens.evals import EvalsScreen, ReplayScreen, SamplesScreen
from dreamlab.tui.screens.help import HelpScreen
from dreamlab.tui.screens.launch import LaunchScreen
from dreamlab.tui.screens.runs import RunsScreen
from dreamlab.tui.widgets.plots import PlotView
from dreamlab.tui.widgets.polling import pollers

STOP_GRACE_S = 60.0


class DreamlabApp(App):
    """Runs, run detail, launch / stop, compare, evals; reads the store, never owns a run."""

    CSS_PATH = "app.tcss"
    TITLE = "dreamlab"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("ctrl+p", "command_palette", "Commands", show=False),
        Binding("q", "quit", "Quit"),
    ]

    class StopDone(Message):
        """A stop finished: what happened, or why it failed."""

        def __init__(self, name: str, summary: str | None, error: str | None) -> None:
            super().__init__()
            self.name, self.summary, self.error = name, summary, error

    def __init__(self, store: RunStore, *, lost_after_s: float | None = None, poll_s: float = 2.0) -> None:
        super().__init__()
        self.store = store
        self.lost_after_s = lost_after_s
        self.poll_s = poll_s
        self.plot_view = PlotView()  # log scale and smoothing of loss plots, kept for the session

    def on_mount(self) -> None:
        """The runs screen is home."""
        self.push_screen(RunsScreen())

    # -- navigation -----------------------------------------------------------------------------

    def runs_screen(self) -> RunsScreen | None:
        """The home screen (None before it mounted)."""
        return next((screen for screen in self.screen_stack if isinstance(screen, RunsScreen)), None)

    def known_runs(self) -> list[RunRow]:
        """The runs the table last loaded (for the command palette)."""
        home = self.runs_screen()
        return list(home.table.all_rows) if home is not None else []

    def open_run(self, run_id: int) -> None:
        """Push the detail screen of a run."""
        try:
            run = self.store.get_run(run_id)  # one indexed row: cheap enough for a key press
        except StoreError as error:
            self.push_screen(ErrorScreen("cannot open run", str(error)))
            return
        self.push_screen(RunDetailScreen(run))

    def open_evals(self, run_id: int | None, run_name: str | None) -> None:
        """Push the evals screen of a run (its eval jobs, accuracy grid, samples and replays); None: every eval."""
        self.push_screen(EvalsScreen(run_id, run_name))

    def action_all_evals(self) -> None:
        """Every eval job and eval in the store, whatever model it evaluated."""
        self.open_evals(None, None)

    def current_run(self) -> tuple[int, str] | None:
        """(id, name) of the run on screen: the detail screen's run, else the runs table's cursor row."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, RunDetailScreen):
                return screen.run.id, screen.run.name
            if isinstance(screen, RunsScreen):
                row = screen.table.current_run()
                return None if row is None else (row.id, row.name)
        return None

    def action_evals(self) -> None:
        """Open the evals of the run on screen."""
        current = self.current_run()
        if current is None:
            self.notify("no run selected: open a run or move the cursor to one first", severity="warning")
            return
        self.open_evals(*current)

    def compare_runs(self, run_ids: list[int]) -> None:
        """Push the compare screen."""
        self.push_screen(CompareScreen(run_ids))

    def action_compare_marked(self) -> None:
        """Compare the runs marked in the runs table."""
        home = self.runs_screen()
        if home is not None:
            home.action_compare()

    def action_show_runs(self) -> None:
        """Back to the runs screen."""
        while len(self.screen_stack) > 2:
            self.pop_screen()

    def action_help(self) -> None:
        """Every key binding, grouped by screen."""
        sections = [("Everywhere", self.BINDINGS), ("Runs", RunsScreen.BINDINGS),
                    ("Run detail", RunDetailScreen.BINDINGS), ("Compare", CompareScreen.BINDINGS),
                    ("New run", LaunchScreen.BINDINGS), ("Evals", EvalsScreen.BINDINGS),
                    ("Eval samples", SamplesScreen.BINDINGS), ("Denoising replay", ReplayScreen.BINDINGS),
                    ("New eval", EvalLaunchScreen.BINDINGS), ("Eval compare", EvalCompareScreen.BINDINGS)]
        self.push_screen(HelpScreen(sections))

    # -- launch and stop ------------------------------------------------------------------------

    def action_new_run(self) -> None:
        """Open the launch form; a started run shows up in the table at once."""
        def launched(name: str | None) -> None:
            if name:
                self.notify(f"started {name}, detached (closing the console does not stop it)")
                self.refresh_pollers()
        self.push_screen(LaunchScreen(), launched)

    def confirm_stop(self, run_id: int, name: str, status: str) -> None:
        """Ask, then stop the run (SIGTERM, a checkpoint, stopped; SIGKILL after the grace)."""
        if status not in ("running", "stalled", "lost"):
            self.notify(f"{name} is not running ({status})", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(f"stopping {name}…")
                self._stop_worker(run_id, name)
        self.push_screen(ConfirmScreen(f"Stop run {name}?", f"SIGTERM to its processes: it finishes the step, "
                                       f"writes a checkpoint and ends as stopped (SIGKILL after {STOP_GRACE_S:g} s)."),
                         answered)

    def open_eval_form(self, run_id: int, run_name: str, checkpoint: str | None = None) -> None:
        """The eval form for a run's newest checkpoint (or one checkpoint); the job runs detached."""
        def started(job_id: int | None) -> None:
            if job_id is not None:
                self.notify(f"started eval job {job_id}, detached (closing the console does not stop it)")
                self.refresh_pollers()
        self.push_screen(EvalLaunchScreen(run_id, run_name, checkpoint), started)

    def confirm_stop_eval(self, job_id: int, status: str) -> None:
        """Ask, then stop the eval job (SIGTERM: it ends stopped, its finished samples kept)."""
        if status not in ("running", "lost"):
            self.notify(f"eval job {job_id} is not running ({status})", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(f"stopping eval job {job_id}…")
                self._stop_eval_worker(job_id)
        self.push_screen(ConfirmScreen(f"Stop eval job {job_id}?", "SIGTERM to its processes: it ends stopped with its "
                                       "finished samples kept (the same command resumes it)."), answered)

    @work(thread=True, group="stop")
    def _stop_eval_worker(self, job_id: int) -> None:
        name = f"eval job {job_id}"
        try:
            result = stop_job(self.store, job_id, grace_s=STOP_GRACE_S)
        except Exception as failure:  # noqa: BLE001 - reported in the error dialog
            self.post_message(self.StopDone(name, None, str(failure)))
            return
        summary = f"{name}: {' then '.join(result.signals) or 'already gone'}, stopped"
        self.post_message(self.StopDone(name, summary, None))

    @work(thread=True, group="stop")
    def _stop_worker(self, run_id: int, name: str) -> None:
        try:
            result = stop_run(self.store, run_id, grace_s=STOP_GRACE_S)
        except Exception as failure:  # noqa: BLE001 - reported in the error dialog
            self.post_message(self.StopDone(name, None, str(failure)))
            return
        summary = f"{name}: {' then '.join(result.signals) or 'already gone'}, " + (
            "stopped" if result.marked_stopped else "it had already ended")
        self.post_message(self.StopDone(name, summary, None))

    def on_dreamlab_app_stop_done(self, message: StopDone) -> None:
        """Report the stop; refresh what is on screen."""
        if message.error is not None:
            self.push_screen(ErrorScreen(f"cannot stop {message.name}", message.error))
        else:
            self.notify(message.summary or "")
        self.refresh_pollers()

    def refresh_pollers(self) -> None:
        """Poll every polling widget of every screen now."""
        for screen in self.screen_stack:
            for widget in pollers(screen):
                widget.poll_now()


def build_app(db: str | Path, *, lost_after_s: float | None = None, poll_s: float = 2.0) -> DreamlabApp:
    """The console on the store at `db` (created if missing); lost_after_s None: each run's trainer.lost_after_s."""
    return DreamlabApp(RunStore(db), lost_after_s=lost_after_s, poll_s=poll_s)

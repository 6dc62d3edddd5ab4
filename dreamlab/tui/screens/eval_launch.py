"""The eval form: evaluate a run's newest checkpoint (or one checkpoint) on a task, as a detached eval job.

The job is the `dreamlab eval` command line the form builds, started in its own session: closing the
console does not stop it, and the evals screen (or `dreamlab evals list`) watches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static
from textual.worker import get_current_worker

from dreamlab.evals.tasks import available_tasks

DEFAULT_TASK = "arithmetic"


@dataclass(frozen=True)
class EvalRequest:
    """What the form holds: the weights (`--run NAME` or `--model PATH`) and the eval's options as typed."""

    weights: tuple[str, str]
    task: str
    algs: str = ""
    steps: str = ""
    batch_size: str = "16"
    processes: str = "1"
    limit: str = ""

    def argv(self) -> list[str]:
        """The `dreamlab eval` options (ValueError naming the field when a number is not one)."""
        argv = [*self.weights, "--task", self.task]
        for flag, value in (("--alg", self.algs), ("--steps", self.steps)):
            if value.strip():
                argv += [flag, value.replace(" ", "")]
        batch_size = _count("batch size", self.batch_size)
        processes = _count("processes", self.processes)
        argv += ["--batch-size", str(batch_size)]
        if self.limit.strip():
            argv += ["--limit", str(_count("limit", self.limit))]
        if processes > 1:  # data-parallel under torchrun: `dreamlab eval --nproc-per-node` (issue 17, item 1)
            argv += ["--nproc-per-node", str(processes)]
        return argv


def _count(field: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{field}: a whole number, not {text.strip()!r}") from None
    if value < 1:
        raise ValueError(f"{field}: at least 1, not {value}")
    return value


def check(request: EvalRequest) -> str:
    """Everything `dreamlab eval` refuses about the task and the grid, as an exception; a summary when it would start."""
    from dreamlab.evals.grid import grid_cells
    from dreamlab.evals.tasks import load_task

    argv = request.argv()
    spec = load_task(request.task)
    template, shots = spec.prompt_shape(None, None)
    cells = grid_cells({"alg": request.algs.replace(" ", "") or None, "steps": request.steps.replace(" ", "") or None},
                       spec.settings_for(template), spec.name)
    return f"ok: {len(cells)} cell(s) of {spec.name} ({shots} shots) · dreamlab eval {' '.join(argv)}"


class EvalLaunchScreen(ModalScreen[int | None]):
    """The eval form; dismisses with the started job's id (None when cancelled)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "start", "Start")]

    class Checked(Message):
        """A validation finished: `error` is None when the request would start."""

        def __init__(self, request: EvalRequest, error: str | None, summary: str = "") -> None:
            super().__init__()
            self.request, self.error, self.summary = request, error, summary

    class Started(Message):
        """A start finished: the job's id, or why nothing started."""

        def __init__(self, job_id: int | None, error: str | None) -> None:
            super().__init__()
            self.job_id, self.error = job_id, error

    def __init__(self, run_id: int, run_name: str, checkpoint: str | None = None) -> None:
        super().__init__()
        self.run_id, self.run_name, self.checkpoint = run_id, run_name, checkpoint
        self.starting = False

    @property
    def weights(self) -> tuple[str, str]:
        """`--model CHECKPOINT` for a chosen checkpoint, else `--run NAME` (its newest complete one)."""
        return ("--model", self.checkpoint) if self.checkpoint else ("--run", self.run_name)

    def compose(self) -> ComposeResult:
        """Task, algorithms, steps, batch size, processes, limit; the verdict; buttons."""
        with Vertical(id="launch-form"):
            what = f"checkpoint {self.checkpoint}" if self.checkpoint else f"run {self.run_name} (newest checkpoint)"
            yield Label(f"Evaluate {what}", classes="form-title")
            tasks = available_tasks()
            yield Select([(name, name) for name in tasks], allow_blank=False, id="task",
                         value=DEFAULT_TASK if DEFAULT_TASK in tasks else tasks[0])
            yield Input(placeholder="algorithms: entropy,origin (empty: the task's)", id="algs")
            yield Input(placeholder="steps: 16,32 (empty: the task's)", id="steps")
            with Horizontal(classes="form-row"):
                yield Input("16", placeholder="batch size", id="batch-size")
                yield Input("1", placeholder="processes", id="processes")
                yield Input(placeholder="limit (empty: all)", id="limit")
            yield Static("", id="launch-error")
            with Horizontal(id="launch-buttons"):
                yield Button("Start (ctrl+s)", variant="primary", id="start")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        """Check the default request."""
        self.query_one("#algs", Input).focus()
        self.revalidate()

    def request(self) -> EvalRequest:
        """What the form holds now."""
        value = lambda name: self.query_one(f"#{name}", Input).value  # noqa: E731
        return EvalRequest(self.weights, str(self.query_one("#task", Select).value), value("algs"), value("steps"),
                           value("batch-size"), value("processes"), value("limit"))

    @on(Input.Changed)
    @on(Select.Changed)
    def revalidate(self) -> None:
        """Check the request as the user edits it."""
        self._check_worker(self.request())

    @work(thread=True, exclusive=True, group="check")
    def _check_worker(self, request: EvalRequest) -> None:
        try:
            summary, error = check(request), None
        except Exception as failure:  # noqa: BLE001 - TaskError, ValueError: shown in place
            summary, error = "", str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
        if not get_current_worker().is_cancelled:
            self.post_message(self.Checked(request, error, summary))

    def on_eval_launch_screen_checked(self, message: Checked) -> None:
        """Show the verdict if it is about what the form holds now."""
        if message.request == self.request() and not self.starting:
            self.show_verdict(message.error, message.summary)

    def show_verdict(self, error: str | None, summary: str = "") -> None:
        """Red error text, or the green summary of what would start."""
        verdict = self.query_one("#launch-error", Static)
        verdict.set_class(error is not None, "error")
        verdict.update(f"error: {error}" if error is not None else summary)

    @on(Button.Pressed, "#start")
    @on(Input.Submitted)
    def action_start(self) -> None:
        """Check once more and start the eval detached."""
        if self.starting:
            return
        self.starting = True
        self.show_verdict(None, "starting…")
        self._start_worker(self.request())

    @work(thread=True, exclusive=True, group="start")
    def _start_worker(self, request: EvalRequest) -> None:
        from dreamlab.evals.jobs import start_detached

        try:
            check(request)
            job = start_detached(self.app.store, request.argv(), run_id=self.run_id,
                                 model=self.checkpoint or self.run_name, task=request.task)
        except Exception as failure:  # noqa: BLE001 - nothing started: say why, in place
            self.post_message(self.Started(None, str(failure)))
            return
        self.post_message(self.Started(job.id, None))

    def on_eval_launch_screen_started(self, message: Started) -> None:
        """Close with the job's id, or show why nothing started."""
        self.starting = False
        if message.error is not None:
            self.show_verdict(message.error)
        else:
            self.dismiss(message.job_id)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        """Close without starting anything."""
        self.dismiss(None)

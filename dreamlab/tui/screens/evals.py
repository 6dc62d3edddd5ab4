"""Evaluations of one run (or of the whole store): its eval jobs, live, the accuracy grid (algorithms x steps, with
NFE), samples, denoising replay; two marked cells compared.

The jobs table and the grid are polled together (running cells show samples done and accuracy so far); a
job's status is assessed as read (lost when its process died silently), never written by the console.

Cells that set blocks, a cache or a decoding rule get their own grid row (`entropy · cache dual`), and
when cells recorded their speed, the accuracy-vs-answer-tokens/s frontier is plotted under the grid.

Reads the eval store (migration v3): `RunStore.list_evals(run_ref=...)` -> EvalRecord (task, alg, steps,
accuracy, strict_accuracy, flexible_accuracy, ci_low, ci_high, nfe_mean, status, checkpoint, model, ...) and
`RunStore.eval_samples(eval_id)` -> dicts (idx, question, gold, generation, cut_at, extracted, correct,
strict_correct, strict_extracted, flexible_correct, flexible_extracted, nfe, seconds, leftover_masks, history:
the generated tokens after each step, kept for the first samples of an eval run with `dreamlab eval --history`).
A cell whose model and settings match a result the task file lists as published shows it beside the measured one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Static

from dreamlab.display import MASK_GLYPH, STATUS_STYLES, fmt_number, render_with_masks
from dreamlab.evals.grid import extra_settings
from dreamlab.evals.published import published_note
from dreamlab.tui.queries import EvalJobRow, EvalsView, duration, load_evals_view
from dreamlab.tui.screens.eval_compare import EvalCompareScreen
from dreamlab.tui.widgets.plots import FrontierPlot
from dreamlab.tui.widgets.polling import Polling


@dataclass(frozen=True)
class Grid:
    """Evals arranged as rows (task, alg) by columns (steps); cells hold eval records."""

    rows: list[tuple[str, str]]
    steps: list[int]
    cells: dict[tuple[str, str, int], Any]


def build_grid(evals: list[Any]) -> Grid:
    """Place each eval at (task, alg and its extra settings) x steps; the newest eval wins a cell evaluated twice."""
    cells: dict[tuple[str, str, int], Any] = {}
    for record in sorted(evals, key=lambda e: (e.started or 0, e.id)):
        row = " · ".join([record.alg or "—", *extra_settings(record)])
        cells[(record.task, row, int(record.steps or 0))] = record
    rows = sorted({(task, alg) for task, alg, _ in cells})
    steps = sorted({step for _, _, step in cells})
    return Grid(rows, steps, cells)


def cell_text(record: Any) -> Text:
    """`72.5% ±3.1 nfe 64` (or the eval's status while it has no accuracy)."""
    if record.accuracy is None:
        return Text(str(record.status), style="dim")
    text = Text(f"{100 * record.accuracy:.1f}%")
    if record.ci_low is not None and record.ci_high is not None:
        text.append(f" ±{50 * (record.ci_high - record.ci_low):.1f}", style="dim")
    if record.nfe_mean is not None:
        text.append(f" nfe {record.nfe_mean:.0f}", style="cyan")
    if record.strict_accuracy is not None and record.flexible_accuracy is not None:
        text.append(f" lm-eval {100 * record.strict_accuracy:.1f}/{100 * record.flexible_accuracy:.1f}", style="dim")
    note = published_note(record)  # the task file was read by the loading worker (cached)
    if note is not None:
        text.append(f" · {note}", style="magenta")
    return text


def verdict(sample: dict[str, Any]) -> Text:
    """✓ / ✗ for the main verdict, lm-eval's strict one (· when the task has none) and the flexible one."""
    def mark(value: Any) -> tuple[str, str]:
        return ("✓", "green") if value else ("✗", "red") if value is not None else ("·", "dim")
    return Text.assemble(mark(sample.get("correct")), " ", mark(sample.get("strict_correct")), " ",
                         mark(sample.get("flexible_correct")))


def generation_text(sample: dict[str, Any]) -> Text:
    """The raw generation; where a stop string cut it, the part that was not scored follows ✂, dimmed."""
    generation, cut_at = shown(sample.get("generation")), sample.get("cut_at")
    if cut_at is None or sample.get("generation") is None:
        return Text(generation)
    return Text.assemble(generation[:cut_at], ("✂", "bold red"), (generation[cut_at:], "dim"))


def shown(value: Any) -> str:
    """A sample field as text: '—' for a missing one (no answer extracted, say)."""
    return "—" if value is None else str(value)


# The samples list's filters, in the order `f` cycles through them.
SAMPLE_FILTERS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "all": lambda sample: True,
    "wrong": lambda sample: not sample.get("correct"),
    # lm-eval's strict verdict where the task has one, else the main verdict, against the flexible one.
    "strict ≠ flexible": lambda sample: (sample.get("flexible_correct") is not None and bool(
        sample["strict_correct"] if sample.get("strict_correct") is not None else sample.get("correct"))
        != bool(sample.get("flexible_correct"))),
    "leftover masks": lambda sample: bool(sample.get("leftover_masks")),
}


def history_of(sample: dict[str, Any]) -> list[list[int]]:
    """The per-step token ids of a sample generated with history (the store may hand back JSON text)."""
    history = sample.get("history")
    if isinstance(history, str):
        history = json.loads(history)
    return list(history or [])


def tokenizer_of(record: Any) -> Any:
    """The tokenizer the eval used: its checkpoint's (as `dreamlab eval` loads it), else the model spec's."""
    from dreamlab.models.loading import load_tokenizer
    from dreamlab.models.tokenizer import build_char_tokenizer
    from dreamlab.models.tiny import TINY_NAME

    if record.checkpoint is None and record.model in (None, TINY_NAME):
        return build_char_tokenizer()
    source = Path(str(record.checkpoint or record.model))
    if record.checkpoint is not None and (source / "model").is_dir():  # a checkpoint folder rather than its model/
        source = source / "model"
    if record.checkpoint is not None and not (source / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {source} is gone (moved or deleted since the eval)")
    return load_tokenizer(str(source))


def job_cells(row: EvalJobRow) -> list[Any]:
    """One jobs-table line: id, status, task, done / total, accuracy so far, ETA, model."""
    job = row.job
    done = f"{job.n_done}/{job.n_total}" if job.n_total else f"{job.n_done}/?"
    accuracy = "—" if row.accuracy is None else f"{100 * row.accuracy:.1f}%"
    return [str(job.id), Text(row.status, style=STATUS_STYLES.get(row.status, "")), job.task or "—", done, accuracy,
            duration(row.eta_s) if row.eta_s is not None else "—", job.model or "—"]


class EvalJobsTable(DataTable, Polling):
    """The recent eval jobs, live (progress, accuracy so far, ETA); each poll also feeds the screen's grid."""

    rows_shown: list[EvalJobRow] = []  # the jobs as listed (replaced, never mutated)

    def load(self) -> EvalsView:
        """Jobs and eval rows (worker thread)."""
        return load_evals_view(self.app.store, self.screen.run_id)

    def apply(self, data: EvalsView) -> None:
        """Redraw the jobs, then hand the eval rows to the screen."""
        self.rows_shown = data.jobs
        row = self.cursor_row
        if not self.columns:
            self.add_columns("job", "status", "task", "done", "accuracy", "eta", "model")
        self.clear()
        for job_row in data.jobs:
            self.add_row(*job_cells(job_row), key=str(job_row.job.id))
        self.display = bool(data.jobs)
        if data.jobs:
            self.move_cursor(row=min(row, len(data.jobs) - 1))
        self.screen.show_evals(data.evals)

    def current_job(self) -> EvalJobRow | None:
        """The job under the cursor."""
        if not self.rows_shown or not 0 <= self.cursor_row < len(self.rows_shown):
            return None
        return self.rows_shown[self.cursor_row]


class EvalsScreen(Screen):
    """A run's eval jobs (live) and accuracy grid (or every eval in the store); enter on a cell opens its samples."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("enter", "samples", "Samples"),
                Binding("m", "mark", "Mark"), Binding("c", "compare", "Compare"), Binding("n", "new_eval", "New eval"),
                Binding("x", "stop", "Stop eval")]

    def __init__(self, run_id: int | None, run_name: str | None) -> None:
        super().__init__()
        self.run_id, self.run_name = run_id, run_name
        self.grid = Grid([], [], {})
        self.evals: list[Any] | None = None
        self.marked: list[int] = []  # eval ids, at most two (the compare pair), oldest first

    @property
    def subject(self) -> str:
        """`alpha` or `the store`."""
        return self.run_name if self.run_name is not None else "the store"

    def compose(self) -> ComposeResult:
        """Title, jobs, grid, key bar."""
        yield Static(f"evals of {self.subject}…", id="title")
        yield EvalJobsTable(id="eval-jobs", cursor_type="row")
        yield DataTable(id="eval-grid", cursor_type="cell")
        yield FrontierPlot(id="frontier")
        yield Footer()

    def on_mount(self) -> None:
        """First poll; the grid takes the keys."""
        self.query_one("#frontier", FrontierPlot).display = False
        self.query_one("#eval-jobs", EvalJobsTable).display = False
        self.query_one("#eval-grid", DataTable).focus()
        self.query_one("#eval-jobs", EvalJobsTable).poll_now()

    def show_evals(self, evals: list[Any]) -> None:
        """Draw the grid (one row per (task, alg), one column per steps) when the eval rows changed; keep the cursor."""
        if evals == self.evals:
            return
        self.evals = evals
        self.grid = grid = build_grid(evals)
        self.update_title()
        table = self.query_one("#eval-grid", DataTable)
        cursor = table.cursor_coordinate
        table.clear(columns=True)
        table.add_column("task / alg", key="row")
        for step in grid.steps:
            table.add_column(f"{step} steps", key=str(step))
        for task, alg in grid.rows:
            table.add_row(f"{task} / {alg}", *(self.cell(grid.cells[(task, alg, step)])
                                              if (task, alg, step) in grid.cells else "—" for step in grid.steps))
        if grid.rows:
            table.move_cursor(row=min(cursor.row, len(grid.rows) - 1), column=min(cursor.column, len(grid.steps)))
        plot = self.query_one("#frontier", FrontierPlot)
        plot.display = plot.show(list(grid.cells.values())) > 1

    def cell(self, record: Any) -> Text:
        """A grid cell: accuracy (or progress while it runs), ● when marked for compare."""
        text = cell_text(record)
        if record.status == "running" and record.n_samples:
            text = Text(f"{record.n_done}/{record.n_samples}", style="bold cyan")
            if record.n_done:
                text.append(f" {100 * record.n_correct / record.n_done:.1f}%")
        return Text("● ", style="bold magenta") + text if record.id in self.marked else text

    def update_title(self) -> None:
        """What is on screen and which keys act on it."""
        marked = f" · marked {', '.join(str(i) for i in self.marked)}" if self.marked else ""
        self.query_one("#title", Static).update(
            f"evals of {self.subject}: {len(self.grid.cells)} · accuracy ±95% CI, mean NFE · enter: samples · "
            f"m mark, c compare{marked}" if self.grid.cells else f"no evals of {self.subject} yet (n: new eval)")

    def record_under_cursor(self) -> Any:
        """The eval of the grid cell under the cursor (None on the label column or an empty cell)."""
        table = self.query_one("#eval-grid", DataTable)
        row, column = table.cursor_coordinate
        if not self.grid.rows or column == 0 or row >= len(self.grid.rows) or column > len(self.grid.steps):
            return None
        return self.grid.cells.get((*self.grid.rows[row], self.grid.steps[column - 1]))

    def action_samples(self) -> None:
        """Open the samples of the eval under the cursor."""
        record = self.record_under_cursor()
        if record is not None:
            self.app.push_screen(SamplesScreen(record))

    @on(DataTable.CellSelected, "#eval-grid")
    def cell_selected(self) -> None:
        """Enter (or a click) on a cell opens its samples."""
        self.action_samples()

    def action_mark(self) -> None:
        """Mark (or unmark) the cell under the cursor for compare; a third mark drops the oldest."""
        record = self.record_under_cursor()
        if record is None:
            return
        if record.id in self.marked:
            self.marked.remove(record.id)
        else:
            self.marked = [*self.marked, record.id][-2:]
        evals, self.evals = self.evals, None
        self.show_evals(evals or [])  # redraw the marks
        self.update_title()

    def action_compare(self) -> None:
        """Compare the two marked evals: McNemar's p-value and the samples whose verdicts differ."""
        if len(self.marked) != 2:
            self.notify("mark two evals with m first", severity="warning")
            return
        by_id = {record.id: record for record in self.evals or []}
        self.app.push_screen(EvalCompareScreen(by_id[self.marked[0]], by_id[self.marked[1]]))

    def action_new_eval(self) -> None:
        """Start an eval of this run (detached)."""
        if self.run_id is None:
            self.notify("open a run's evals (or its Checkpoints tab) to start an eval of it", severity="warning")
            return
        self.app.open_eval_form(self.run_id, self.run_name or str(self.run_id))

    def action_stop(self) -> None:
        """Stop the eval job under the jobs table's cursor (after confirmation)."""
        row = self.query_one("#eval-jobs", EvalJobsTable).current_job()
        if row is None:
            self.notify("no eval job here", severity="warning")
            return
        self.app.confirm_stop_eval(row.job.id, row.status)


class SamplesScreen(Screen):
    """One eval's samples: a list, and the highlighted one in full (question, generation, answers, verdicts)."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("d", "replay", "Replay denoising"),
                Binding("f", "filter", "Filter"), Binding("w", "next_wrong", "Next wrong")]

    class Loaded(Message):
        """The samples arrived (or why not)."""

        def __init__(self, samples: list[dict[str, Any]] | None, error: str | None) -> None:
            super().__init__()
            self.samples, self.error = samples, error

    def __init__(self, record: Any) -> None:
        super().__init__()
        self.record = record
        self.samples: list[dict[str, Any]] = []
        self.filter = "all"
        self.listed: list[dict[str, Any]] = []  # the samples the filter keeps, as listed

    def compose(self) -> ComposeResult:
        """List above, detail below."""
        yield Static(self.title_text(), id="title")
        yield DataTable(id="samples", cursor_type="row", zebra_stripes=True)
        yield Static("", id="sample-detail")
        yield Footer()

    def on_mount(self) -> None:
        """Load in a worker."""
        self._load()

    @work(thread=True, exclusive=True)
    def _load(self) -> None:
        try:
            self.post_message(self.Loaded(self.app.store.eval_samples(self.record.id), None))
        except Exception as failure:  # noqa: BLE001 - shown in the title
            self.post_message(self.Loaded(None, f"{type(failure).__name__}: {failure}"))

    def on_samples_screen_loaded(self, message: Loaded) -> None:
        """One row per sample: index, verdicts, extracted, gold, NFE, replay available."""
        if message.error is not None:
            self.query_one("#title", Static).update(f"cannot read samples: {message.error}")
            return
        self.samples = message.samples or []
        self.list_samples()

    def title_text(self) -> str:
        """The eval's settings, the filter and how many samples it keeps."""
        return (f"{self.record.task} · {self.record.alg} · {self.record.steps} steps · "
                f"{self.filter}: {len(self.listed)} of {len(self.samples)}")

    def list_samples(self) -> None:
        """(Re)list the samples the filter keeps."""
        self.listed = [sample for sample in self.samples if SAMPLE_FILTERS[self.filter](sample)]
        table = self.query_one("#samples", DataTable)
        table.clear(columns=True)
        table.add_columns("#", "ok", "extracted", "gold", "nfe", "replay")
        for sample in self.listed:
            table.add_row(sample.get("idx"), verdict(sample), shown(sample.get("extracted")), shown(sample.get("gold")),
                          fmt_number(sample.get("nfe")), "yes" if sample.get("history") else "")
        self.query_one("#title", Static).update(self.title_text())
        self.query_one("#sample-detail", Static).update("" if self.listed else f"no sample is {self.filter}")
        self.show_sample(0)

    def action_filter(self) -> None:
        """Next filter: all, wrong, strict ≠ flexible, leftover masks."""
        names = list(SAMPLE_FILTERS)
        self.filter = names[(names.index(self.filter) + 1) % len(names)]
        self.list_samples()

    def action_next_wrong(self) -> None:
        """Move the cursor to the next wrong sample in the list (wrapping around)."""
        table = self.query_one("#samples", DataTable)
        count = len(self.listed)
        after = [(table.cursor_row + step) % count for step in range(1, count + 1)]
        found = next((row for row in after if not self.listed[row].get("correct")), None)
        if found is None:
            self.notify("no wrong sample in this list", severity="warning")
        else:
            table.move_cursor(row=found)

    @on(DataTable.RowHighlighted, "#samples")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Show the highlighted sample in full."""
        self.show_sample(event.cursor_row)

    def show_sample(self, index: int) -> None:
        """Question, generation, extracted answers and verdicts of one sample."""
        if not 0 <= index < len(self.listed):
            return
        sample = self.listed[index]
        text = Text()
        for label, key in (("question", "question"), ("generation", "generation"), ("extracted", "extracted"),
                           ("lm-eval strict", "strict_extracted"), ("flexible", "flexible_extracted"), ("gold", "gold")):
            text.append(f"{label}: ", style="bold")
            text.append_text(generation_text(sample) if key == "generation" else Text(shown(sample.get(key))))
            text.append("\n")
        if sample.get("cut_at") is not None:
            text.append(f"cut at character {sample['cut_at']} by a stop string (scored: the text before ✂)\n", style="dim")
        text.append("main / lm-eval strict / flexible: ", style="bold")
        text.append_text(verdict(sample))
        text.append(f"   nfe {fmt_number(sample.get('nfe'))}  {fmt_number(sample.get('seconds'))} s  "
                    f"leftover masks {fmt_number(sample.get('leftover_masks'))}")
        self.query_one("#sample-detail", Static).update(text)

    def action_replay(self) -> None:
        """Replay the denoising of the highlighted sample, if it was generated with history."""
        table = self.query_one("#samples", DataTable)
        if not self.listed:
            return
        sample = self.listed[table.cursor_row]
        if not sample.get("history"):
            self.notify("this sample was generated without history", severity="warning")
            return
        self.app.push_screen(ReplayScreen(self.record, sample))


class ReplayScreen(Screen):
    """The masks of one generation filling in, step by step (space plays, arrows step)."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"), Binding("space", "play", "Play/pause"),
        Binding("left", "step(-1)", "Step back"), Binding("right", "step(1)", "Step"),
        Binding("home", "jump(0)", "First"), Binding("end", "jump(-1)", "Last"),
    ]

    class Ready(Message):
        """The tokenizer is loaded: each step rendered as text (or why not)."""

        def __init__(self, frames: list[str] | None, error: str | None) -> None:
            super().__init__()
            self.frames, self.error = frames, error

    def __init__(self, record: Any, sample: dict[str, Any]) -> None:
        super().__init__()
        self.record, self.sample = record, sample
        self.frames: list[str] = []
        self.position = 0
        self.player: Timer | None = None

    def compose(self) -> ComposeResult:
        """Step line, the text, key bar."""
        yield Static("loading the tokenizer…", id="title")
        yield Static("", id="replay-text")
        yield Footer()

    def on_mount(self) -> None:
        """Decode every step in a worker (the tokenizer comes from the evaluated checkpoint)."""
        self._decode()

    @work(thread=True, exclusive=True)
    def _decode(self) -> None:
        try:
            tokenizer = tokenizer_of(self.record)
            frames = [render_with_masks(tokenizer, ids, tokenizer.mask_token_id) for ids in history_of(self.sample)]
            self.post_message(self.Ready(frames, None))
        except Exception as failure:  # noqa: BLE001 - shown in place
            self.post_message(self.Ready(None, f"{type(failure).__name__}: {failure}"))

    def on_replay_screen_ready(self, message: Ready) -> None:
        """Show the first step."""
        if message.error is not None:
            self.query_one("#title", Static).update(f"cannot replay: {message.error}")
            return
        self.frames = message.frames or []
        self.show(0)

    def show(self, position: int) -> None:
        """Draw step `position` (clamped)."""
        if not self.frames:
            return
        self.position = max(0, min(position, len(self.frames) - 1))
        frame = self.frames[self.position]
        self.query_one("#title", Static).update(
            f"sample {self.sample.get('idx')} · step {self.position + 1}/{len(self.frames)} · "
            f"{frame.count(MASK_GLYPH)} masks left")
        self.query_one("#replay-text", Static).update(Text(frame))

    def action_step(self, delta: int) -> None:
        """One step forward or back (pauses playing, else the next tick would undo the step)."""
        self._pause()
        self.show(self.position + delta)

    def action_jump(self, position: int) -> None:
        """First or last step (pauses playing)."""
        self._pause()
        self.show(position if position >= 0 else len(self.frames) - 1)

    def action_play(self) -> None:
        """Play from here (from the start at the end), or pause."""
        if self.player is not None:
            self._pause()
            return
        if self.position >= len(self.frames) - 1:
            self.show(0)
        self.player = self.set_interval(0.15, self._advance)

    def _pause(self) -> None:
        if self.player is not None:
            self.player.stop()
            self.player = None

    def _advance(self) -> None:
        self.show(self.position + 1)
        if self.position >= len(self.frames) - 1:  # stop on the last frame itself, not one tick later
            self._pause()

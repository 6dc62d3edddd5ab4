"""A run's header line (status, step, heartbeat age), recipe, checkpoints and history, polled together."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import DataTable, Static

from dreamlab.display import STATUS_STYLES, fmt_duration, fmt_number, fmt_value, fmt_when
from dreamlab.tui.queries import LOSS_KEY, RunSummary, age, load_summary
from dreamlab.tui.widgets.polling import Polling


def header_text(summary: RunSummary, now: float | None = None) -> Text:
    """`name  status  step N/T  loss  heartbeat 3 s ago  running 2m10s` (plus why it is stalled, lost or ended)."""
    run = summary.run
    now = time.time() if now is None else now
    steps = max((step for step, _ in summary.latest.values()), default=None)
    total = summary.latest.get("trainer/total_steps")
    loss = summary.latest.get(LOSS_KEY)
    health = summary.health
    text = Text.assemble((run.name, "bold"), "  ", (health.status, STATUS_STYLES.get(health.status, "")))
    text.append(f"  step {fmt_number(steps)}" + (f"/{int(total[1])}" if total else ""))
    if loss is not None:
        text.append(f"  loss {fmt_number(loss[1])}")
    text.append(f"  heartbeat {age(run.heartbeat, now)} ago" if run.heartbeat else "  no heartbeat yet")
    text.append(f"  {fmt_duration(run.duration(now))}")
    reason = health.reason or run.exit_reason
    if reason:
        text.append(f"\n{reason}", style="italic")
    return text


class RunSummaryView(Static, Polling):
    """The header line; feeds the recipe, checkpoint and history panes of the same screen."""

    def __init__(self, run_id: int, **kwargs) -> None:
        super().__init__("loading…", **kwargs)
        self.run_id = run_id
        self.summary: RunSummary | None = None

    def on_mount(self) -> None:
        """First poll."""
        self.poll_now()

    def load(self) -> RunSummary:
        """Record, params, checkpoints, latest metrics (worker thread)."""
        return load_summary(self.app.store, self.run_id, self.app.lost_after_s)

    def apply(self, data: RunSummary) -> None:
        """Header now; recipe, checkpoints and history when they changed."""
        previous, self.summary = self.summary, data
        self.update(header_text(data))
        screen = self.screen
        if previous is None or previous.params != data.params:
            recipe = screen.query("#recipe")
            if recipe:
                recipe.first(Static).update(recipe_text(data))
        if previous is None or previous.checkpoints != data.checkpoints:
            tables = screen.query("#checkpoints")
            if tables:
                fill_checkpoints(tables.first(DataTable), data)
        if previous is None or previous.events != data.events:
            tables = screen.query("#history")
            if tables:
                fill_history(tables.first(DataTable), data)


def recipe_text(summary: RunSummary) -> Text:
    """The flattened recipe, one `key = value` a line, and where the run lives."""
    run = summary.run
    text = Text()
    text.append(f"run {run.id} · created {fmt_when(run.created)} · host {run.host or '?'} · "
                f"git {(run.git_commit or '?')[:10]}\n", style="dim")
    text.append(f"folder {run.run_dir}\n\n", style="dim")
    width = max((len(key) for key in summary.params), default=0)
    for key, value in summary.params.items():
        text.append(f"{key:<{width}}", style="bold")
        text.append(f" = {fmt_value(value)}\n")
    return text


def fill_checkpoints(table: DataTable, summary: RunSummary) -> None:
    """One row per checkpoint: step, complete, kind, written, path."""
    if not table.columns:
        table.add_columns("step", "complete", "kind", "written", "path")
    table.clear()
    for checkpoint in summary.checkpoints:
        table.add_row(checkpoint.step, "yes" if checkpoint.complete else Text("writing", style="yellow"),
                      checkpoint.kind, fmt_when(checkpoint.created, short=True), checkpoint.path)
    if not summary.checkpoints:
        table.add_row("—", "no checkpoints yet", "", "", "")


def fill_history(table: DataTable, summary: RunSummary) -> None:
    """One row per event, oldest first: time, event, detail."""
    if not table.columns:
        table.add_columns("time", "event", "detail")
    table.clear()
    for event in summary.events:
        table.add_row(fmt_when(event.time), Text(event.kind, style=STATUS_STYLES.get(event.kind, "")),
                      event.message or "")

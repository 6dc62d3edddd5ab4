"""What people read: a rich progress bar per cell, the algorithms × steps table, the plot, JSON / CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dreamlab.diffusion.settings import SamplerSettings, field_types
from dreamlab.evals.published import published_note

EXPORT_FIELDS = ("id", "task", "model", "checkpoint", "shots", "template", "add_bos", "template_hash",
                 *field_types(SamplerSettings), "batch_size", "batch_size_used", "seed", "limit_n", "device", "dtype", "status", "n_samples", "n_done",
                 "n_correct", "accuracy", "strict_accuracy", "flexible_accuracy", "ci_low", "ci_high", "nfe_mean",
                 "tokens_per_s", "tokens_per_forward", "answer_tokens_per_s", "wall_seconds", "grid_id")


class RichProgress:
    """A progress bar with ETA per grid cell (the harness's Progress protocol)."""

    def __init__(self, console: Console) -> None:
        """Draw on this console (nothing animates when it is not a terminal)."""
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
        self.task_id: Any = None

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start_cell(self, label: str, total: int, done: int) -> None:
        """A new bar for a cell, starting at the samples already done (resume)."""
        self.task_id = self.progress.add_task(label, total=total, completed=done)

    def advance(self, count: int) -> None:
        """Samples finished."""
        self.progress.advance(self.task_id, count)

    def end_cell(self, record: Any) -> None:
        """Show the cell's accuracy in its bar's label."""
        if record.accuracy is not None:
            description = self.progress.tasks[-1].description
            self.progress.update(self.task_id, description=f"{description}: {100 * record.accuracy:.1f}%")


def _cell_text(record: Any) -> str:
    if record.accuracy is None:
        return f"— ({record.status})"
    text = (f"{100 * record.accuracy:.1f}% [{100 * record.ci_low:.1f}, {100 * record.ci_high:.1f}]\n"
            f"NFE {record.nfe_mean:.0f} · {record.tokens_per_s or 0:.1f} tok/s")
    if record.answer_tokens_per_s is not None:
        text += f" · answer {record.answer_tokens_per_s:.1f}"
    if record.strict_accuracy is not None:
        text += f"\nlm-eval strict {100 * record.strict_accuracy:.1f}% · flexible {100 * record.flexible_accuracy:.1f}%"
    note = published_note(record)
    return text if note is None else f"{text}\n{note}"


def results_table(records: Sequence[Any], title: str = "") -> Table:
    """Algorithms as rows, step counts as columns: accuracy, 95% CI, NFE, tokens/s (all positions, answer), lm-eval's columns, a published match."""
    algs = list(dict.fromkeys(r.alg for r in records))
    steps = sorted({r.steps for r in records})
    table = Table(title=title or None, title_justify="left", show_lines=True)
    table.add_column("alg \\ steps")
    for count in steps:
        table.add_column(str(count), justify="right")
    by_cell = {(r.alg, r.steps): r for r in records}
    for alg in algs:
        table.add_row(alg, *[_cell_text(by_cell[(alg, n)]) if (alg, n) in by_cell else "" for n in steps])
    return table


def accuracy_plot(records: Sequence[Any], width: int = 80, height: int = 20) -> str:
    """Accuracy (%) against steps in the terminal (plotext), one line per algorithm."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    for alg in dict.fromkeys(r.alg for r in records):
        points = sorted((r.steps, 100 * r.accuracy) for r in records if r.alg == alg and r.accuracy is not None)
        if points:
            plt.plot([p[0] for p in points], [p[1] for p in points], label=alg, marker="dot")
    plt.ylim(0, 100)
    plt.xlabel("steps")
    plt.ylabel("accuracy %")
    plt.title("accuracy vs steps")
    return plt.build()


def export_rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    """One flat dict per eval (EXPORT_FIELDS plus versions)."""
    return [{**{key: getattr(r, key) for key in EXPORT_FIELDS}, "versions": r.versions} for r in records]


def to_json(records: Sequence[Any]) -> str:
    """The evals as a JSON list."""
    return json.dumps(export_rows(records), indent=2, default=str)


def to_csv(records: Sequence[Any]) -> str:
    """The evals as CSV (versions as a JSON column)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*EXPORT_FIELDS, "versions"])
    writer.writeheader()
    for row in export_rows(records):
        writer.writerow({**row, "versions": json.dumps(row["versions"], sort_keys=True)})
    return buffer.getvalue()

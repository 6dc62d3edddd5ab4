"""Two evals side by side (as `dreamlab eval compare`): accuracies on their shared samples, McNemar's p-value, and
the samples where their verdicts differ, each with both answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from dreamlab.display import fmt_percent, fmt_points
from dreamlab.evals.compare import CellComparison, compare_pair
from dreamlab.evals.grid import cell_label


@dataclass(frozen=True)
class Difference:
    """One shared sample the two evals judged differently."""

    idx: int
    a: dict[str, Any]
    b: dict[str, Any]


def differences(samples_a: list[dict[str, Any]], samples_b: list[dict[str, Any]]) -> list[Difference]:
    """The shared samples (by idx) whose main verdicts differ, in idx order; samples without a verdict left out."""
    by_idx = {sample["idx"]: sample for sample in samples_b if sample.get("correct") is not None}
    return [Difference(sample["idx"], sample, by_idx[sample["idx"]]) for sample in samples_a
            if sample.get("correct") is not None and sample["idx"] in by_idx
            and bool(sample["correct"]) != bool(by_idx[sample["idx"]]["correct"])]


def summary_text(result: CellComparison) -> Text:
    """`A 50.0% · B 66.7% · B − A +16.7 on 6 shared · only A 0 · only B 1 · McNemar p = 1 (exact)` and what differs."""
    text = Text.assemble(("A ", "bold"), fmt_percent(result.accuracy_a), " · ", ("B ", "bold"),
                         fmt_percent(result.accuracy_b), f" · B − A {fmt_points(result.difference)} on {result.shared} shared · only A right {result.only_a} · "
                         f"only B right {result.only_b} · ", ("McNemar p = ", "bold"),
                         f"{result.p_value:.3g} ({result.method})")
    settings = ", ".join(f"{key} {a} → {b}" for key, (a, b) in result.differs.items())
    text.append(f"\ndiffer in: {settings or 'nothing recorded'}", style="dim")
    return text


def mark(correct: Any) -> Text:
    """✓ or ✗."""
    return Text("✓", style="green") if correct else Text("✗", style="red")


class EvalCompareScreen(Screen):
    """Eval A against eval B: the paired test and the discordant samples (enter shows both generations)."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    class Compared(Message):
        """The comparison arrived (or why not)."""

        def __init__(self, result: CellComparison | None, rows: list[Difference], error: str | None) -> None:
            super().__init__()
            self.result, self.rows, self.error = result, rows, error

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.result: CellComparison | None = None
        self.rows: list[Difference] = []

    def compose(self) -> ComposeResult:
        """Who is A and B, the test, the differing samples, one in full."""
        yield Static(f"A = eval {self.a.id} ({self.a.model} · {cell_label(self.a)})   "
                     f"B = eval {self.b.id} ({self.b.model} · {cell_label(self.b)})", id="title")
        yield Static("comparing…", id="compare-summary")
        yield DataTable(id="differences", cursor_type="row", zebra_stripes=True)
        yield Static("", id="difference-detail")
        yield Footer()

    def on_mount(self) -> None:
        """Compare in a worker."""
        self._compare()

    @work(thread=True, exclusive=True)
    def _compare(self) -> None:
        store = self.app.store
        try:
            result = compare_pair(store, self.a, self.b)
            rows = differences(store.eval_samples(self.a.id), store.eval_samples(self.b.id))
            self.post_message(self.Compared(result, rows, None))
        except Exception as failure:  # noqa: BLE001 - shown in place
            self.post_message(self.Compared(None, [], f"{type(failure).__name__}: {failure}"))

    def on_eval_compare_screen_compared(self, message: Compared) -> None:
        """Show the test and list the differing samples."""
        summary = self.query_one("#compare-summary", Static)
        if message.error is not None:
            summary.update(f"cannot compare: {message.error}")
            return
        self.result, self.rows = message.result, message.rows
        summary.update(summary_text(message.result))
        table = self.query_one("#differences", DataTable)
        table.add_columns("#", "gold", "A", "A answer", "B", "B answer")
        for row in self.rows:
            table.add_row(str(row.idx), str(row.a.get("gold") or "—"), mark(row.a["correct"]),
                          str(row.a.get("extracted") or "—"), mark(row.b["correct"]), str(row.b.get("extracted") or "—"))
        if not self.rows:
            self.query_one("#difference-detail", Static).update("no shared sample is judged differently")
        table.focus()

    @on(DataTable.RowHighlighted, "#differences")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The highlighted sample's question and both generations."""
        if not 0 <= event.cursor_row < len(self.rows):
            return
        row = self.rows[event.cursor_row]
        text = Text()
        text.append("question: ", style="bold")
        text.append(f"{row.a.get('question') or '—'}\n")
        for side, sample in (("A", row.a), ("B", row.b)):
            text.append(f"{side} ", style="bold")
            text.append_text(mark(sample["correct"]))
            text.append(f" {sample.get('generation') or '—'}\n")
        self.query_one("#difference-detail", Static).update(text)

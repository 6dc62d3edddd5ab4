"""The accuracy-vs-speed frontier of an eval grid: which cells no other cell beats on both axes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from dreamlab.evals.grid import cell_label


def _point(record: Any) -> tuple[float, float] | None:
    if record.accuracy is None or not record.answer_tokens_per_s:
        return None
    return record.answer_tokens_per_s, record.accuracy


def pareto_ids(records: Sequence[Any]) -> set[int]:
    """Ids of the cells that no other cell matches on accuracy and answer tokens/s while beating it on one."""
    points = {r.id: p for r in records if (p := _point(r)) is not None}
    return {i for i, (speed, acc) in points.items()
            if not any(s >= speed and a >= acc and (s, a) != (speed, acc) for j, (s, a) in points.items() if j != i)}


def frontier_points(records: Sequence[Any]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(answer tokens/s, accuracy %) of the other cells and of the Pareto cells (by speed), for plotting."""
    best = pareto_ids(records)
    points = [(p, r.id in best) for r in records if (p := _point(r)) is not None]
    others = [(speed, 100 * acc) for (speed, acc), on_front in points if not on_front]
    return others, sorted((speed, 100 * acc) for (speed, acc), on_front in points if on_front)


def frontier_table(records: Sequence[Any], title: str = "") -> Table:
    """One row per cell, fastest first: accuracy [95% CI], NFE, tokens per forward, all and answer tokens/s, wall time, ★ Pareto."""
    best = pareto_ids(records)
    table = Table(title=title or None, title_justify="left")
    for column in ("", "eval", "cell", "accuracy [95% CI]", "NFE", "tok/forward", "tok/s", "answer tok/s", "speed-up", "wall s"):
        table.add_column(column, justify="left" if column in ("", "cell") else "right")
    ordered = sorted(records, key=lambda r: -(r.answer_tokens_per_s or 0.0))
    slowest = min((r.answer_tokens_per_s for r in records if r.answer_tokens_per_s), default=None)
    for r in ordered:
        accuracy = "—" if r.accuracy is None else f"{100 * r.accuracy:.1f}% [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]"
        speed = r.answer_tokens_per_s
        table.add_row("★" if r.id in best else "", str(r.id), cell_label(r), accuracy, _number(r.nfe_mean, 1),
                      _number(r.tokens_per_forward, 2), _number(r.tokens_per_s, 1), _number(speed, 1),
                      f"{speed / slowest:.2f}x" if speed and slowest else "—", _number(r.wall_seconds, 1))
    return table


def draw_frontier(plt: Any, records: Sequence[Any]) -> int:
    """Draw the cells on a plotext figure (plotext or a PlotextPlot's plt), the Pareto ones joined; returns how many."""
    others, front = frontier_points(records)
    if others:
        plt.scatter([s for s, _ in others], [a for _, a in others], label="cell", marker="dot")
    if front:
        plt.plot([s for s, _ in front], [a for _, a in front], label="Pareto", marker="*")
    plt.ylim(0, 100)
    return len(others) + len(front)

def frontier_plot(records: Sequence[Any], width: int = 80, height: int = 20) -> str:
    """Accuracy (%) against answer tokens/s in the terminal (plotext); Pareto cells joined by a line."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    draw_frontier(plt, records)
    plt.xlabel("answer tokens/s")
    plt.ylabel("accuracy %")
    plt.title("accuracy vs answer tokens/s")
    return plt.build()


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"

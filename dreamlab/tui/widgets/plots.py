"""Metric plots (textual-plotext): a run's loss and learning rate, loss curves of several runs, an eval frontier."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, cast

from textual_plotext import PlotextPlot

from dreamlab.evals.frontier import draw_frontier
from dreamlab.tui.queries import LOSS_KEY, LR_KEY, VAL_LOSS_KEY, Curves, load_curves
from dreamlab.tui.widgets.polling import Polling

EMA_WEIGHT = 0.9


@dataclass
class PlotView:
    """How loss plots draw, kept for the console session: a log-scale loss axis, an EMA of the training loss."""

    log_y: bool = False
    smooth: bool = False


class PlotViewApp(Protocol):
    """What a loss plot needs of its app: the session's plot view."""

    plot_view: PlotView


def ema(values: list[float], weight: float = EMA_WEIGHT) -> list[float]:
    """Exponential moving average, debiased like TensorBoard's smoothing; NaN values do not count."""
    smoothed, average, count = [], 0.0, 0
    for value in values:
        if math.isfinite(value):
            average, count = weight * average + (1 - weight) * value, count + 1
        smoothed.append(average / (1 - weight**count) if count else value)
    return smoothed


def _positive(steps: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    """The points a log axis can draw."""
    kept = [(step, value) for step, value in zip(steps, values) if value > 0 and math.isfinite(value)]
    return [step for step, _ in kept], [value for _, value in kept]


class LossPlot(PlotextPlot, Polling):
    """Training and validation loss of one run (left axis) with the learning rate (right axis), live."""

    KEYS = [LOSS_KEY, VAL_LOSS_KEY, LR_KEY]

    def __init__(self, run_id: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id
        self.curves = Curves()

    def on_mount(self) -> None:
        """First poll (Textual also runs PlotextPlot's own on_mount: handlers of every class in the MRO run)."""
        self.poll_now()

    def load(self) -> Curves:
        """The run's loss and lr series (worker thread)."""
        return load_curves(self.app.store, self.run_id, self.KEYS)

    def apply(self, data: Curves) -> None:
        """Redraw when a series changed."""
        if data == self.curves and self.polls_applied:
            return
        self.curves = data
        self.draw()

    @property
    def view(self) -> PlotView:
        """The session's plot view (shared by every run's plot)."""
        return cast(PlotViewApp, self.app).plot_view

    def toggle(self, setting: str) -> None:
        """Flip `log_y` or `smooth` for the session and redraw."""
        setattr(self.view, setting, not getattr(self.view, setting))
        self.draw()

    def draw(self) -> None:
        """Plot the curves as the session's view asks."""
        view, plt = self.view, self.plt
        plt.clear_data()
        plt.clear_figure()
        drawn = False
        for key, color in ((LOSS_KEY, "cyan"), (VAL_LOSS_KEY, "orange")):
            steps, values = self.curves.get(key)
            label = key
            if view.smooth and key == LOSS_KEY:
                values, label = ema(values), f"{key} (EMA {EMA_WEIGHT:g})"
            if view.log_y:
                steps, values = _positive(steps, values)
            if steps:
                plt.plot(steps, values, label=label, marker="braille", color=color)
                drawn = True
        steps, values = self.curves.get(LR_KEY)
        if steps:
            plt.plot(steps, values, label="lr (right)", marker="braille", color="gray", yside="right")
        if view.log_y:
            plt.yscale("log", yside="left")
        scale = "log" if view.log_y else "linear"
        plt.title(f"loss ({scale}) · y: log/linear · s: smoothing" if drawn else "loss: nothing recorded yet")
        plt.xlabel("step")
        self.refresh()


class CurvesPlot(PlotextPlot):
    """Several named series overlaid (compare: one loss curve per run)."""

    def show(self, title: str, series: dict[str, tuple[list[int], list[float]]]) -> None:
        """Draw the series (empty ones skipped)."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        for label, (steps, values) in series.items():
            if steps:
                plt.plot(steps, values, label=label, marker="braille")
        plt.title(title)
        plt.xlabel("step")
        self.refresh()


class FrontierPlot(PlotextPlot):
    """Accuracy against answer tokens/s for evals, the Pareto-optimal ones joined by a line."""

    DEFAULT_CSS = "FrontierPlot { height: 14; }"

    def show(self, records: list) -> int:
        """Draw the evals that recorded accuracy and speed; returns how many were drawn."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        drawn = draw_frontier(plt, records)
        plt.title("accuracy % vs answer tokens/s")
        self.refresh()
        return drawn

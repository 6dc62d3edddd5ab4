"""Metric plots (textual-plotext): a run's loss and learning rate, and loss curves of several runs."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from dreamlab.tui.queries import LOSS_KEY, LR_KEY, VAL_LOSS_KEY, Curves, load_curves
from dreamlab.tui.widgets.polling import Polling


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
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        drawn = False
        for key, color in ((LOSS_KEY, "cyan"), (VAL_LOSS_KEY, "orange")):
            steps, values = data.get(key)
            if steps:
                plt.plot(steps, values, label=key, marker="braille", color=color)
                drawn = True
        steps, values = data.get(LR_KEY)
        if steps:
            plt.plot(steps, values, label="lr (right)", marker="braille", color="gray", yside="right")
        plt.title("loss" if drawn else "loss: nothing recorded yet")
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

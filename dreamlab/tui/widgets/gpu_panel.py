"""The GPU panel: NVML readings per device, and the run's own recorded memory over steps."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from dreamlab import gpu
from dreamlab.tui.queries import Curves, load_memory_curves
from dreamlab.tui.widgets.polling import Polling


@dataclass(frozen=True)
class GpuData:
    """One poll: the NVML snapshot and the run's memory/* series."""

    snapshot: gpu.GpuSnapshot
    memory: Curves


def _opt(value: float | None, fmt: str, unit: str) -> str:
    return "—" if value is None else f"{value:{fmt}}{unit}"


def describe(snapshot: gpu.GpuSnapshot) -> str:
    """One line per device (memory used / total, utilisation, power, temperature), or why there is none."""
    if snapshot.unavailable:
        return f"No NVIDIA GPU ({snapshot.unavailable}). The rest of the console works without one."
    lines = []
    for device in snapshot.devices:
        if device.error:
            lines.append(f"GPU {device.index}: NVML stopped answering ({device.error}); retrying each poll")
            continue
        memory = (f"{_opt(device.memory_used_mib and device.memory_used_mib / 1024, '.1f', '')} / "
                  f"{_opt(device.memory_total_mib and device.memory_total_mib / 1024, '.1f', ' GiB')}")
        power = _opt(device.power_w, ".0f", " W") + (f" / {device.power_limit_w:.0f} W" if device.power_limit_w else "")
        lines.append(f"GPU {device.index} {device.name or '?'}: mem {memory}  util "
                     f"{_opt(device.utilization_pct, '.0f', '%')}  power {power}  temp "
                     f"{_opt(device.temperature_c, '.0f', ' C')}")
    return "\n".join(lines)


class GpuPanel(Vertical, Polling):
    """Live NVML readings (this machine's GPUs) above the run's recorded allocated / reserved / peak memory."""

    DEFAULT_CSS = """
    GpuPanel > #gpu-devices { height: auto; max-height: 8; }
    GpuPanel > PlotextPlot { height: 1fr; }
    """

    def __init__(self, run_id: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.run_id = run_id
        self.data: GpuData | None = None

    def compose(self) -> ComposeResult:
        """Device lines, then the memory plot."""
        yield Static("reading GPUs…", id="gpu-devices")
        yield PlotextPlot(id="gpu-memory")

    def on_mount(self) -> None:
        """First poll."""
        self.poll_now()

    def load(self) -> GpuData:
        """NVML (probed once, never raises) and the run's memory series (worker thread)."""
        return GpuData(gpu.snapshot(), load_memory_curves(self.app.store, self.run_id))

    def apply(self, data: GpuData) -> None:
        """Update the device lines; redraw the memory plot when it changed."""
        self.query_one("#gpu-devices", Static).update(describe(data.snapshot))
        if self.data is not None and self.data.memory == data.memory:
            self.data = data
            return
        self.data = data
        plot = self.query_one("#gpu-memory", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        for key, (steps, values) in data.memory.series.items():
            if steps:
                plt.plot(steps, values, label=key.removeprefix("memory/"), marker="braille")
        plt.title("this run's recorded memory (GiB)" if data.memory.series else "this run recorded no memory metrics")
        plt.xlabel("step")
        plot.refresh()

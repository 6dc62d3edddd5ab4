"""NVML missing or failing mid-run: gpu.py reports why, the panel says it, monitoring and training go on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import types

import pytest

from dreamlab import gpu
from dreamlab.store import RunStore
from dreamlab.tui.app import build_app
from dreamlab.tui.screens.detail import RunDetailScreen
from dreamlab.tui.widgets.gpu_panel import GpuPanel, describe


class GpuIsLost(Exception):
    """What pynvml raises once a GPU falls off the bus (NVMLError_GpuIsLost)."""

    def __str__(self) -> str:
        return "GPU is lost"


def nvml_failing_after(calls: int) -> types.ModuleType:
    """A stand-in pynvml with one healthy device whose every query raises after `calls` device queries."""
    module = types.ModuleType("pynvml")
    count = {"n": 0}
    setup = {"nvmlInit": None, "nvmlDeviceGetCount": 1, "nvmlDeviceGetHandleByIndex": "h0",
             "nvmlSystemGetDriverVersion": "550.1"}
    queries = {"nvmlDeviceGetName": b"NVIDIA H100", "nvmlDeviceGetMemoryInfo": types.SimpleNamespace(used=2**30, total=80 * 2**30),
               "nvmlDeviceGetUtilizationRates": types.SimpleNamespace(gpu=50), "nvmlDeviceGetPowerUsage": 300_000,
               "nvmlDeviceGetEnforcedPowerLimit": 700_000, "nvmlDeviceGetTemperature": 60}
    for name, value in setup.items():
        setattr(module, name, lambda *args, _value=value: _value)
    for name, value in queries.items():
        def query(*args, _value=value):
            count["n"] += 1
            if count["n"] > calls:
                print("NVML: GPU is lost", file=sys.stderr)
                raise GpuIsLost()
            return _value
        query.__name__ = name
        setattr(module, name, query)
    module.NVML_TEMPERATURE_GPU = 0
    return module


@pytest.fixture
def lost_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", nvml_failing_after(12))  # two full readings, then lost
    gpu.reset_probe()
    yield
    gpu.reset_probe()


def test_nvml_failing_mid_run_reads_as_the_reason_never_raises_never_prints(lost_gpu, capfd):
    readings = [gpu.snapshot() for _ in range(4)]
    assert [r.devices[0].error for r in readings] == [None, None, "nvmlDeviceGetName: GPU is lost",
                                                      "nvmlDeviceGetName: GPU is lost"]
    assert readings[1].devices[0].memory_used_mib == 1024
    assert "NVML stopped answering (nvmlDeviceGetName: GPU is lost)" in describe(readings[-1])
    assert "H100" in describe(readings[0])
    assert capfd.readouterr() == ("", "")


def test_one_unsupported_query_is_not_an_error(monkeypatch):
    module = nvml_failing_after(10**9)
    module.nvmlDeviceGetPowerUsage = lambda *a: (_ for _ in ()).throw(GpuIsLost())
    monkeypatch.setitem(sys.modules, "pynvml", module)
    gpu.reset_probe()
    try:
        device, = gpu.snapshot().devices
    finally:
        gpu.reset_probe()
    assert device.error is None and device.power_w is None and device.temperature_c == 60


def test_the_gpu_panel_says_why_and_keeps_polling_after_nvml_fails(lost_gpu, tmp_path):
    store = RunStore(tmp_path / "runs" / "dreamlab.db")
    run = store.create_run(name="live", recipe={})
    store.mark_started(run.id)
    for step in range(1, 4):
        store.record_metrics(run.id, step, {"train/loss": 2.0 / step, "memory/allocated_gb": 1.0 + step})

    async def scenario():
        app = build_app(store.path, poll_s=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.table
            deadline = time.monotonic() + 120  # generous: a busy machine is slow, not wrong
            while table.polls_applied == 0:
                assert time.monotonic() < deadline
                await pilot.pause(0.05)
            await pilot.press("enter")
            assert isinstance(app.screen, RunDetailScreen)
            await pilot.press("g")
            panel = app.screen.query_one(GpuPanel)
            while "NVML stopped answering" not in str(app.screen.query_one("#gpu-devices").render()):
                assert time.monotonic() < deadline, str(app.screen.query_one("#gpu-devices").render())
                await pilot.pause(0.1)
            after_failure = panel.polls_applied
            store.record_metrics(run.id, 4, {"train/loss": 0.4, "memory/allocated_gb": 5.0})
            while panel.data.memory.series["memory/allocated_gb"][0][-1] != 4:  # still polling the store
                assert time.monotonic() < deadline
                await pilot.pause(0.1)
            assert panel.polls_applied > after_failure
            assert "GPU is lost" in str(app.screen.query_one("#gpu-devices").render())
    asyncio.run(scenario())


def test_without_the_nvml_library_the_panel_says_so_and_a_run_still_launches(tmp_path):
    """pynvml unimportable: the console explains, and the train path (CLI checks, worker) never needs it."""
    code = """
import sys
sys.modules["pynvml"] = None  # import pynvml -> ImportError, like a machine without nvidia-ml-py
from dreamlab import gpu
from dreamlab.tui.widgets.gpu_panel import describe
from dreamlab.config import load_recipe
from dreamlab.train.launcher import check_before_launch
import dreamlab.train.worker, dreamlab.train.trainer
print(describe(gpu.snapshot()))
check_before_launch(load_recipe(None, ["trainer.device=cpu"]))
print("launch checks passed")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "No NVIDIA GPU (unavailable: import of pynvml halted; None in sys.modules)" in done.stdout
    assert "launch checks passed" in done.stdout and done.stderr == ""

"""Console plumbing without a terminal: Textual stays out of the CLI, NVML never raises, the entry points."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

from typer.testing import CliRunner

from dreamlab import gpu
from dreamlab.cli import app
from dreamlab.tui.queries import LOG_TAIL_BYTES, tail_log

PACKAGE = Path(__file__).resolve().parents[1] / "dreamlab"
runner = CliRunner()


def test_train_and_eval_commands_do_not_load_textual(tmp_path):
    commands = [["train", "--help"], ["runs", "list", "--db", str(tmp_path / "x.db")], ["train", "optim.lrr=1"]]
    if importlib.util.find_spec("dreamlab.cli.eval") is not None:  # arrives with the eval harness
        commands.append(["eval", "--help"])
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom dreamlab.cli import app\n"
        f"for args in {commands!r}:\n    CliRunner().invoke(app, args)\n"
        "loaded = sorted(m for m in sys.modules if m == 'textual' or m.startswith(('textual.', 'textual_')))\n"
        "print(len(loaded), loaded[:5])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert out.stdout.startswith("0 "), out.stdout
    # the same probe does see Textual once the console's app module is imported
    seen = subprocess.run([sys.executable, "-c", "import sys, dreamlab.tui.app; print('textual' in sys.modules)"],
                          capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert seen.stdout.strip() == "True"


def test_opening_the_console_never_imports_pandas_or_torch():
    """A third of a second of start-up each: the console path (command line, store, app) needs neither."""
    code = "import sys, dreamlab.cli, dreamlab.tui.app; print(sorted({'pandas', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "[]"


def test_nothing_outside_the_tui_package_imports_textual():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "tui" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path}: {name}" for name in names if name.split(".")[0] in ("textual", "textual_plotext")]
    assert offenders == []


def test_gpu_probe_never_raises_never_prints_and_is_cached(capfd):
    gpu.reset_probe()
    first = gpu.snapshot()
    again = gpu.probe()
    assert gpu.probe() is again  # one probe, cached
    if first.unavailable:
        assert first.unavailable.startswith("unavailable: ") and first.devices == []
    else:
        assert first.devices and all(device.index == i for i, device in enumerate(first.devices))
    assert capfd.readouterr() == ("", "")


class _NvmlError(Exception):
    pass


def _nvml(fail: set[str]) -> types.ModuleType:
    """A stand-in pynvml with one device, where the named queries raise like an unsupported NVML call."""
    module = types.ModuleType("pynvml")
    values = {
        "nvmlInit": None, "nvmlDeviceGetCount": 1, "nvmlDeviceGetHandleByIndex": "handle-0",
        "nvmlSystemGetDriverVersion": "550.1", "nvmlDeviceGetName": b"NVIDIA H100",
        "nvmlDeviceGetMemoryInfo": types.SimpleNamespace(used=2 * 2**30, total=80 * 2**30),
        "nvmlDeviceGetUtilizationRates": types.SimpleNamespace(gpu=37), "nvmlDeviceGetPowerUsage": 250_000,
        "nvmlDeviceGetEnforcedPowerLimit": 700_000, "nvmlDeviceGetTemperature": 61,
    }
    for name, value in values.items():
        def call(*args, _name=name, _value=value):
            if _name in fail:
                print("NVML noise", file=sys.stderr)
                raise _NvmlError(f"{_name}: Not Supported")
            return _value
        setattr(module, name, call)
    module.NVML_TEMPERATURE_GPU = 0
    return module


def test_gpu_fields_a_device_cannot_report_read_as_none(monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "pynvml", _nvml({"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"}))
    gpu.reset_probe()
    try:
        device, = gpu.snapshot().devices
    finally:
        gpu.reset_probe()
    assert device.name == "NVIDIA H100" and device.memory_used_mib == 2048 and device.memory_total_mib == 80 * 1024
    assert device.utilization_pct == 37 and device.power_limit_w == 700
    assert device.power_w is None and device.temperature_c is None
    assert capfd.readouterr() == ("", "")


def test_a_failing_nvml_init_is_cached_as_the_reason(monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "pynvml", _nvml({"nvmlInit"}))
    gpu.reset_probe()
    try:
        first, second = gpu.snapshot(), gpu.snapshot()
    finally:
        gpu.reset_probe()
    assert first.unavailable == "unavailable: nvmlInit: Not Supported" and first is second
    assert capfd.readouterr() == ("", "")


def test_bare_dreamlab_opens_the_console_on_the_db_and_help_still_works(monkeypatch, tmp_path):
    opened = []
    monkeypatch.setattr("dreamlab.tui.run_console", opened.append)
    result = runner.invoke(app, ["--db", str(tmp_path / "a.db")])
    assert result.exit_code == 0, result.output
    assert opened == [tmp_path / "a.db"]
    helped = runner.invoke(app, ["--help"])
    assert helped.exit_code == 0 and "train" in helped.output and opened == [tmp_path / "a.db"]


def test_serve_binds_localhost_only(monkeypatch, tmp_path):
    made = {}

    class Server:
        def __init__(self, command, host, port, title):
            made.update(command=command, host=host, port=port)

        def serve(self):
            made["served"] = True

    monkeypatch.setattr("textual_serve.server.Server", Server)
    result = runner.invoke(app, ["--serve", "--port", "8123", "--db", str(tmp_path / "a.db")])
    assert result.exit_code == 0, result.output
    assert made["host"] == "127.0.0.1" and made["port"] == 8123 and made["served"]
    assert "-m dreamlab.tui --db" in made["command"] and str(tmp_path / "a.db") in made["command"]


def test_log_tail_reads_only_the_end_of_a_big_log(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    lines = tail_log(log, 5)
    assert lines == [f"line {i}" for i in range(99_995, 100_000)]
    assert len("".join(tail_log(log, 10**6))) < LOG_TAIL_BYTES
    assert tail_log(tmp_path / "missing.log") is None


def _nvml_four_gpus() -> types.ModuleType:
    """Four devices: 0 idle, 1 running a process, 2 cannot list processes but has 300 MiB used, 3 the same with 9 GiB."""
    module = types.ModuleType("pynvml")
    processes = {0: [], 1: [types.SimpleNamespace(pid=4242)], 2: _NvmlError("Not Supported"), 3: _NvmlError("x")}
    used = {0: 0, 1: 30 * 1024, 2: 300, 3: 9 * 1024}

    def answer(value):
        if isinstance(value, Exception):
            raise value
        return value

    module.nvmlInit = lambda: None
    module.nvmlDeviceGetCount = lambda: 4
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlSystemGetDriverVersion = lambda: "550.1"
    module.nvmlDeviceGetComputeRunningProcesses = lambda i: answer(processes[i])
    module.nvmlDeviceGetMemoryInfo = lambda i: types.SimpleNamespace(used=used[i] * 2**20, total=80 * 2**30)
    return module


def test_free_gpus_are_those_without_compute_processes_or_nearly_empty_when_nvml_cannot_tell(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _nvml_four_gpus())
    gpu.reset_probe()
    try:
        assert gpu.free_devices() == [0, 2]
    finally:
        gpu.reset_probe()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML at all: no free GPU, and no error
    try:
        assert gpu.free_devices() == []
    finally:
        gpu.reset_probe()


def test_memory_of_a_gpu_is_found_by_its_uuid_in_torch_or_nvml_spelling(monkeypatch):
    module = _nvml_four_gpus()
    uuids = {0: b"GPU-0000aaaa-1111", 1: "GPU-0000BBBB-2222", 2: _NvmlError("Not Supported"), 3: "GPU-0000dddd-4444"}

    def uuid_of(index):
        if isinstance(uuids[index], Exception):
            raise uuids[index]
        return uuids[index]

    module.nvmlDeviceGetUUID = uuid_of
    monkeypatch.setitem(sys.modules, "pynvml", module)
    gpu.reset_probe()
    try:
        assert gpu.memory_of("0000bbbb-2222") == (30 * 1024, 80 * 1024)  # torch: lower case, no GPU- prefix
        assert gpu.memory_of("GPU-0000dddd-4444") == (9 * 1024, 80 * 1024)
        assert gpu.memory_of("0000aaaa-1111") == (0, 80 * 1024)  # NVML gave bytes
        assert gpu.memory_of("MIG-1234") is None  # a device NVML did not list under that UUID
    finally:
        gpu.reset_probe()
    monkeypatch.setitem(sys.modules, "pynvml", None)
    try:
        assert gpu.memory_of("0000bbbb-2222") is None
    finally:
        gpu.reset_probe()

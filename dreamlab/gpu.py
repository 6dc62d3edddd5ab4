"""NVIDIA GPUs through NVML (the pynvml module of nvidia-ml-py): probe once, never raise, never print.

`probe()` initialises NVML the first time and caches either the device handles or the reason there
are none ("unavailable: <reason>"); `snapshot()` reads every device, each field optional (a query a
device does not support reads as None instead of failing the whole panel).
"""

from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass, field
from typing import Any

MIB = 2**20


@dataclass(frozen=True)
class DeviceReading:
    """One GPU at one moment; any field NVML could not give is None."""

    index: int
    name: str | None = None
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    utilization_pct: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    temperature_c: float | None = None
    error: str | None = None  # set when NVML answered none of the queries (e.g. the GPU fell off the bus)


@dataclass(frozen=True)
class GpuSnapshot:
    """Every device, or why there are none (`unavailable` is then "unavailable: <reason>")."""

    devices: list[DeviceReading] = field(default_factory=list)
    unavailable: str | None = None
    driver: str | None = None


_lock = threading.Lock()
_state: dict[str, Any] = {}


def _quiet(fn, *args, errors: list[str] | None = None):
    """Call an NVML function with library chatter kept off the terminal; None on any error (noted in `errors`)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn(*args)
    except Exception as error:  # noqa: BLE001 - every NVML failure means "not available", by design
        if errors is not None:
            errors.append(f"{getattr(fn, '__name__', 'NVML')}: {str(error).strip() or type(error).__name__}")
        return None


def probe() -> GpuSnapshot:
    """Initialise NVML once; later calls return the cached handles or reason (no devices read)."""
    with _lock:
        if "result" not in _state:
            _state["result"] = _probe_uncached()
        return _state["result"]


def _probe_uncached() -> GpuSnapshot:
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except Exception as error:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
        reason = str(error).strip() or type(error).__name__
        return GpuSnapshot(unavailable=f"unavailable: {reason}")
    if not handles:
        return GpuSnapshot(unavailable="unavailable: NVML found no devices")
    _state["pynvml"] = pynvml
    _state["handles"] = handles
    driver = _quiet(pynvml.nvmlSystemGetDriverVersion)
    return GpuSnapshot(driver=driver if isinstance(driver, str) or driver is None else driver.decode())


def snapshot() -> GpuSnapshot:
    """Read every device now (after the one probe); never raises."""
    probed = probe()
    if probed.unavailable:
        return probed
    nvml = _state["pynvml"]
    devices = []
    for index, handle in enumerate(_state["handles"]):
        errors: list[str] = []
        name = _quiet(nvml.nvmlDeviceGetName, handle, errors=errors)
        memory = _quiet(nvml.nvmlDeviceGetMemoryInfo, handle, errors=errors)
        rates = _quiet(nvml.nvmlDeviceGetUtilizationRates, handle, errors=errors)
        power = _quiet(nvml.nvmlDeviceGetPowerUsage, handle, errors=errors)
        limit = _quiet(nvml.nvmlDeviceGetEnforcedPowerLimit, handle, errors=errors)
        temperature = _quiet(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU, errors=errors)
        devices.append(DeviceReading(
            index=index, name=name.decode() if isinstance(name, bytes) else name,
            memory_used_mib=None if memory is None else memory.used / MIB,
            memory_total_mib=None if memory is None else memory.total / MIB,
            utilization_pct=None if rates is None else float(rates.gpu),
            power_w=None if power is None else power / 1000.0,
            power_limit_w=None if limit is None else limit / 1000.0,
            temperature_c=None if temperature is None else float(temperature),
            error=errors[0] if len(errors) == 6 else None,
        ))
    return GpuSnapshot(devices=devices, driver=probed.driver)


def memory_of(uuid: str) -> tuple[float, float] | None:
    """(used MiB, total MiB) of the GPU with this UUID (torch's or NVML's spelling); None if NVML cannot say."""
    probed = probe()
    if probed.unavailable:
        return None
    nvml = _state["pynvml"]
    with _lock:
        if "by_uuid" not in _state:
            by_uuid = {}
            for handle in _state["handles"]:
                found = _quiet(nvml.nvmlDeviceGetUUID, handle)
                if found is not None:
                    by_uuid[_plain_uuid(found)] = handle
            _state["by_uuid"] = by_uuid
    handle = _state["by_uuid"].get(_plain_uuid(uuid))
    memory = None if handle is None else _quiet(nvml.nvmlDeviceGetMemoryInfo, handle)
    return None if memory is None else (memory.used / MIB, memory.total / MIB)


def _plain_uuid(uuid: Any) -> str:
    """NVML says `GPU-8ac1...` (bytes in old versions), torch `8ac1...`: compare them without the prefix."""
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    return text.lower().removeprefix("gpu-")


def free_devices(max_used_mib: float = 1024.0) -> list[int]:
    """NVML indices of the GPUs nobody computes on now: no compute process, or (where a device cannot
    list its processes) under `max_used_mib` used; [] without NVML."""
    probed = probe()
    if probed.unavailable:
        return []
    nvml = _state["pynvml"]
    free = []
    for index, handle in enumerate(_state["handles"]):
        processes = _quiet(nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        if processes is not None:
            if not processes:
                free.append(index)
            continue
        memory = _quiet(nvml.nvmlDeviceGetMemoryInfo, handle)
        if memory is not None and memory.used / MIB < max_used_mib:
            free.append(index)
    return free


def reset_probe() -> None:
    """Forget the cached probe (tests; a driver loaded after start)."""
    with _lock:
        _state.clear()

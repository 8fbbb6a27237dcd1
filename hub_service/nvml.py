"""This machine's NVIDIA GPUs through NVML (nvidia-ml-py), as plain dicts.

Two halves: :func:`read_nvml` is the only I/O (it calls NVML and records what each call
returned, as plain JSON-able values); :func:`gpus_from_records` turns such a record into GPU
entries. So the parsing is tested with recorded NVML values on machines without a GPU.

Never raises: no NVML library, no driver or no GPU each give zero GPUs with ``status``
saying which, in words a person understands. A value one GPU cannot report (NVML
``NotSupported``, e.g. memory on GB10) is None in its entry, never a guess.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

__all__ = ["NVML_STATUS", "gpus_from_records", "read_nvml"]

MIB = 1024 * 1024

# What `status` says, by the NVML error class name (nvidia-ml-py's NVMLError_<Name>).
NVML_STATUS = {
    "ok": "NVML found {count} GPU(s)",
    "LibraryNotFound": "no NVIDIA GPU: the NVML library (libnvidia-ml.so.1) is not installed",
    "DriverNotLoaded": "no NVIDIA GPU: the NVIDIA driver is not loaded",
    "NoPermission": "no NVIDIA GPU usable: no permission to use the NVIDIA driver",
    "NotInstalled": "no NVIDIA GPU: the NVIDIA driver is not installed",
    "module": "no NVIDIA GPU: the Python package nvidia-ml-py is not installed",
    "none": "no NVIDIA GPU: NVML found none",
}

_UUID_RE = re.compile(r"(GPU|MIG)-[0-9a-fA-F-]{8,}")


def _text(value: Any) -> str | None:
    """NVML strings: str in nvidia-ml-py >= 11.515, bytes before."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip() if isinstance(value, str) and value.strip() else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _mib(value: Any) -> int | None:
    amount = _count(value)
    return None if amount is None else amount // MIB


def _percent(value: Any) -> int | None:
    amount = _count(value)
    return amount if amount is not None and amount <= 100 else None


def gpus_from_records(record: dict) -> list[dict]:
    """GPU entries from what :func:`read_nvml` recorded: ``index``, ``uuid``, ``name``,
    ``memory_total`` / ``memory_used`` / ``memory_free`` (MiB), ``utilization`` (%),
    ``memory_utilization`` (%), ``processes`` (running compute and graphics processes).

    A device without a UUID is left out (it cannot be pinned by UUID); values NVML could not
    give are None. Used memory is total - free when NVML gave only those two.
    """
    gpus = []
    for raw in record.get("devices") or []:
        if not isinstance(raw, dict):
            continue
        uuid = _text(raw.get("uuid"))
        if not uuid or not _UUID_RE.fullmatch(uuid):
            continue
        memory = raw.get("memory") if isinstance(raw.get("memory"), dict) else {}
        total, used, free = (
            _mib(memory.get("total")),
            _mib(memory.get("used")),
            _mib(memory.get("free")),
        )
        if used is None and total is not None and free is not None:
            used = max(0, total - free)
        utilization = raw.get("utilization") if isinstance(raw.get("utilization"), dict) else {}
        processes = [
            p for key in ("compute_processes", "graphics_processes") for p in raw.get(key) or []
        ]
        gpus.append(
            {
                "index": _count(raw.get("index")),
                "uuid": uuid,
                "name": _text(raw.get("name")) or "NVIDIA GPU",
                "memory_total": total,
                "memory_used": used,
                "memory_free": free,
                "utilization": _percent(utilization.get("gpu")),
                "memory_utilization": _percent(utilization.get("memory")),
                "processes": len({p.get("pid") for p in processes if isinstance(p, dict)})
                if any(
                    raw.get(key) is not None for key in ("compute_processes", "graphics_processes")
                )
                else None,
            }
        )
    for position, gpu in enumerate(gpus):
        if gpu["index"] is None:
            gpu["index"] = position
    return gpus


def _error_name(err: Exception) -> str:
    name = type(err).__name__
    return name.removeprefix("NVMLError_") if name.startswith("NVMLError_") else name


def _call(record: dict, field: str, fn, *args):
    """One NVML call; NotSupported and friends leave the field None (noted in `errors`)."""
    try:
        return fn(*args)
    except Exception as err:  # NVMLError_*: this value is unknown, the rest still counts
        record.setdefault("errors", {})[field] = _error_name(err)
        return None


def _processes(values) -> list[dict] | None:
    if values is None:
        return None
    return [
        {"pid": getattr(p, "pid", None), "used_memory": getattr(p, "usedGpuMemory", None)}
        for p in values
    ]


def read_nvml() -> dict:
    """Everything NVML says about this machine's GPUs, as plain values: ``status`` (words),
    ``available`` (NVML answered), ``driver_version``, ``devices`` (one record per GPU, the
    raw values: memory in bytes). Never raises."""
    try:
        import pynvml
    except ImportError:
        return {"available": False, "status": NVML_STATUS["module"], "devices": []}
    try:
        pynvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        name = _error_name(err)
        status = NVML_STATUS.get(name, f"no NVIDIA GPU: NVML could not start ({name})")
        return {"available": False, "status": status, "devices": []}
    try:
        record: dict[str, Any] = {"available": True, "devices": []}
        record["driver_version"] = _text(_call(record, "driver", pynvml.nvmlSystemGetDriverVersion))
        count = _call(record, "count", pynvml.nvmlDeviceGetCount) or 0
        for index in range(count):
            device: dict[str, Any] = {"index": index}
            handle = _call(device, "handle", pynvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                record["devices"].append(device)
                continue
            device["uuid"] = _text(_call(device, "uuid", pynvml.nvmlDeviceGetUUID, handle))
            device["name"] = _text(_call(device, "name", pynvml.nvmlDeviceGetName, handle))
            memory = _call(device, "memory", pynvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                device["memory"] = {
                    "total": getattr(memory, "total", None),
                    "used": getattr(memory, "used", None),
                    "free": getattr(memory, "free", None),
                }
            rates = _call(device, "utilization", pynvml.nvmlDeviceGetUtilizationRates, handle)
            if rates is not None:
                device["utilization"] = {
                    "gpu": getattr(rates, "gpu", None),
                    "memory": getattr(rates, "memory", None),
                }
            device["compute_processes"] = _processes(
                _call(device, "compute", pynvml.nvmlDeviceGetComputeRunningProcesses, handle)
            )
            device["graphics_processes"] = _processes(
                _call(device, "graphics", pynvml.nvmlDeviceGetGraphicsRunningProcesses, handle)
            )
            record["devices"].append(device)
        found = len(gpus_from_records(record))
        record["status"] = NVML_STATUS["ok"].format(count=found) if found else NVML_STATUS["none"]
        return record
    finally:
        # Already shut down or never fully up: nothing to release.
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()

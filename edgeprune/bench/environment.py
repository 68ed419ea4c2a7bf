"""The machine record every benchmark carries: CPU model, cores, platform, runtime and library versions, threads."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model(cpuinfo: str | None = None) -> str:
    """CPU name from /proc/cpuinfo ("model name" on x86, "Hardware" / "CPU part" on ARM), else platform.processor()."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields and value.strip():
            fields[key.strip()] = value.strip()
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        if key in fields:
            return fields[key]
    if "CPU implementer" in fields:
        return f"ARM implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    return platform.processor() or platform.machine() or "unknown"


def runtime_versions(runtime: str) -> dict[str, str]:
    import numpy

    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    import torch

    versions["torch"] = torch.__version__
    if runtime == "onnxruntime":
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    from .. import __version__

    versions["edgeprune"] = __version__
    return versions


def environment_info(runtime: str, threads: int, device: str = "cpu") -> dict:
    """The "device" record of a local benchmark (the ADB harness writes its own, richer one for phones)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    info = {
        "kind": device,
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "runtime": runtime,
        "threads": threads,
        "versions": runtime_versions(runtime),
        # Other work on the machine skews latencies; the load at the start tells a reader how quiet it was.
        "load_average": load,
    }
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info

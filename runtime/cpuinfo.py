"""What this machine's CPU is: its name, its feature flags and its physical cores, in one place.

Every quoted time is read against the CPU's name; the INT8 flavour, the demo's recipe and its printout depend on the
flags; serving splits the physical cores between model instances. Linux's /proc/cpuinfo and /sys topology are read;
elsewhere each function falls back to what Python knows.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with CPUINFO.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> set[str]:
    """The first processor's flags (empty when /proc/cpuinfo cannot be read, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once), as ONNX Runtime counts its default
    threads; all logical CPUs where the topology is not readable."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))

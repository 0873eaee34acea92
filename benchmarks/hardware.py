"""What the numbers depend on: the machine, the library versions, the measured fp32 matmul peak, and memory.

The peak is *measured* in the same run with the same thread count rather than taken from a datasheet, so "share of
peak" compares like with like on a shared or throttled machine: the best of several large float32 ``torch.mm`` calls
(2 n^3 FLOPs each), which is what MKL/OpenBLAS/oneDNN reach on this CPU for the op DETR spends most of its time in.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import psutil
import torch

from runtime.cpuinfo import cpu_model

LIBRARIES = ("torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "pillow", "tensorrt")


def versions() -> dict[str, str | None]:
    """Installed version of each library a latency number depends on (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none): whether other work shared the machine."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, object]:
    """CPU, core counts, memory and OS; the load average says whether other work shared the machine."""
    load = load_average()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 2),
        "platform": platform.platform(),
        "load_average_1_5_15": load,
        "gpu": None,  # filled in by a GPU backend when one runs
    }


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float | int]:
    """Best-of-``repeats`` FLOP/s of an n x n x n float32 ``torch.mm`` on ``threads`` threads (after one warmup)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n, dtype=torch.float32)
        b = torch.randn(n, n, dtype=torch.float32)
        out = torch.empty(n, n, dtype=torch.float32)
        torch.mm(a, b, out=out)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    flops = 2.0 * n**3
    return {"flops_per_second": flops / best, "n": n, "repeats": repeats, "threads": threads,
            "best_seconds": best, "method": f"best of {repeats} torch.mm float32 {n}x{n} @ {n}x{n}"}


def current_rss() -> int:
    """Resident set size of this process, in bytes."""
    return psutil.Process().memory_info().rss


def process_peak_rss() -> int:
    """The kernel's high-water mark of this process's RSS, in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class RssSampler:
    """Samples the RSS every ``interval`` seconds in a background thread, so the peak *during* a backend's calls can
    be read afterwards from the calls' time windows (all backends share one process)."""

    interval: float = 0.005
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        process = psutil.Process()

        def loop() -> None:
            while not self._stop.is_set():
                self.samples.append((time.perf_counter(), process.memory_info().rss))
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def peak_within(self, windows: list[tuple[float, float]]) -> int | None:
        """Largest sampled RSS inside any of the (start, end) ``windows`` (perf_counter seconds); None if none."""
        if not self.samples or not windows:
            return None
        times = np.array([t for t, _ in self.samples])
        values = np.array([v for _, v in self.samples])
        best = None
        for start, end in windows:
            inside = values[(times >= start) & (times <= end)]
            if inside.size:
                best = int(inside.max()) if best is None else max(best, int(inside.max()))
        return best

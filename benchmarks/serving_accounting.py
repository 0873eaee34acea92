"""Where a served request's time goes, from counters rather than wall time alone (the benchmark machine is shared).

Two kinds of counters, each read before and after a load level and differenced:

- CPU seconds per process (psutil): the tritonserver process (HTTP, queue, batching, its side of the Python backend's
  shared-memory IPC) and its stub processes (the ``panseg`` model: decode, preprocess, engine, merge, PNG, JSON).
  The client's CPU is taken per worker thread by the load generator. CPU time is not inflated by other work waiting
  for the cores the way wall time is.
- Triton's own per-model timers (its Prometheus metrics, cumulative microseconds): queue, compute input, compute
  infer (the stub's ``execute`` plus the IPC around it) and compute output, and the whole request inside the server.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from runtime.serving.protocol import MODEL_NAME

# Triton's cumulative per-model counters (microseconds, except the counts).
TIMERS = {"request": "nv_inference_request_duration_us", "queue": "nv_inference_queue_duration_us",
          "compute_input": "nv_inference_compute_input_duration_us",
          "compute_infer": "nv_inference_compute_infer_duration_us",
          "compute_output": "nv_inference_compute_output_duration_us"}
COUNTS = {"requests": "nv_inference_request_success", "executions": "nv_inference_exec_count"}


def read_metrics(metrics_port: int, model: str = MODEL_NAME) -> dict[str, float]:
    """The counters above for ``model`` (summed over its versions), from the server's metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    wanted = {name: key for key, name in {**TIMERS, **COUNTS}.items()}
    values = dict.fromkeys(wanted.values(), 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in wanted and f'model="{model}"' in line:
            values[wanted[name]] += float(line.split()[-1])
    return values


def process_cpu_seconds(server_pid: int) -> dict[str, float]:
    """User + system CPU seconds so far of the server process and (summed) of its live child processes, the stubs."""
    server = psutil.Process(server_pid)
    times = server.cpu_times()
    stubs = 0.0
    for child in server.children():
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        stubs += t.user + t.system
    return {"server": times.user + times.system, "stubs": stubs}


@dataclass
class Snapshot:
    metrics: dict[str, float]
    cpu: dict[str, float]

    @classmethod
    def take(cls, server_pid: int, metrics_port: int) -> Snapshot:
        return cls(read_metrics(metrics_port), process_cpu_seconds(server_pid))


def per_request(intervals: list[tuple[Snapshot, Snapshot]], client_cpu_seconds: float) -> dict[str, float | None]:
    """Milliseconds per successful request over the (before, after) snapshot pairs: Triton's timers (mean over the
    requests), CPU of the server, the stubs and the client, and the mean number of requests per model execution."""

    def total(read: Callable[[Snapshot], float]) -> float:
        return sum(read(after) - read(before) for before, after in intervals)

    requests = total(lambda s: s.metrics["requests"])
    executions = total(lambda s: s.metrics["executions"])
    if requests <= 0:
        return {}
    ms: dict[str, float | None] = {f"{key}_ms": round(total(lambda s, k=key: s.metrics[k]) / 1000 / requests, 2)
                                   for key in TIMERS}
    for role in ("server", "stubs"):
        ms[f"cpu_{role}_ms"] = round(1000 * total(lambda s, r=role: s.cpu[r]) / requests, 2)
    ms["cpu_client_ms"] = round(1000 * client_cpu_seconds / requests, 2)
    ms["requests_per_execution"] = round(requests / executions, 2) if executions else None
    return ms

"""Round-robin timing of several pipelines on the same image batches, so machine drift hits all of them alike.

Per timed iteration every batch ("group") of the image set is run once by every pipeline, back to back, with the
pipeline order rotated by one for each (iteration, group): no pipeline always runs first (cold caches) or always
right after a particular other one. Work a call does besides the timed job (CallResult.untimed) is subtracted.
Warmup iterations run the same way and are not recorded. Python's garbage collector is paused during the timed
phase, as in runtime.bench.time_calls.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from benchmarks.pipelines import CallResult
from runtime.postprocess import PanopticResult

Runner = Callable[[Sequence[Path]], CallResult]


@dataclass
class Sample:
    """One timed call: which iteration and group, its wall time (measured around the call) and stage times."""

    iteration: int
    group: int
    total: float
    stages: dict[str, float]
    window: tuple[float, float]
    side_seconds: dict[str, float] = field(default_factory=dict)  # the call's untimed by-products (see CallResult)


@dataclass
class PipelineRun:
    samples: list[Sample] = field(default_factory=list)
    results: list[list[PanopticResult]] = field(default_factory=list)  # per group, from the first timed iteration
    side_results: dict[str, list[list[PanopticResult]]] = field(default_factory=dict)  # the same, of by-products


def image_groups(paths: Sequence[Path], batch: int) -> list[list[Path]]:
    """The image set cut into batches of exactly ``batch`` images, wrapping around at the end (so every call has the
    same batch size and every image is in at least one batch)."""
    if not paths:
        raise ValueError("no images")
    count = math.ceil(len(paths) / batch)
    return [[paths[(g * batch + k) % len(paths)] for k in range(batch)] for g in range(count)]


def rotated(items: Sequence[str], shift: int) -> list[str]:
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def run_interleaved(pipelines: dict[str, Runner], groups: Sequence[Sequence[Path]], iterations: int, warmup: int,
                    progress: bool = True, label: str = "") -> dict[str, PipelineRun]:
    """Time every pipeline on every group ``iterations`` times, round-robin (see the module docstring)."""
    names = list(pipelines)
    runs = {name: PipelineRun() for name in names}
    total_calls = (warmup + iterations) * len(groups) * len(names)
    bar = tqdm(total=total_calls, desc=f"latency {label}".strip(), unit="call", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    gc_was_enabled = gc.isenabled()
    try:
        for iteration in range(-warmup, iterations):
            timed = iteration >= 0
            if timed:
                gc.collect()
                gc.disable()
            for g, group in enumerate(groups):
                for name in rotated(names, (iteration + warmup) * len(groups) + g):
                    started = time.perf_counter()
                    result = pipelines[name](group)
                    ended = time.perf_counter()
                    bar.update()
                    if not timed:
                        continue
                    runs[name].samples.append(Sample(iteration, g, ended - started - result.untimed,
                                                     dict(result.stages), (started, ended),
                                                     dict(result.side_seconds)))
                    if iteration == 0:
                        runs[name].results.append(result.results)
                        for key, side in result.side_results.items():
                            runs[name].side_results.setdefault(key, []).append(side)
    finally:
        if gc_was_enabled:
            gc.enable()
        bar.close()
    return runs

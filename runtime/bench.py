"""Model latency, trtexec-style: what ``panseg-rt bench`` times, the timing loop and its statistics (no torch).

What is timed: the model as ``runtime.model.load_model`` loads it, on the same seeded random inputs every call, so the
numbers are the engine's (for TensorRT including the host<->device copies, as trtexec's "Latency"), without image
decoding, resizing or post-processing. One row per thing timed:

- a single graph: one row, ``model``: ``PanopticModel.run`` (the graph and the query selection), the whole model;
- a query-sparse pair (the export's default for panoptic models): ``detector`` (the detector graph alone),
  ``masks`` (the mask graph alone, on the detector's real outputs for the kept queries) and ``model``: the pair end
  to end (``PanopticModel.run``: detector + selection + mask graph), the whole model's latency.

Kept queries: random images are not photos (a trained model keeps next to nothing on noise, an untrained one all or
nothing), so the benchmark does not use the threshold: every image keeps its ``kept`` queries with the highest object
probability (:func:`top_queries`), ``--kept N`` or by default ``DEFAULT_KEPT_FRACTION`` of the model's queries (20 of
detr's 100: the number ``benchmarks/latency.py`` calibrates its random model to keep per photo). The mask graph's
cost grows with it, so the summary and the JSON say it.

``panseg-rt bench`` prints the rows; the full benchmark in ``benchmarks/`` reuses ``time_calls`` and
``latency_stats``.

Method, so that numbers from different runs and machines mean the same thing:

- Warmup: at least ``warmup`` calls and at least ``warmup_seconds``; none of them is recorded. Each row warms up.
- Timed phase: at least ``iterations`` calls and at least ``duration`` seconds (trtexec's ``--iterations`` and
  ``--duration`` work the same way), per row. Each call is bracketed by ``time.perf_counter_ns``; Python's cyclic
  garbage collector is paused meanwhile (as ``timeit`` does) so a collection does not land inside a sample.
- Percentiles: numpy's default "linear" method (type 7 of Hyndman & Fan: rank ``q/100 * (n - 1)`` interpolated
  between the two nearest sorted samples). With fewer than 100 samples p99 lies between the two largest samples.
- Spread: population standard deviation (ddof=0) and the coefficient of variation stdev / mean; above 5% the row is
  flagged "timings unstable" (load on the machine, frequency scaling, too short a warmup).
- Throughput: ``qps = 1000 / mean_ms`` calls per second and ``images/s = batch * qps``.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import numpy as np
from tqdm import tqdm

from runtime.backends import Backend
from runtime.backends.base import TensorSpec
from runtime.contract import DETECTOR_OUTPUTS, MASK_GRAPH_OUTPUTS
from runtime.contract import IMAGES as IMAGES_INPUT
from runtime.contract import PADDING_MASK as MASK_INPUT
from runtime.cpuinfo import cpu_model
from runtime.errors import PansegError
from runtime.model import EngineShape, PanopticModel, load_model
from runtime.model_info import ModelInfo
from runtime.postprocess import softmax
from runtime.preprocess import target_size
from runtime.sparse import QuerySelector, kept_mask_feeds
from runtime.trt_sidecar import check_shapes_in_profile, format_shape

PERCENTILE_METHOD = "linear"  # numpy.percentile's default; documented in the JSON and above
PERCENTILES = (90, 95, 99)
UNSTABLE_CV = 0.05  # coefficient of variation above which the timings are flagged
TYPICAL_PHOTO = (640, 480)  # (width, height) of the 4:3 photo the default input size is computed for
JSON_VERSION = 2  # 2: a row per graph of a query-sparse pair and one for the whole model
DEFAULT_KEPT_FRACTION = 0.2  # of the model's queries, kept per image by default (see the module docstring)
KEPT_RULE = "each image keeps its N queries with the highest object probability, whatever their score"
_BACKEND_MODULES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}


# ------------------------------------------------------------------------------------------------------ statistics


def percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples`` by numpy's linear interpolation (see the module docstring)."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("percentile of no samples")
    return float(np.percentile(values, q, method=PERCENTILE_METHOD))


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latency samples, in milliseconds (``cv`` is a fraction: 0.05 = 5%)."""

    count: int
    min: float
    max: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    stdev: float
    cv: float

    @property
    def unstable(self) -> bool:
        return self.cv > UNSTABLE_CV

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)

    def trtexec_line(self) -> str:
        """``Latency: min = ... ms, max = ..., ...`` as trtexec prints it."""
        parts = [f"min = {self.min:.4f} ms", f"max = {self.max:.4f} ms", f"mean = {self.mean:.4f} ms",
                 f"median = {self.median:.4f} ms"]
        parts += [f"percentile({q}%) = {getattr(self, f'p{q}'):.4f} ms" for q in PERCENTILES]
        return "Latency: " + ", ".join(parts)


def latency_stats(samples_ms: Sequence[float] | np.ndarray) -> LatencyStats:
    """min/max/mean/median/p90/p95/p99, population stdev and CV of ``samples_ms`` (at least one sample)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"latency_stats needs a non-empty 1-D sequence of samples, got shape {values.shape}")
    mean = float(values.mean())
    stdev = float(values.std(ddof=0))
    q = np.percentile(values, (50, *PERCENTILES), method=PERCENTILE_METHOD)
    return LatencyStats(count=int(values.size), min=float(values.min()), max=float(values.max()), mean=mean,
                        median=float(q[0]), p90=float(q[1]), p95=float(q[2]), p99=float(q[3]), stdev=stdev,
                        cv=stdev / mean if mean > 0 else (0.0 if stdev == 0 else math.inf))


# ------------------------------------------------------------------------------------------------------ timing loop


@dataclass
class Timing:
    """Raw timings of one run: per-call nanoseconds of the timed phase, and how the warmup went."""

    samples_ns: list[int]
    warmup_iterations: int
    warmup_ns: int
    wall_ns: int  # the timed phase, first call start to last call end (trtexec's "Total Host Walltime")

    @property
    def samples_ms(self) -> list[float]:
        return [ns / 1e6 for ns in self.samples_ns]


def time_calls(call: Callable[[], object], iterations: int, warmup: int = 0, warmup_seconds: float = 0.0,
               duration: float = 0.0, progress: bool = False, clock: Callable[[], int] | None = None) -> Timing:
    """Call ``call`` for the warmup (unrecorded), then at least ``iterations`` times and ``duration`` seconds, timed.

    ``clock`` returns nanoseconds (default ``time.perf_counter_ns``; tests pass a fake one).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    clock = clock or perf_counter_ns
    bar_options: dict[str, Any] = {"file": sys.stderr, "disable": not progress, "delay": 1.0, "leave": False}
    started = clock()
    done = 0
    with tqdm(desc="warmup", total=warmup or None, unit="call", **bar_options) as bar:
        while done < warmup or clock() - started < warmup_seconds * 1e9:
            call()
            done += 1
            bar.update()
    warmup_ns = clock() - started

    samples: list[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with tqdm(desc="timing", total=iterations if duration <= 0 else None, unit="call", **bar_options) as bar:
            begin = clock()
            while len(samples) < iterations or clock() - begin < duration * 1e9:
                t0 = clock()
                call()
                samples.append(clock() - t0)
                bar.update()
            end = clock()
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(samples, done, warmup_ns, end - begin)


# ------------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class BenchShape:
    """The batch and image size to time, and where each came from (for the report)."""

    batch: int
    height: int
    width: int
    batch_source: str
    size_source: str


def _image_spec(backend: Backend) -> TensorSpec:
    specs = {s.name: s for s in backend.input_specs()}
    unknown = [n for n in specs if n not in (IMAGES_INPUT, MASK_INPUT)]
    if IMAGES_INPUT not in specs or unknown:
        raise PansegError(f"{backend.path}: engine inputs {sorted(specs)} are not a panseg DETR's "
                          f"(expected {IMAGES_INPUT} and optionally {MASK_INPUT})")
    return specs[IMAGES_INPUT]


def resolve_shape(backend: Backend, info: ModelInfo, batch: int | None = None,
                  size: tuple[int, int] | None = None) -> BenchShape:
    """The (batch, height, width) to time: the caller's, checked against the engine, or the engine's natural one.

    Defaults, most binding first: the engine's fixed dims; a TensorRT profile's opt shape; batch 1 and the size the
    model's resize policy gives a typical 640x480 photo (800x1066 for detr's 800/1333).
    """
    spec = _image_spec(backend)
    fixed = EngineShape.from_spec(spec)
    profile = getattr(backend, "profiles", {}).get(IMAGES_INPUT)
    where = backend.path

    if batch is None:
        if fixed.batch is not None:
            batch, batch_source = fixed.batch, "the engine's fixed batch"
        elif profile is not None:
            batch, batch_source = int(profile.opt[0]), "the TensorRT profile's opt shape"
        else:
            batch, batch_source = 1, "default"
    else:
        if fixed.batch is not None and batch != fixed.batch:
            raise PansegError(f"{where}: the engine's batch is fixed at {fixed.batch} ({spec.describe()}); batch "
                              f"{batch} is not possible (drop --batch, or export with a dynamic batch)")
        batch_source = "--batch"

    if size is None:
        if profile is not None:
            height, width = int(profile.opt[2]), int(profile.opt[3])
            size_source = "the TensorRT profile's opt shape"
        else:
            policy_h, policy_w = target_size(*TYPICAL_PHOTO, info.resize.size, info.resize.max_size)
            height, width = fixed.height or policy_h, fixed.width or policy_w
            limit = info.resize.max_size if info.resize.max_size is not None else "none"
            size_source = (f"resize policy {info.resize.size}/{limit} for a "
                           f"{TYPICAL_PHOTO[0]}x{TYPICAL_PHOTO[1]} photo")
            if fixed.height is not None and fixed.width is not None:
                size_source = "the engine's fixed input"
    else:
        height, width = size
        if (fixed.height is not None and height != fixed.height) or (fixed.width is not None and width != fixed.width):
            raise PansegError(f"{where}: the engine's input is fixed at {fixed.height}x{fixed.width} "
                              f"({spec.describe()}); --shape {height}x{width} is not possible")
        size_source = "--shape"

    shapes = {IMAGES_INPUT: (batch, _channels(spec), height, width), MASK_INPUT: (batch, height, width)}
    check_shapes_in_profile(shapes, getattr(backend, "profiles", {}), where)
    return BenchShape(batch, height, width, batch_source, size_source)


def _channels(spec: TensorSpec) -> int:
    channels = spec.shape[1] if len(spec.shape) > 1 else None
    return channels if isinstance(channels, int) and channels > 0 else 3


def padded_columns(width: int, padding_fraction: float) -> int:
    """Columns on the right marked as padding: ``round(fraction * width)``, leaving at least one real column."""
    return min(int(round(padding_fraction * width)), width - 1)


def make_feeds(backend: Backend, info: ModelInfo, shape: BenchShape, seed: int = 0,
               padding_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """Seeded random images normalized with the model's mean/std, and a padding mask (right part padded if asked)."""
    specs = {s.name: s for s in backend.input_specs()}
    image_spec = specs[IMAGES_INPUT]
    b, c, h, w = shape.batch, _channels(image_spec), shape.height, shape.width
    rng = np.random.default_rng(seed)
    pixels = rng.random((b, c, h, w), dtype=np.float32)
    mean = np.asarray(info.mean[:c], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(info.std[:c], dtype=np.float32).reshape(-1, 1, 1)
    images = (pixels - mean) / std
    mask = np.zeros((b, h, w), dtype=bool)
    pad = padded_columns(w, padding_fraction)
    if pad:
        mask[:, :, w - pad:] = True
        images[:, :, :, w - pad:] = 0.0  # as pad_batch leaves padding: zeros after normalization
    feeds = {IMAGES_INPUT: np.ascontiguousarray(images, dtype=image_spec.dtype or np.float32)}
    if MASK_INPUT in specs:
        feeds[MASK_INPUT] = mask.astype(specs[MASK_INPUT].dtype or bool, copy=False)
    return feeds


# ------------------------------------------------------------------------------------------------------ the run


@dataclass
class BenchOptions:
    """What to time and how long; None for batch/shape means the engine's natural shape (``resolve_shape``), None
    for kept the default share of the model's queries (``DEFAULT_KEPT_FRACTION``)."""

    batch: int | None = None
    shape: tuple[int, int] | None = None  # (height, width)
    iterations: int = 50
    warmup: int = 5
    warmup_seconds: float = 0.0
    duration: float = 0.0
    seed: int = 0
    padding_fraction: float = 0.0
    kept: int | None = None  # queries kept per image
    progress: bool = True

    def check(self) -> None:
        """One-line errors, named after the command-line flags, for values that make no sense."""
        for name in ("batch", "iterations", "kept"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise PansegError(f"--{name} must be a positive integer, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise PansegError(f"--warmup must be a non-negative integer, got {self.warmup!r}")
        for name in ("warmup_seconds", "duration"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise PansegError(f"--{name.replace('_', '-')} must be a non-negative number of seconds, "
                                  f"got {value!r}")
        if self.shape is not None and (len(self.shape) != 2 or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.shape)):
            raise PansegError(f"--shape must be two positive integers HxW, got {self.shape!r}")
        if not (isinstance(self.padding_fraction, int | float) and 0.0 <= self.padding_fraction < 1.0):
            raise PansegError(f"--padding-fraction must be in [0, 1), got {self.padding_fraction!r}")


# ------------------------------------------------------------------------------------------------------ kept queries


def resolve_kept(info: ModelInfo, kept: int | None) -> tuple[int, str]:
    """Queries kept per image, and where the number came from (for the report)."""
    if kept is None:
        count = min(info.num_queries, max(1, round(DEFAULT_KEPT_FRACTION * info.num_queries)))
        return count, f"default: {DEFAULT_KEPT_FRACTION:.0%} of the model's {info.num_queries} queries; --kept N"
    if kept > info.num_queries:
        raise PansegError(f"{info.source}: --kept {kept} is more than the model's {info.num_queries} queries")
    return kept, "--kept"


def top_queries(count: int) -> QuerySelector:
    """A selection rule that keeps each image's ``count`` queries with the highest object probability (the best class
    other than "no object"), whatever that probability: the benchmark's stand-in for the threshold, which on random
    inputs keeps an arbitrary number (see the module docstring)."""

    def select(logits: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        objects = softmax(logits, axis=-1)[:, :-1]
        scores, labels = objects.max(-1), objects.argmax(-1)
        keep = np.sort(np.argsort(-scores, kind="stable")[:count])
        return keep, scores[keep], labels[keep]

    return select


# ------------------------------------------------------------------------------------------------------ the run


@dataclass
class BenchRow:
    """One thing timed: a graph alone, or the whole model (``whole_model``), with its inputs and its samples."""

    name: str  # "detector", "masks" (a query-sparse pair's graphs) or "model" (the whole model, either layout)
    role: str  # what the row times, in words
    files: list[str]  # the engine files that run in each call
    whole_model: bool
    inputs: dict[str, dict[str, Any]]  # name -> {"shape": [...], "dtype": "..."}
    timing: Timing
    stats: LatencyStats
    batch: int

    @property
    def qps(self) -> float:
        return 1000.0 / self.stats.mean if self.stats.mean > 0 else math.inf

    @property
    def images_per_second(self) -> float:
        return self.batch * self.qps

    @property
    def title(self) -> str:
        names = " + ".join(Path(f).name for f in self.files)
        return f"{self.name} ({names}): {self.role}"

    @property
    def warnings(self) -> list[str]:
        found = []
        if self.stats.unstable:
            found.append(f"{self.name}: timings unstable: coefficient of variation {100 * self.stats.cv:.1f}% > "
                         f"{100 * UNSTABLE_CV:.0f}% (other load on the machine, CPU frequency scaling or too short a "
                         "warmup; rerun on an idle machine with more --warmup/--iterations)")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "files": self.files,
            "whole_model": self.whole_model,
            "inputs": self.inputs,
            "warmup": {"done_iterations": self.timing.warmup_iterations, "done_seconds": self.timing.warmup_ns / 1e9},
            "timed_iterations": len(self.timing.samples_ns),
            "latency_ms": self.stats.to_json(),
            "throughput": {"qps": self.qps, "images_per_second": self.images_per_second},
            "wall_seconds": self.timing.wall_ns / 1e9,
            "stable": not self.stats.unstable,
            "warnings": self.warnings,
            "samples_ms": self.timing.samples_ms,
        }

    def summary_lines(self) -> list[str]:
        """One row as trtexec prints its summary ("Throughput: ... qps", "Latency: ...")."""
        s = self.stats
        inputs = ", ".join(f"{name} {format_shape(v['shape'])} {v['dtype']}" for name, v in self.inputs.items())
        return [
            f"=== Performance summary: {self.title} ===",
            f"Inputs: {inputs}",
            f"Timing: {s.count} iterations after {self.timing.warmup_iterations} warmup iterations "
            f"({self.timing.warmup_ns / 1e9:.2f} s)",
            f"Throughput: {self.qps:.4f} qps ({self.images_per_second:.4f} images/s at batch {self.batch})",
            s.trtexec_line(),
            f"Latency stdev = {s.stdev:.4f} ms, coefficient of variation = {100 * s.cv:.2f}%",
            f"Total Host Walltime: {self.timing.wall_ns / 1e9:.4f} s",
        ]


@dataclass
class BenchResult:
    """Everything one run measured (a row per graph and one for the whole model) and the conditions it ran under."""

    model: str
    layout: str  # "single graph" or "query-sparse pair"
    shape: BenchShape
    kept: int
    kept_source: str
    options: BenchOptions
    rows: list[BenchRow]
    environment: dict[str, Any]
    load_seconds: float = 0.0
    precision: str = "fp32"  # the model's, as its metadata says (ModelInfo.precision)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def whole_model(self) -> BenchRow:
        return next(row for row in self.rows if row.whole_model)

    @property
    def warnings(self) -> list[str]:
        return [warning for row in self.rows for warning in row.warnings]

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "format_version": JSON_VERSION,
            "created": self.created,
            "model": self.model,
            "layout": self.layout,
            "batch": self.shape.batch,
            "shape": [self.shape.height, self.shape.width],
            "batch_source": self.shape.batch_source,
            "shape_source": self.shape.size_source,
            "padding_fraction": o.padding_fraction,
            "padded_columns": padded_columns(self.shape.width, o.padding_fraction),
            "seed": o.seed,
            "kept_per_image": self.kept,
            "kept_source": self.kept_source,
            "kept_rule": KEPT_RULE,
            "iterations": o.iterations,
            "duration_seconds": o.duration,
            "warmup": {"iterations": o.warmup, "seconds": o.warmup_seconds},
            "percentile_method": f"numpy.percentile method={PERCENTILE_METHOD!r}",
            "stdev": "population (ddof=0)",
            "load_seconds": self.load_seconds,
            "whole_model_row": self.whole_model.name,
            "stable": not self.warnings,
            "warnings": self.warnings,
            **self.environment,
            "rows": [row.to_json() for row in self.rows],
        }

    def summary_lines(self) -> list[str]:
        """The report as trtexec prints it, a "=== Performance summary ===" block per row, the whole model last."""
        env, shape = self.environment, self.shape
        engine = [f"{env['backend']} {env.get('backend_version') or '(version unknown)'}"]
        if env.get("providers"):
            engine.append(f"providers {', '.join(env['providers'])}")
        if env.get("gpu"):
            engine.append(f"GPU {env['gpu']}")
        if env["backend"] == "onnxruntime":
            engine.append(f"intra-op threads {env.get('threads') or 'default'}")
        padded = padded_columns(shape.width, self.options.padding_fraction)
        whole = self.whole_model
        files = " + ".join(Path(f).name for f in whole.files)
        lines = [
            "=== Model ===",
            f"Engine: {self.model} ({self.layout}: {files}; {'; '.join(engine)}; loaded in {self.load_seconds:.2f} s)",
            f"Input: batch {shape.batch} ({shape.batch_source}), {shape.height}x{shape.width} ({shape.size_source}); "
            f"{padded} padded columns; seed {self.options.seed}",
            f"Kept: {self.kept} queries per image ({self.kept_source}); {KEPT_RULE}",
            f"Host: {env['cpu']} ({env['cpu_count']} logical CPUs), {env['platform']}",
        ]
        for row in self.rows:
            lines += row.summary_lines()
        others = "" if len(self.rows) == 1 else "; the other rows time one graph each"
        lines.append(f"=== Whole model: row '{whole.name}' ({files}), mean {whole.stats.mean:.4f} ms per batch of "
                     f"{shape.batch}{others} ===")
        return lines


def environment(backend: Backend) -> dict[str, Any]:
    """Backend, its version, providers/GPU and threads, and the host: what a latency number depends on."""
    module = sys.modules.get(_BACKEND_MODULES.get(backend.name, ""))
    session = getattr(backend, "session", None)
    providers = session.get_providers() if session is not None else getattr(backend, "providers", None)
    gpu = getattr(backend, "gpu", None)
    return {
        "backend": backend.name,
        "backend_version": getattr(module, "__version__", None),
        "providers": list(providers) if providers else None,
        "gpu": gpu.describe() if hasattr(gpu, "describe") else None,
        "threads": getattr(backend, "intra_op_threads", None),  # None: the backend's default
        "inter_op_threads": getattr(backend, "inter_op_threads", None),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def _tensor_shapes(feeds: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in feeds.items()}


def run_benchmark(model: PanopticModel, options: BenchOptions, clock: Callable[[], int] | None = None) -> BenchResult:
    """Time a loaded ``model`` on random inputs of the resolved shape: a row per graph of a query-sparse pair, then
    the whole model (``model.run``); a single graph gives the whole-model row only."""
    options.check()
    detector, info = model.detector, model.info
    shape = resolve_shape(detector, info, options.batch, options.shape)
    kept, kept_source = resolve_kept(info, options.kept)
    select = top_queries(kept)
    feeds = make_feeds(detector, info, shape, options.seed, options.padding_fraction)

    def timed(call: Callable[[], object]) -> tuple[Timing, LatencyStats]:
        timing = time_calls(call, options.iterations, options.warmup, options.warmup_seconds, options.duration,
                            options.progress, clock)
        return timing, latency_stats(timing.samples_ms)

    rows = []
    images, padding_mask = feeds[IMAGES_INPUT], feeds.get(MASK_INPUT)
    if padding_mask is None:  # the model does not read it; model.run still takes one
        padding_mask = np.zeros((shape.batch, shape.height, shape.width), dtype=bool)
    if model.masks is not None:
        masks = model.masks
        detector_outputs = list(DETECTOR_OUTPUTS)
        rows.append(BenchRow("detector", "the detector graph alone", [str(detector.path)], False, _tensor_shapes(feeds),
                             *timed(lambda: detector.infer(feeds, detector_outputs)), shape.batch))
        mask_feeds = kept_mask_feeds(detector.infer(feeds, detector_outputs), select)  # untimed: real inputs
        rows.append(BenchRow("masks", f"the mask graph alone, on the detector's outputs for {kept} kept queries per "
                             "image", [str(masks.path)], False, _tensor_shapes(mask_feeds),
                             *timed(lambda: masks.infer(mask_feeds, list(MASK_GRAPH_OUTPUTS))), shape.batch))
        role = "THE WHOLE MODEL: detector + query selection + mask graph, end to end (model.run)"
    else:
        role = "THE WHOLE MODEL: the single graph (every query's mask) + query selection (model.run)"
    rows.append(BenchRow("model", role, [str(f) for f in model.files], True, _tensor_shapes(feeds),
                         *timed(lambda: model.run(images, padding_mask, info.threshold, select=select)), shape.batch))
    return BenchResult(str(model.path), "query-sparse pair" if model.query_sparse else "single graph", shape, kept,
                       kept_source, options, rows, environment(detector),
                       precision=model.info.precision.describe())


def bench_engine(engine: str | os.PathLike, options: BenchOptions | None = None, backend: str | None = None,
                 backend_options: Mapping[str, Any] | None = None) -> BenchResult:
    """Load the model ``engine`` (.onnx with ONNX Runtime, .plan/.engine with TensorRT; a query-sparse detector with
    its mask graph) through ``load_model`` and time it."""
    options = options or BenchOptions()
    options.check()
    path = Path(engine)
    if not path.is_file():
        raise PansegError(f"{path}: {'is not a file' if path.exists() else 'no such engine file'}")
    started = time.perf_counter()
    with load_model(path, backend, backend_options) as model:
        load_seconds = time.perf_counter() - started
        result = run_benchmark(model, options)
    result.load_seconds = load_seconds
    return result

"""One end-to-end runner per backend: image files in, panoptic results and per-stage seconds out.

Every runner does the whole job a user's program does for a batch of photos: decode + resize + normalize + pad
("preprocess"), the model ("engine"), and the panoptic merge at the original size ("postprocess"); the timed total is
measured around all three, separately from the stages, so the report can show that they add up.

- ``eager``: what a detr user runs, in detr's own code (benchmarks/detr_reference.py): PIL decode, detr's eval
  transform (torchvision's functional resize/to_tensor/normalize) and padding, ``model(images, mask)`` under
  ``torch.inference_mode``, and detr's PostProcessPanoptic (stopping at the id image like the runtime's stage).
  Untimed, the same outputs also go through :class:`benchmarks.torch_postprocess.PostProcessPanoptic`, panseg's
  vectorized torch port of it: its results (which fix detr's padded-batch behaviour) are the agreement reference,
  and its time is reported as a second, stronger PyTorch baseline (``side_seconds["postprocess_torch_port"]``).
- the runtime runners: exactly what ``panseg-rt infer`` runs: ``runtime.model.load_model`` (the graph, or the
  query-sparse detector and its mask graph, on the backend runtime.backends.select_backend picks), then per batch
  runtime.pipeline.Pipeline's stages: ``prepare`` (runtime.preprocess), ``model.run`` (the graph(s) and the query
  selection; runtime/sparse.py for a pair) and ``segment_kept`` on what it kept (runtime.postprocess, no second
  selection): ``onnxruntime`` on the ``--onnx`` model (the query-sparse pair by default), ``onnxruntime-full`` on
  detr's single graph (every query's mask; ``--onnx-full``). For TensorRT the engine stage includes the
  host<->device copies (the backend copies inside ``infer``). A backend given several models (``--onnx fp32.onnx
  int8.onnx``, several ``--plan``) gets one runner per model, named by ``run_names`` after the model's precision.

Each runner also remembers the class logits of its last call per batch of images (``logits``; one dict store after
the last stage), so the benchmark can count the queries that backend kept in the run (the query-sparse FLOPs depend
on it).

``BACKENDS`` is the table of what can be benchmarked; another variant is one more entry.
"""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import detr_reference
from benchmarks.command_line import repo_relative
from benchmarks.torch_postprocess import PostProcessPanoptic
from runtime.errors import PansegError
from runtime.model import load_model
from runtime.model_info import ModelInfo
from runtime.outputs import ImageJob
from runtime.pipeline import InferOptions, Pipeline
from runtime.postprocess import PanopticResult
from train.datasets.coco import open_rgb

STAGES = ("preprocess", "engine", "postprocess")


@dataclass
class CallResult:
    """One timed call on a batch of images: wall seconds of the whole, of each stage, and the results."""

    total: float
    stages: dict[str, float]
    results: list[PanopticResult]
    started: float = 0.0  # perf_counter at the start (for the memory sampler's windows)
    # Untimed by-products (eager: the torch port's seconds and detr's own results) and the seconds they took inside
    # the call, which the timing loop subtracts from the wall time it measures around the call.
    side_seconds: dict[str, float] = field(default_factory=dict)
    side_results: dict[str, list[PanopticResult]] = field(default_factory=dict)
    untimed: float = 0.0


@dataclass(frozen=True)
class ResizeSettings:
    """detr's eval resize (shorter side, longer side limit) and the score threshold, shared by all runners."""

    size: int
    max_size: int | None
    threshold: float


class _StageClock:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._last = time.perf_counter()
        self.started = self._last

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = now - self._last
        self._last = now


def batch_key(paths: Sequence[Path]) -> tuple[str, ...]:
    """The key of a batch of images in a runner's ``logits``."""
    return tuple(str(p) for p in paths)


class EagerPipeline:
    """PyTorch eager, as a detr user runs it (see the module docstring)."""

    name = "eager"
    flops_kind = "full"  # every query's mask is computed
    copies = "not applicable (CPU)"

    def __init__(self, model: nn.Module, is_thing: dict[int, bool], settings: ResizeSettings, mask_stride: int
                 ) -> None:
        self.model = model.eval()
        self.size, self.max_size = settings.size, settings.max_size
        self.is_thing = is_thing
        self.threshold = settings.threshold
        self.torch_port = PostProcessPanoptic(is_thing, threshold=settings.threshold, mask_stride=mask_stride)
        self.logits: dict[tuple[str, ...], torch.Tensor] = {}  # last call's pred_logits per batch of images

    def __call__(self, paths: Sequence[Path]) -> CallResult:
        clock = _StageClock()
        pictures = [open_rgb(p) for p in paths]
        images, mask, processed = detr_reference.detr_eval_batch(pictures, self.size, self.max_size)
        originals = [(p.height, p.width) for p in pictures]
        clock.lap("preprocess")
        with torch.inference_mode():
            outputs = self.model(images, mask)
        clock.lap("engine")
        detr_predictions = detr_reference.post_process_panoptic(outputs, processed, originals, self.is_thing,
                                                                self.threshold, encode_png=False)
        clock.lap("postprocess")
        total = sum(clock.stages.values())
        started = time.perf_counter()
        results = self.torch_port(outputs, processed, originals)
        port_seconds = time.perf_counter() - started
        detr_results = [detr_reference.to_panoptic_result(p) for p in detr_predictions]
        self.logits[batch_key(paths)] = outputs["pred_logits"]
        return CallResult(total, clock.stages, results, clock.started, {"postprocess_torch_port": port_seconds},
                          {"detr_original": detr_results}, time.perf_counter() - clock.started - total)

    def close(self) -> None:
        pass


class RuntimePipeline:
    """The runtime's own infer path on an exported model (ONNX Runtime with some providers, or TensorRT)."""

    def __init__(self, name: str, engine: Path, backend: str, backend_options: dict[str, Any],
                 settings: ResizeSettings) -> None:
        self.name = name
        self.model = load_model(engine, backend, backend_options)
        self.info: ModelInfo = self.model.info
        loaded = self.model.detector
        options = InferOptions(threshold=settings.threshold, size=settings.size, max_size=settings.max_size,
                               progress=False, prefetch=False)
        self.pipeline = Pipeline(self.model, options)
        self.logits: dict[tuple[str, ...], np.ndarray] = {}  # last call's pred_logits per batch of images
        self.flops_kind = "sparse" if self.model.query_sparse else "full"
        self._copies = ("host<->device copies included in the engine stage" if backend == "tensorrt"
                        or any(p != "CPUExecutionProvider" for p in getattr(loaded, "providers", []))
                        else "not applicable (CPU)")
        self.crossed = {"h2d_bytes": 0, "d2h_bytes": 0, "images": 0}  # counted where the engines count them

    @property
    def copies(self) -> str:
        """How host <-> device copies are accounted for; with the TensorRT pair, the bytes that crossed per image
        (input image and padding mask up, logits, boxes and the kept masks down), as its engines counted them."""
        images = self.crossed["images"]
        if not images:
            return self._copies
        return (f"{self._copies}; per image H2D {self.crossed['h2d_bytes'] / images / 1e6:.3f} MB, D2H "
                f"{self.crossed['d2h_bytes'] / images / 1e6:.3f} MB (counted)")

    def __call__(self, paths: Sequence[Path]) -> CallResult:
        clock = _StageClock()
        jobs = [ImageJob(Path(p), k, f"{Path(p).stem}.png") for k, p in enumerate(paths)]
        batch = self.pipeline.prepare(jobs)
        if batch.failures:
            raise PansegError(str(batch.failures[0]))
        clock.lap("preprocess")
        pair = self.model.device_pair
        if pair is not None:
            pair.reset_transfers()
        with self.pipeline.times.measure("engine"):
            outputs = self.model.run(batch.images, batch.mask, self.pipeline.threshold)
        clock.lap("engine")
        if pair is not None:
            crossed = pair.transfers()
            self.crossed["h2d_bytes"] += crossed.h2d_bytes
            self.crossed["d2h_bytes"] += crossed.d2h_bytes
            self.crossed["images"] += len(batch.jobs)
        results = [self.pipeline.postprocess(kept, batch.processed[k], batch.original[k])
                   for k, kept in enumerate(outputs.kept)]
        clock.lap("postprocess")
        self.logits[batch_key(paths)] = outputs.pred_logits
        return CallResult(sum(clock.stages.values()), clock.stages, results, clock.started)

    def close(self) -> None:
        self.model.close()


# ------------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class BackendSpec:
    """A benchmarkable backend: which runtime backend and providers, and which model file it runs."""

    name: str
    description: str
    runtime_backend: str | None = None  # None: PyTorch eager
    providers: tuple[str, ...] = ()
    model_file: str = "onnx"  # "onnx" (--onnx files or the export), "onnx-full" (--onnx-full or its export), "engine"
    #                           (--plan files)
    requires: tuple[str, ...] = field(default=())  # python modules that must be importable


BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("eager", "PyTorch eager + detr's PostProcessPanoptic (its published code)"),
    BackendSpec("onnxruntime", "ONNX Runtime, CPU provider, the runtime's infer path (--onnx: query-sparse pair "
                "by default)", "onnxruntime", ("cpu",)),
    BackendSpec("onnxruntime-full", "ONNX Runtime, CPU provider, the runtime's infer path on detr's single graph "
                "(every query's mask)", "onnxruntime", ("cpu",), model_file="onnx-full"),
    BackendSpec("onnxruntime-cuda", "ONNX Runtime, CUDA provider", "onnxruntime", ("cuda",)),
    BackendSpec("onnxruntime-tensorrt", "ONNX Runtime, TensorRT provider", "onnxruntime", ("tensorrt",)),
    BackendSpec("tensorrt", "TensorRT engine (.plan), the runtime's TensorRT backend", "tensorrt",
                model_file="engine", requires=("tensorrt",)),
)}
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}


def unavailable_reason(spec: BackendSpec, engines: Sequence[Path]) -> str | None:
    """Why ``spec`` cannot run here (a note for the report), or None when it can; ``engines``: the --plan files."""
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if missing:
        return f"python module {', '.join(missing)} not installed (needs an NVIDIA GPU machine)"
    if spec.model_file == "engine" and not engines:
        return "no --plan given (build one with python -m export.tensorrt)"
    if spec.runtime_backend == "onnxruntime":
        import onnxruntime

        available = onnxruntime.get_available_providers()
        absent = [PROVIDER_NAMES[p] for p in spec.providers if PROVIDER_NAMES[p] not in available]
        if absent:
            return (f"{', '.join(absent)} not in this onnxruntime {onnxruntime.__version__} "
                    f"(available: {', '.join(available)})")
    return None


def run_names(backend: str, models: Sequence[tuple[Path, str]]) -> list[str]:
    """The report's name for each (model file, precision label) a backend runs, in order: the backend's own name when
    it runs one model (the usual report), else the backend and the model's precision, plus the file where two models
    share a precision, so every row of a several-model run says which variant it timed."""
    if len(models) == 1:
        return [backend]
    shared = Counter(label for _, label in models)
    return [f"{backend} {label}" if shared[label] == 1 else f"{backend} {label} ({repo_relative(str(path))})"
            for path, label in models]


def build_runtime_pipeline(spec: BackendSpec, model_path: Path, threads: int, settings: ResizeSettings
                           ) -> RuntimePipeline:
    """Load ``spec``'s model (the file its ``model_file`` names) with the same thread count the eager run uses."""
    if spec.runtime_backend == "onnxruntime":
        # No busy-waiting: between its calls the cores run the other backends (torch's thread pool included);
        # ORT's spinning threads would steal them and make every backend's timings noisy (see runtime backend).
        options: dict[str, Any] = {"providers": spec.providers, "intra_op_threads": threads,
                                   "allow_spinning": False}
        return RuntimePipeline(spec.name, model_path, "onnxruntime", options, settings)
    return RuntimePipeline(spec.name, model_path, "tensorrt", {}, settings)

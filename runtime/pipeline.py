"""The per-batch stages of ``panseg-rt infer``: preprocess -> engine -> post-process, each timed.

Batching: DETR's result for an image changes slightly when it is padded (its padded neighbours change the features
it sees; detr behaves the same), so batches are planned with ``plan_batches``: images of the same processed size fill
whole batches first, and only the leftovers of different sizes are padded together. Image sizes come from the file
headers (``runtime.inputs.probe_size``) before anything is decoded.

The engine stage is ``PanopticModel.run`` (runtime/model.py): the graph(s) and the query selection, for a
query-sparse pair detector -> selection -> mask graph on the kept queries only. Post-processing is
``segment_kept`` on what that stage kept; it never selects again.

Speed: preprocessing (decode, resize, normalize; PIL releases the GIL for decode and resize) of the next batch runs
in a one-batch-ahead prefetch thread (:func:`prefetched`) while the engine works on the current one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from runtime.errors import PansegError
from runtime.inputs import Failure, probe_size
from runtime.model import PanopticModel
from runtime.model_info import ModelInfo
from runtime.outputs import ImageJob
from runtime.postprocess import KeptQueries, PanopticResult, segment_kept
from runtime.preprocess import load_image, pad_batch, plan_batches, preprocess, target_size

STAGES = ("preprocess", "engine", "postprocess", "overlay", "write")
_UNSET: Any = object()

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class InferOptions:
    """Run settings; None means "as the model's metadata says". They live with the stages that use them."""

    threshold: float | None = None
    batch_size: int = 1
    overlay: bool = False
    overwrite: bool = False
    size: int | None = None
    max_size: int | None = _UNSET  # _UNSET: the model's; None: no limit
    apply_exif: bool = True
    progress: bool = True
    prefetch: bool = True
    nms_iou: float | None = None  # box NMS among things before the merge (off: detr's behaviour)

    def resolved(self, info: ModelInfo) -> tuple[float, int, int | None]:
        """(threshold, resize size, resize max_size) with the model's defaults filled in, checked."""
        threshold = info.threshold if self.threshold is None else float(self.threshold)
        if not 0.0 <= threshold < 1.0:
            raise PansegError(f"threshold must be in [0, 1), got {threshold}")
        size = info.resize.size if self.size is None else int(self.size)
        max_size = info.resize.max_size if self.max_size is _UNSET else self.max_size
        if size < 1 or (max_size is not None and max_size < size):
            raise PansegError(f"resize size {size} / max size {max_size}: need 1 <= size <= max size")
        if self.batch_size < 1:
            raise PansegError(f"batch size must be at least 1, got {self.batch_size}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise PansegError(f"NMS IoU threshold must be in (0, 1], got {self.nms_iou}")
        return threshold, size, max_size


@dataclass
class StageTimes:
    """Seconds spent per stage; ``waited`` is how long inference stood still waiting for preprocessing."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    waited: float = 0.0

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - started


@dataclass
class PreparedBatch:
    """One batch after preprocessing: the images that decoded, stacked for the engine, and the ones that failed."""

    jobs: list[ImageJob]
    images: np.ndarray | None  # B x 3 x H x W, fitted to the engine
    mask: np.ndarray | None
    processed: list[tuple[int, int]]
    original: list[tuple[int, int]]
    pictures: list[Image.Image | None]  # the decoded photos, kept only for overlays
    failures: list[Failure]


class Pipeline:
    """The per-batch stages of one run, with the settings resolved from the model and the options."""

    def __init__(self, model: PanopticModel, options: InferOptions) -> None:
        self.model = model
        self.info = model.info
        self.options = options
        self.shape = model.shape
        self.threshold, self.size, self.max_size = options.resolved(model.info)
        self.is_thing = model.info.is_thing
        self.times = StageTimes()

    def processed_size(self, original: tuple[int, int]) -> tuple[int, int]:
        h, w = original
        return target_size(w, h, self.size, self.max_size)

    def plan(self, jobs: Sequence[ImageJob]) -> tuple[list[list[ImageJob]], list[Failure]]:
        """Batches of the images whose header reads, grouped by processed size; failures for the others."""
        ok: list[ImageJob] = []
        sizes: list[tuple[int, int]] = []
        failures: list[Failure] = []
        for job in jobs:
            try:
                processed = self.processed_size(probe_size(job.path, self.options.apply_exif))
            except PansegError as exc:
                failures.append(Failure(str(job.path), str(exc)))
                continue
            problem = self.shape.too_large(processed)
            if problem:
                failures.append(Failure(str(job.path), f"{job.path}: {problem}"))
                continue
            ok.append(job)
            sizes.append(processed)
        batch_size = self.shape.batch or self.options.batch_size
        return [[ok[i] for i in batch] for batch in plan_batches(sizes, batch_size)], failures

    def prepare(self, jobs: list[ImageJob]) -> PreparedBatch:
        """Decode, resize and normalize a batch (runs in the prefetch thread); bad images become failures."""
        with self.times.measure("preprocess"):
            kept, arrays, processed, original, pictures, failures = [], [], [], [], [], []
            for job in jobs:
                try:
                    image = load_image(job.path, apply_exif=self.options.apply_exif)
                    array = preprocess(image, self.size, self.max_size, self.info.mean, self.info.std)
                except PansegError as exc:
                    failures.append(Failure(str(job.path), str(exc)))
                    continue
                problem = self.shape.too_large(array.shape[1:])
                if problem:
                    failures.append(Failure(str(job.path), f"{job.path}: {problem}"))
                    continue
                kept.append(job)
                arrays.append(array)
                processed.append((array.shape[1], array.shape[2]))
                original.append((image.height, image.width))
                pictures.append(image if self.options.overlay else None)
            images = mask = None
            if arrays:
                images, mask = self.shape.fit(*pad_batch(arrays))
            return PreparedBatch(kept, images, mask, processed, original, pictures, failures)

    def run_engine(self, batch: PreparedBatch) -> list[KeptQueries]:
        """The model on the batch: per image, the kept queries with their masks (model.run)."""
        with self.times.measure("engine"):
            return self.model.run(batch.images, batch.mask, self.threshold, self.options.nms_iou).kept

    def postprocess(self, kept: KeptQueries, processed: tuple[int, int], original: tuple[int, int]) -> PanopticResult:
        """One image's result from what the engine stage kept (no second selection)."""
        with self.times.measure("postprocess"):
            return segment_kept(kept, processed, original, self.is_thing, self.info.mask_stride)


def prefetched(items: Sequence[T], work: Callable[[T], R], enabled: bool, times: StageTimes) -> Iterator[R]:
    """``work(item)`` for each item in order; with ``enabled``, the next item's work runs in a background thread
    while the caller uses the current result. ``times.waited`` accumulates how long the caller waited."""
    if not enabled:
        for item in items:
            yield work(item)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="panseg-prefetch")
    try:
        pending = pool.submit(work, items[0]) if items else None
        for k in range(len(items)):
            current = pending
            pending = pool.submit(work, items[k + 1]) if k + 1 < len(items) else None
            started = time.perf_counter()
            result = current.result()
            times.waited += time.perf_counter() - started
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

"""Panoptic inference as a library: engine + metadata -> batches -> preprocess -> engine -> post-process -> files.

``infer`` is what ``panseg-rt infer`` runs; ``run_inference`` does the work on an already loaded backend.

Batching: DETR's result for an image changes slightly when it is padded (its padded neighbours change the features
it sees; detr behaves the same), so batches are planned with ``plan_batches``: images of the same processed size fill
whole batches first, and only the leftovers of different sizes are padded together. Image sizes come from the file
headers before anything is decoded.

Speed: preprocessing (decode, resize, normalize; PIL releases the GIL for decode and resize) of the next batch runs in
a one-batch-ahead prefetch thread while the engine works on the current one; post-processing upsamples only the kept
queries. Each stage's time is recorded and returned (and written to ``DIR/timings.json``).

Query-sparse models (the export's default for panoptic models; runtime/sparse.py): the detector's metadata names its
mask graph, which is loaded next to it with the same backend options; the "engine" stage then is detector ->
threshold -> mask graph on the batch's kept queries, and post-processing gets only the kept queries' masks.

Bad images (unreadable, truncated, empty, not an image, too large for a static-shape engine, ...) are reported and
skipped; the others are written. See runtime/outputs.py for the output folder and how reruns skip finished images.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from runtime.contract import IMAGE_EXTENSIONS
from runtime.errors import PansegError
from runtime.filehash import file_sha256
from runtime.jsonfile import read_json
from runtime.model import PanopticModel, load_model
from runtime.model_info import ModelInfo
from runtime.outputs import ImageJob, OutputDir, PredictionsFile, check_output_name
from runtime.postprocess import KeptQueries, PanopticResult, segment_kept
from runtime.preprocess import load_image, pad_batch, plan_batches, preprocess, target_size

STAGES = ("preprocess", "engine", "postprocess", "overlay", "write")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_GLOB_CHARS = frozenset("*?[")
_UNSET: Any = object()

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Failure:
    """An image that could not be processed: the file and a one-line reason."""

    path: str
    message: str

    def __str__(self) -> str:
        return self.message if self.message.startswith(self.path) else f"{self.path}: {self.message}"


@dataclass
class InferOptions:
    """Run settings; None means "as the model's metadata says"."""

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
class InferReport:
    total: int  # images asked for (after matching)
    done: int  # processed in this run
    skipped: int  # already finished in the output folder
    failures: list[Failure]
    times: StageTimes
    wall_seconds: float
    batches: int
    batch_size: int
    predictions: Path
    load_seconds: float = 0.0  # loading the engine and hashing it (set by ``infer``)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        per_image = {k: round(1000 * v / self.done, 3) if self.done else None for k, v in self.times.seconds.items()}
        return {
            "images": self.done, "skipped": self.skipped, "failed": len(self.failures), "batches": self.batches,
            "batch_size": self.batch_size, "wall_seconds": round(self.wall_seconds, 4),
            "load_seconds": round(self.load_seconds, 4),
            "images_per_second": round(self.done / self.wall_seconds, 3) if self.wall_seconds > 0 else None,
            "stage_seconds": {k: round(v, 4) for k, v in self.times.seconds.items()},
            "stage_ms_per_image": per_image,
            "preprocess_wait_seconds": round(self.times.waited, 4),
        }

    def summary_line(self) -> str:
        rate = f", {self.done / self.wall_seconds:.2f} img/s" if self.done and self.wall_seconds > 0 else ""
        head = (f"{self.done} images in {self.wall_seconds:.2f} s{rate} ({self.skipped} skipped as finished, "
                f"{len(self.failures)} failed; engine loaded in {self.load_seconds:.2f} s)")
        if not self.done:
            return head
        ms = {k: 1000 * v / self.done for k, v in self.times.seconds.items()}
        stages = [f"preprocess {ms['preprocess']:.1f} (waited {1000 * self.times.waited / self.done:.1f})",
                  f"engine {ms['engine']:.1f}", f"postprocess {ms['postprocess']:.1f}"]
        if self.times.seconds["overlay"]:
            stages.append(f"overlay {ms['overlay']:.1f}")
        stages.append(f"write {ms['write']:.1f}")
        return f"{head}; ms per image: {', '.join(stages)}"


# ------------------------------------------------------------------------------------------------------ inputs


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Input files in order, without duplicates.

    A file is taken whatever its extension (asking for it means it); a folder gives its image files (by extension,
    not recursive, hidden files left out, sorted); a glob pattern (``*``, ``?``, ``[``; ``**`` recurses) gives the
    image files it matches, sorted. A missing file or a pattern without matches is an error.
    """
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found.extend(_folder_images(path))
        elif path.exists():
            found.append(path)
        elif _GLOB_CHARS & set(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
            for folder in (m for m in matches if m.is_dir()):
                files.extend(_folder_images(folder))
            if not files:
                raise PansegError(f"{text}: no image file matches this pattern")
            found.extend(files)
        else:
            raise PansegError(f"{text}: no such file or folder")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    if not unique:
        raise PansegError(f"no image files in {', '.join(os.fspath(i) for i in inputs)} "
                          f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return list(unique.values())


def jobs_for_files(paths: Sequence[Path]) -> list[ImageJob]:
    """Without a dataset: image_id is the file stem, the PNG is ``<stem>.png``."""
    return [ImageJob(p, p.stem, f"{p.stem}.png") for p in paths]


def jobs_for_coco(paths: Sequence[Path], coco_json: str | os.PathLike) -> tuple[list[ImageJob], list[Failure]]:
    """Match input files to a COCO (panoptic) JSON's images by file name; ids and PNG names follow the dataset.

    The PNG name is the dataset's panoptic annotation ``file_name`` for that image if the JSON has one, else the
    COCO panoptic naming: the image's name up to its first dot + ``.png``. Inputs the dataset does not list are
    failures.
    """
    source = os.fspath(coco_json)
    data = read_json(coco_json)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise PansegError(f"{source}: expected a COCO JSON object with an 'images' list")
    by_name: dict[str, dict[str, Any]] = {}
    for image in images:
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise PansegError(f"{source}: an entry of 'images' lacks 'id' or 'file_name'")
        name = Path(image["file_name"]).name
        if name in by_name:
            raise PansegError(f"{source}: two images are named {name}; inputs are matched by file name")
        by_name[name] = image
    png_names = {ann["image_id"]: ann["file_name"] for ann in data.get("annotations", [])
                 if isinstance(ann, dict) and isinstance(ann.get("file_name"), str) and "image_id" in ann
                 and str(ann["file_name"]).endswith(".png")}
    jobs, failures = [], []
    for path in paths:
        image = by_name.get(path.name)
        if image is None:
            failures.append(Failure(str(path), f"{path}: not in {source} (inputs are matched by file name)"))
            continue
        png = png_names.get(image["id"], Path(image["file_name"]).name.split(".")[0] + ".png")
        jobs.append(ImageJob(path, image["id"], check_output_name(png, source)))
    return jobs, failures


def check_unique_outputs(jobs: Sequence[ImageJob]) -> None:
    """Two inputs that would write the same PNG (same stem in different folders, same dataset image) are an error."""
    seen: dict[str, Path] = {}
    for job in jobs:
        other = seen.setdefault(job.file_name, job.path)
        if other != job.path:
            raise PansegError(f"{other} and {job.path} would both be written as {job.file_name}; "
                              "rename one or run them into different output folders")


def probe_size(path: Path, apply_exif: bool = True) -> tuple[int, int]:
    """(height, width) of an image as load_image will return it, from the header alone (no pixel decoding)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = 1
            if apply_exif:
                try:
                    orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
                except Exception:  # noqa: BLE001 - a broken EXIF block: load_image keeps the stored orientation too
                    orientation = 1
    except Exception:  # noqa: BLE001 - Pillow raises many types; load_image names the problem in one line
        load_image(path, apply_exif=apply_exif)  # raises the PansegError that says what is wrong
        raise PansegError(f"{path}: unreadable image header") from None
    return (width, height) if orientation in _TRANSPOSED_ORIENTATIONS else (height, width)


# ------------------------------------------------------------------------------------------------------ engine


# ------------------------------------------------------------------------------------------------------ stages


@dataclass
class PreparedBatch:
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


# ------------------------------------------------------------------------------------------------------ running


def run_settings(model: PanopticModel, options: InferOptions) -> dict[str, Any]:
    """What an image's result depends on; a finished image made with other settings is made again."""
    threshold, size, max_size = options.resolved(model.info)
    settings = {"engine": model.path.name, "engine_sha256": file_sha256(model.path), "threshold": threshold,
                "resize": {"size": size, "max_size": max_size},
                "normalization": {"mean": model.info.mean, "std": model.info.std}, "exif": options.apply_exif}
    if options.nms_iou is not None:  # only when set, so outputs made before the option existed stay reusable
        settings["nms_iou"] = options.nms_iou
    if model.mask_path is not None:
        settings["mask_graph_sha256"] = file_sha256(model.mask_path)
    return settings


def run_inference(model: PanopticModel, jobs: Sequence[ImageJob], output: OutputDir, options: InferOptions,
                  failures: Sequence[Failure] = (), on_failure: Callable[[Failure], None] | None = None,
                  load_seconds: float = 0.0) -> InferReport:
    """Process ``jobs`` into ``output`` with a loaded ``model``; ``failures`` (e.g. unmatched inputs) are reported
    alongside. ``jobs`` must write distinct PNGs (:func:`check_unique_outputs`)."""
    started = time.perf_counter()
    pipeline = Pipeline(model, options)
    failed: list[Failure] = []

    def fail(failure: Failure) -> None:
        failed.append(failure)
        if on_failure is not None:
            on_failure(failure)

    for failure in failures:
        fail(failure)
    predictions = PredictionsFile(output.predictions_path, model.info.categories, [j.stem for j in jobs])
    todo: list[ImageJob] = []
    for job in jobs:
        annotation = None if options.overwrite else output.finished_annotation(job)
        if annotation is None:
            todo.append(job)
        else:
            predictions.add(job.stem, annotation)
    batches, unreadable = pipeline.plan(todo)
    for failure in unreadable:
        fail(failure)
    done = 0
    bar = tqdm(total=len(todo), desc="infer", unit="img", disable=not options.progress, dynamic_ncols=True)
    bar.update(len(unreadable))
    stream = prefetched(batches, pipeline.prepare, options.prefetch, pipeline.times)
    try:
        for batch in stream:
            for failure in batch.failures:
                fail(failure)
            if batch.jobs:
                kept = pipeline.run_engine(batch)
                for k, job in enumerate(batch.jobs):
                    try:
                        result = pipeline.postprocess(kept[k], batch.processed[k], batch.original[k])
                    except PansegError as exc:
                        fail(Failure(str(job.path), f"{job.path}: {exc}"))
                        continue
                    predictions.add(job.stem, write_outputs(output, job, result, batch.pictures[k], pipeline.times))
                    done += 1
            bar.update(len(batch.jobs) + len(batch.failures))
            predictions.maybe_flush()
    finally:
        stream.close()  # stops the prefetch thread now, also when a batch raised
        bar.close()
        predictions.flush()
        report = InferReport(total=len(jobs) + len(failures), done=done, skipped=len(jobs) - len(todo),
                             failures=failed, times=pipeline.times, wall_seconds=time.perf_counter() - started,
                             batches=len(batches), batch_size=model.shape.batch or options.batch_size,
                             predictions=output.predictions_path, load_seconds=load_seconds)
        output.write_timings(report.to_json())
        output.write_failures((f.path, str(f)) for f in failed)
    return report


def write_outputs(output: OutputDir, job: ImageJob, result: PanopticResult, picture: Image.Image | None,
                  times: StageTimes) -> dict[str, Any]:
    """PNG, overlay, then the record that marks the image finished; returns its COCO annotation."""
    try:
        if picture is not None:
            with times.measure("overlay"):
                output.write_overlay(job, picture, result)
        with times.measure("write"):
            output.write_png(job, result)
            return output.write_record(job, result)
    except OSError as exc:  # disk full, permissions: no point going on with the next image
        raise PansegError(f"{output.root}: cannot write the results of {job.path} ({exc.strerror or exc})") from exc


def infer(engine: str | os.PathLike, inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
          options: InferOptions | None = None, coco_json: str | os.PathLike | None = None,
          backend: str | None = None, backend_options: dict[str, Any] | None = None,
          on_failure: Callable[[Failure], None] | None = None) -> InferReport:
    """Run an exported panoptic model on image files, folders or globs; write ``output_dir`` (runtime/outputs.py)."""
    options = options or InferOptions()
    engine = Path(engine)
    paths = collect_inputs(inputs)
    if coco_json is not None:
        jobs, failures = jobs_for_coco(paths, coco_json)
    else:
        jobs, failures = jobs_for_files(paths), []
    check_unique_outputs(jobs)
    started = time.perf_counter()
    with load_model(engine, backend, backend_options) as model:
        output = OutputDir(output_dir, model.info.categories, run_settings(model, options), overlay=options.overlay)
        load_seconds = time.perf_counter() - started
        report = run_inference(model, jobs, output, options, failures, on_failure, load_seconds)
    return report

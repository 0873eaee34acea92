"""The output folder of ``panseg-rt infer``: what is written where, what counts as finished, and predictions.json.

Layout of ``DIR``::

    panoptic/<stem>.png    id map per image (COCO panoptic PNG: id = R + 256 G + 256^2 B, 0 = VOID)
    overlay/<stem>.jpg     picture per image, with --overlay
    records/<stem>.json    per image: its COCO annotation, the input file and the settings it was made with
    predictions.json       COCO panoptic results: {"annotations": [...], "categories": [...]}
    timings.json           per-stage seconds of the last run; failures.json: the images it could not process

Every file is written atomically. An image's record is written last, after its PNG (and overlay), so a record means
the image is complete: a rerun skips exactly the images whose record matches the current settings and whose files
exist, and an interrupted run never leaves a half-written file behind, only images that are not finished yet.

predictions.json is assembled from the finished images' annotations, each serialized once and kept in memory as
text, and rewritten atomically (so it is always valid JSON). Rewriting it after every batch would cost O(n) per batch
and O(n^2) per run, which dominates a fast engine on thousands of images; it is therefore rewritten only once the
work done since the last rewrite took at least ``FLUSH_RATIO`` times as long as that rewrite (so rewriting costs at
most about 1/FLUSH_RATIO of the run; small runs rewrite after every batch), and always when the run ends, also on
an error or Ctrl-C. After a hard kill (SIGKILL, power loss) it may lag behind records/, which is the ground truth;
the next run, even one with nothing left to do, assembles it again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from runtime.atomic import atomic_write_bytes, atomic_write_json, atomic_write_with, dumps_json
from runtime.categories import Category, categories_to_json
from runtime.errors import PansegError
from runtime.overlay import render_overlay
from runtime.panoptic_format import write_panoptic_png
from runtime.postprocess import PanopticResult

PANOPTIC_DIR = "panoptic"
OVERLAY_DIR = "overlay"
RECORDS_DIR = "records"
PREDICTIONS_FILE = "predictions.json"
TIMINGS_FILE = "timings.json"
FAILURES_FILE = "failures.json"
OVERLAY_QUALITY = 90
FLUSH_RATIO = 20.0


@dataclass(frozen=True)
class ImageJob:
    """One input image and the names of its outputs: ``file_name`` is the PNG's name inside panoptic/."""

    path: Path
    image_id: int | str
    file_name: str

    @property
    def stem(self) -> str:
        return self.file_name[: -len(".png")] if self.file_name.endswith(".png") else self.file_name


def check_output_name(file_name: str, source: str) -> str:
    """Refuse names that would write outside the output folder (absolute, '..') or are not .png."""
    parts = PurePosixPath(file_name).parts
    if not parts or PurePosixPath(file_name).is_absolute() or ".." in parts or "\\" in file_name:
        raise PansegError(f"{source}: output name {file_name!r} must be a relative path inside the output folder")
    if not file_name.endswith(".png"):
        raise PansegError(f"{source}: panoptic file name {file_name!r} must end in .png")
    return file_name


class OutputDir:
    """Paths, finished-image bookkeeping and per-image writing for one output folder."""

    def __init__(self, root: str | os.PathLike, categories: Mapping[int, Category], settings: Mapping[str, Any],
                 overlay: bool = False) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise PansegError(f"{self.root}: exists and is not a directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PansegError(f"{self.root}: cannot create the output folder ({exc.strerror or exc})") from exc
        self.categories = dict(categories)
        self.settings = json.loads(dumps_json(settings))  # as a record stores it (tuples become lists)
        self.overlay = overlay

    def png_path(self, job: ImageJob) -> Path:
        return self.root / PANOPTIC_DIR / job.file_name

    def overlay_path(self, job: ImageJob) -> Path:
        return self.root / OVERLAY_DIR / f"{job.stem}.jpg"

    def record_path(self, job: ImageJob) -> Path:
        return self.root / RECORDS_DIR / f"{job.stem}.json"

    @property
    def predictions_path(self) -> Path:
        return self.root / PREDICTIONS_FILE

    def finished_annotation(self, job: ImageJob) -> dict[str, Any] | None:
        """The annotation of a finished image, or None: no record, other settings or ids, or a file is missing."""
        try:
            record = json.loads(self.record_path(job).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        annotation = record.get("annotation") if isinstance(record, dict) else None
        if (not isinstance(annotation, dict) or record.get("settings") != self.settings
                or annotation.get("image_id") != job.image_id or annotation.get("file_name") != job.file_name
                or not isinstance(annotation.get("segments_info"), list)):
            return None
        if not self.png_path(job).is_file() or (self.overlay and not self.overlay_path(job).is_file()):
            return None
        return annotation

    def write_png(self, job: ImageJob, result: PanopticResult) -> None:
        write_panoptic_png(self.png_path(job), result.id_map)

    def write_overlay(self, job: ImageJob, image: Image.Image, result: PanopticResult) -> None:
        picture = render_overlay(image, result.id_map, result.segments_info, self.categories)
        atomic_write_with(self.overlay_path(job),
                          lambda f: picture.save(f, format="JPEG", quality=OVERLAY_QUALITY))

    def write_record(self, job: ImageJob, result: PanopticResult) -> dict[str, Any]:
        """Mark the image finished (call after its other files are written); returns its COCO annotation."""
        annotation = {"image_id": job.image_id, "file_name": job.file_name, "segments_info": result.segments_info}
        atomic_write_json(self.record_path(job), {"annotation": annotation, "input": str(job.path),
                                                  "settings": self.settings})
        return annotation

    def write_timings(self, timings: Mapping[str, Any]) -> None:
        atomic_write_json(self.root / TIMINGS_FILE, timings, indent=1)

    def write_failures(self, failures: Iterable[tuple[str, str]]) -> None:
        atomic_write_json(self.root / FAILURES_FILE, [{"input": p, "error": e} for p, e in failures], indent=1)


class PredictionsFile:
    """predictions.json kept in step with the finished images, in the order of ``order`` (see the module docstring)."""

    def __init__(self, path: Path, categories: Mapping[int, Category], order: Iterable[str],
                 flush_ratio: float = FLUSH_RATIO) -> None:
        self.path = path
        self.order = list(order)
        self.flush_ratio = flush_ratio
        self._categories_text = dumps_json(categories_to_json(categories))
        self._annotations: dict[str, str] = {}
        self._dirty = True
        self._last_cost = 0.0
        self._last_end = time.perf_counter()
        self.rewrites = 0

    def add(self, stem: str, annotation: Mapping[str, Any]) -> None:
        self._annotations[stem] = dumps_json(annotation)
        self._dirty = True

    def __len__(self) -> int:
        return len(self._annotations)

    def maybe_flush(self) -> None:
        if self._dirty and time.perf_counter() - self._last_end >= self.flush_ratio * self._last_cost:
            self.flush()

    def flush(self) -> None:
        started = time.perf_counter()
        body = ",\n".join(self._annotations[s] for s in self.order if s in self._annotations)
        text = f'{{"annotations": [\n{body}\n], "categories": {self._categories_text}}}\n'
        atomic_write_bytes(self.path, text.encode("utf-8"))
        self._dirty = False
        self.rewrites += 1
        self._last_end = time.perf_counter()
        self._last_cost = self._last_end - started

"""Panoptic inference as a library: the run loop of ``panseg-rt infer`` and its report.

``infer`` is what ``panseg-rt infer`` runs: find the inputs (runtime/inputs.py), ``load_model`` the export
(runtime/model.py: one graph, or the query-sparse detector and its mask graph), then batch by batch the stages of
runtime/pipeline.py: preprocess (in a prefetch thread) -> ``model.run`` (the graph(s) and the query selection) ->
``segment_kept`` (the panoptic merge of the kept queries, no second selection) -> files. ``run_inference`` does the
loop on an already loaded model. Each stage's time is recorded and returned (and written to ``DIR/timings.json``).

Bad images (unreadable, truncated, empty, not an image, too large for a static-shape engine, ...) are reported and
skipped; the others are written. See runtime/outputs.py for the output folder and how reruns skip finished images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from runtime.errors import PansegError
from runtime.filehash import file_sha256
from runtime.inputs import Failure, check_unique_outputs, collect_inputs, jobs_for_coco, jobs_for_files
from runtime.model import PanopticModel, load_model
from runtime.outputs import FAILURES_FILE, TIMINGS_FILE, ImageJob, OutputDir, PredictionsFile
from runtime.pipeline import InferOptions, Pipeline, StageTimes, prefetched
from runtime.postprocess import PanopticResult

__all__ = ["InferReport", "infer", "run_inference", "run_settings", "write_outputs"]


@dataclass
class InferReport:
    """What one run did: counts, failures, per-stage times, and the files it wrote."""

    total: int  # images asked for (after matching)
    done: int  # processed in this run
    skipped: int  # already finished in the output folder
    failures: list[Failure]
    times: StageTimes
    wall_seconds: float
    batches: int
    batch_size: int
    predictions: Path
    failures_file: Path
    load_seconds: float = 0.0  # loading the engine and hashing it (set by ``infer``)
    precision: str = ""  # the model's precision as its metadata says (set by ``infer``), e.g. "fp32"

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


    def written_line(self) -> str:
        """What the run wrote: the predictions (finished images, this run's and earlier ones) and, when images
        failed, the failures file next to it (``predictions.json`` is written even when every image failed)."""
        line = f"wrote {self.predictions} ({self.done + self.skipped} images)"
        if self.failures:
            line += f" and {self.failures_file} ({len(self.failures)} failed)"
        return f"{line}; timings in {TIMINGS_FILE}"


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
    alongside. ``jobs`` must write distinct PNGs (``runtime.inputs.check_unique_outputs``)."""
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
                             predictions=output.predictions_path, failures_file=output.root / FAILURES_FILE,
                             load_seconds=load_seconds)
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
        report.precision = model.info.precision.describe()
    return report

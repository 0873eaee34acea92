"""Checkpoint -> self-describing, verified ONNX model: :func:`export_checkpoint`, behind ``python -m export.onnx``.

A panoptic model is exported query-sparse by default: ``NAME.onnx`` (the detector, whose metadata names its mask
graph) and ``NAME.masks.onnx`` (the mask head, run by the runtime only on the queries above the threshold); see
export/onnx/sparse.py for why two graphs. ``full=True`` (``--full``) exports detr's single graph with every query's
mask instead. Files are written atomically (the mask graph first, so a detector never names a missing file) and only
under the requested names when verification passes (or is skipped); a model that fails verification is kept as
``NAME.failed.onnx`` (+ ``NAME.failed.masks.onnx``) for inspection.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from export.onnx.defaults import DEFAULT_MAX_IMAGES, DEFAULT_OPSET, DEFAULT_SIZES
from export.onnx.graph import ShapePolicy, export_full_model
from export.onnx.loading import LoadedCheckpoint, load_for_export
from export.onnx.metadata import add_query_sparse, build_metadata, mask_graph_metadata, write_metadata
from export.onnx.sparse import export_sparse_model
from export.onnx.verify import ImageSources, Report, Tolerances, list_images
from export.onnx.verify import verify as verify_model  # the function, named apart from its package
from runtime.atomic import atomic_write_bytes
from runtime.contract import DETECTOR_OUTPUTS, MASK_GRAPH_INPUTS, MASK_GRAPH_OUTPUTS, MODEL_INPUTS, mask_graph_name
from runtime.errors import PansegError
from runtime.postprocess import DEFAULT_THRESHOLD


@dataclass
class ExportResult:
    path: Path  # where the model was written (the .failed.onnx name when verification failed)
    loaded: LoadedCheckpoint
    report: Report | None  # None when verification was skipped
    export_seconds: float
    verify_seconds: float
    mask_path: Path | None = None  # the query-sparse model's mask graph (None for a single graph)

    @property
    def passed(self) -> bool:
        return self.report is None or self.report.passed


def default_output_path(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint's stem + .onnx, in the current directory."""
    return Path(Path(checkpoint).stem + ".onnx")


def failed_path(output: Path) -> Path:
    return output.with_name(output.stem + ".failed.onnx")


def mask_graph_path(output: Path) -> Path:
    """The query-sparse mask graph next to its detector: ``NAME.onnx`` -> ``NAME.masks.onnx``."""
    return output.with_name(mask_graph_name(output))


def verification_is_thing(loaded: LoadedCheckpoint) -> dict[int, bool]:
    """isthing for every class the model can predict; classes missing from the table count as things, so a model
    that predicts them still gets compared (both engines see the same table)."""
    return {c: (loaded.categories[c].isthing if c in loaded.categories else True)
            for c in range(loaded.config.num_classes)}


def _verify_staged(files: dict[str, bytes], loaded: LoadedCheckpoint, policy: ShapePolicy, images: list[Path],
                   sizes: tuple[int, ...], tolerances: Tolerances | None, threshold: float, progress: bool) -> Report:
    """Verify the serialized graph(s) as the runtime will load them: written under their final file names (the
    detector's metadata names its mask graph) into a temporary folder, since the output names are written only
    after the verdict. ``files``: name -> bytes, the model (or detector) first."""
    with tempfile.TemporaryDirectory(prefix="panseg-verify-") as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        return verify_model(Path(folder) / next(iter(files)), loaded.model, loaded.panoptic, policy,
                      verification_is_thing(loaded), images, sizes, tolerances, threshold, progress)


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None, *,
                      categories_file: str | os.PathLike | None = None, policy: ShapePolicy | None = None,
                      opset: int = DEFAULT_OPSET, simplify: bool = True, run_verification: bool = True,
                      verify_images: ImageSources | None = None, verify_sizes: tuple[int, ...] = DEFAULT_SIZES,
                      verify_max_images: int = DEFAULT_MAX_IMAGES, tolerances: Tolerances | None = None,
                      threshold: float = DEFAULT_THRESHOLD, progress: bool = True, full: bool = False
                      ) -> ExportResult:
    """Export ``checkpoint`` to ``output`` (default: :func:`default_output_path`) with metadata, verified on
    ``verify_images`` (folders and image files; required unless ``run_verification`` is False).

    A panoptic model becomes the query-sparse pair (``output`` + :func:`mask_graph_path`) unless ``full``."""
    policy = policy or ShapePolicy()
    output = Path(output) if output is not None else default_output_path(checkpoint)
    if output.suffix.lower() != ".onnx":
        raise PansegError(f"{output}: the output name must end in .onnx")
    if output.exists() and output.is_dir():
        raise PansegError(f"{output}: is a directory")
    if not 0.0 < threshold < 1.0:
        raise PansegError(f"threshold must be in (0, 1), got {threshold}")
    images: list[Path] = []
    if run_verification:  # bad image paths fail here, before the export's minutes
        if verify_images is None:
            raise PansegError("verification needs images: pass verify_images (folders or image files; "
                              "python -m export.onnx --verify-images PATH ...), or run_verification=False")
        images = list_images(verify_images, verify_max_images)
    loaded = load_for_export(checkpoint, categories_file)
    if output.resolve() == loaded.path.resolve():
        raise PansegError(f"{output}: would overwrite the checkpoint")

    if loaded.panoptic and not full:
        return _export_sparse(loaded, output, policy, opset, simplify, run_verification, images, verify_sizes,
                              tolerances, threshold, progress)
    started = time.perf_counter()
    model, shapes = export_full_model(loaded.model, loaded.panoptic, policy, opset, simplify)
    output_names = [o.name for o in model.graph.output]
    write_metadata(model, build_metadata(
        config=loaded.config, categories=loaded.categories, categories_source=loaded.categories_source,
        shapes=shapes, input_names=list(MODEL_INPUTS), output_names=output_names,
        checkpoint_name=loaded.path.name, checkpoint_sha256=loaded.sha256, opset=opset, simplified=simplify,
        threshold=threshold, resize_size=loaded.resize[0], resize_max_size=loaded.resize[1]))
    data = model.SerializeToString()
    export_seconds = time.perf_counter() - started

    report = None
    started = time.perf_counter()
    if run_verification:
        report = _verify_staged({output.name: data}, loaded, policy, images, verify_sizes, tolerances, threshold,
                                progress)
    verify_seconds = time.perf_counter() - started
    target = output if report is None or report.passed else failed_path(output)
    atomic_write_bytes(target, data)
    return ExportResult(target, loaded, report, export_seconds, verify_seconds)


def _export_sparse(loaded: LoadedCheckpoint, output: Path, policy: ShapePolicy, opset: int, simplify: bool,
                   run_verification: bool, images: list[Path], verify_sizes: tuple[int, ...],
                   tolerances: Tolerances | None, threshold: float, progress: bool) -> ExportResult:
    started = time.perf_counter()
    detector, masks, detector_shapes, mask_shapes = export_sparse_model(loaded.model, policy, opset, simplify)
    metadata = build_metadata(
        config=loaded.config, categories=loaded.categories, categories_source=loaded.categories_source,
        shapes=detector_shapes, input_names=list(MODEL_INPUTS), output_names=list(DETECTOR_OUTPUTS),
        checkpoint_name=loaded.path.name, checkpoint_sha256=loaded.sha256, opset=opset, simplified=simplify,
        threshold=threshold, resize_size=loaded.resize[0], resize_max_size=loaded.resize[1])

    def serialize(detector_path: Path, mask_path: Path) -> tuple[bytes, bytes]:
        """Both graphs with metadata naming each other under these file names."""
        write_metadata(masks, mask_graph_metadata(detector_path.name, opset))
        mask_data = masks.SerializeToString()
        add_query_sparse(metadata, mask_path.name, hashlib.sha256(mask_data).hexdigest(), mask_shapes,
                         list(MASK_GRAPH_INPUTS), list(MASK_GRAPH_OUTPUTS))
        write_metadata(detector, metadata)
        return detector.SerializeToString(), mask_data

    detector_data, mask_data = serialize(output, mask_graph_path(output))
    export_seconds = time.perf_counter() - started

    report = None
    started = time.perf_counter()
    if run_verification:
        report = _verify_staged({output.name: detector_data, mask_graph_path(output).name: mask_data}, loaded, policy,
                                images, verify_sizes, tolerances, threshold, progress)
    verify_seconds = time.perf_counter() - started
    target = output
    if report is not None and not report.passed:
        target = failed_path(output)
        detector_data, mask_data = serialize(target, mask_graph_path(target))
    atomic_write_bytes(mask_graph_path(target), mask_data)
    atomic_write_bytes(target, detector_data)
    return ExportResult(target, loaded, report, export_seconds, verify_seconds, mask_graph_path(target))

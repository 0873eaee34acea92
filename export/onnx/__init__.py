"""Checkpoint -> self-describing, verified ONNX model (``python -m export.onnx CKPT``).

Pieces: loading.py (checkpoint -> model, config, categories), graph.py (wrappers and the export itself),
metadata.py (what the runtime reads from the .onnx), verify.py (checker, TensorRT operators, ONNX Runtime vs eager).
The file is written atomically and only when verification passes (or is skipped); a model that fails verification
is kept as ``<name>.failed.onnx`` for inspection, never under the requested name.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from export.onnx.graph import DEFAULT_OPSET, INPUT_NAMES, ShapePolicy, export_full_model
from export.onnx.loading import LoadedCheckpoint, load_for_export
from export.onnx.metadata import build_metadata, read_metadata, write_metadata
from export.onnx.verify import DEFAULT_MAX_IMAGES, DEFAULT_SIZES, Report, Tolerances, verify
from runtime.atomic import atomic_write_bytes
from runtime.errors import PansegError
from runtime.postprocess import DEFAULT_THRESHOLD

__all__ = ["ExportResult", "ShapePolicy", "Tolerances", "default_output_path", "export_checkpoint", "read_metadata"]


@dataclass
class ExportResult:
    path: Path  # where the model was written (the .failed.onnx name when verification failed)
    loaded: LoadedCheckpoint
    report: Report | None  # None when verification was skipped
    export_seconds: float
    verify_seconds: float

    @property
    def passed(self) -> bool:
        return self.report is None or self.report.passed


def default_output_path(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint's stem + .onnx, in the current directory."""
    return Path(Path(checkpoint).stem + ".onnx")


def failed_path(output: Path) -> Path:
    return output.with_name(output.stem + ".failed.onnx")


def verification_is_thing(loaded: LoadedCheckpoint) -> dict[int, bool]:
    """isthing for every class the model can predict; classes missing from the table count as things, so a model
    that predicts them still gets compared (both engines see the same table)."""
    return {c: (loaded.categories[c].isthing if c in loaded.categories else True)
            for c in range(loaded.config.num_classes)}


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None, *,
                      categories_file: str | os.PathLike | None = None, policy: ShapePolicy | None = None,
                      opset: int = DEFAULT_OPSET, simplify: bool = True, run_verification: bool = True,
                      verify_images: str | os.PathLike | None = None, verify_sizes: tuple[int, ...] = DEFAULT_SIZES,
                      verify_max_images: int = DEFAULT_MAX_IMAGES, tolerances: Tolerances | None = None,
                      threshold: float = DEFAULT_THRESHOLD, progress: bool = True) -> ExportResult:
    """Export ``checkpoint`` to ``output`` (default: :func:`default_output_path`) with metadata, verified."""
    policy = policy or ShapePolicy()
    output = Path(output) if output is not None else default_output_path(checkpoint)
    if output.suffix.lower() != ".onnx":
        raise PansegError(f"{output}: the output name must end in .onnx")
    if output.exists() and output.is_dir():
        raise PansegError(f"{output}: is a directory")
    if not 0.0 < threshold < 1.0:
        raise PansegError(f"threshold must be in (0, 1), got {threshold}")
    loaded = load_for_export(checkpoint, categories_file)
    if output.resolve() == loaded.path.resolve():
        raise PansegError(f"{output}: would overwrite the checkpoint")

    started = time.perf_counter()
    model, shapes = export_full_model(loaded.model, loaded.panoptic, policy, opset, simplify)
    output_names = [o.name for o in model.graph.output]
    write_metadata(model, build_metadata(
        config=loaded.config, categories=loaded.categories, categories_source=loaded.categories_source,
        shapes=shapes, input_names=list(INPUT_NAMES), output_names=output_names,
        checkpoint_name=loaded.path.name, checkpoint_sha256=loaded.sha256, opset=opset, simplified=simplify,
        threshold=threshold, resize_size=loaded.resize[0], resize_max_size=loaded.resize[1]))
    data = model.SerializeToString()
    export_seconds = time.perf_counter() - started

    report = None
    started = time.perf_counter()
    if run_verification:
        report = verify(model, data, loaded.model, loaded.panoptic, policy, verification_is_thing(loaded),
                        verify_images, verify_sizes, verify_max_images, tolerances, threshold, progress)
    verify_seconds = time.perf_counter() - started
    target = output if report is None or report.passed else failed_path(output)
    atomic_write_bytes(target, data)
    return ExportResult(target, loaded, report, export_seconds, verify_seconds)

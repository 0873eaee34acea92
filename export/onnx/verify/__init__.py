"""Verification of an exported model: structure, TensorRT operators, and the deployed path against PyTorch eager.

One function, :func:`verify`, for both layouts (detr's single graph and the query-sparse pair). It verifies the
files as written, loaded and run the way ``panseg-rt infer`` runs them; the images come from the caller.

Pieces, one job each: images.py (the caller's images, preprocessed by the runtime into padded batches at the
verification sizes), structure.py (checker, float64, TensorRT operators, symbolic dimensions), runners.py (the
deployed model and eager PyTorch on the same batch), compare.py (per-output errors, kept queries, panoptic
agreement; the tolerances), report.py (Report/Run, JSON, the printed table).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import onnx
import torch
from tqdm import tqdm

from export.onnx.defaults import DEFAULT_MAX_IMAGES, DEFAULT_SIZES
from export.onnx.graph import ShapePolicy
from export.onnx.verify.compare import Tolerances, compare_batch, compare_panoptic, output_error
from export.onnx.verify.images import ImageSources, list_images, plan_verification
from export.onnx.verify.report import OutputError, Report, Run, format_table, verdict_line
from export.onnx.verify.runners import DeployedRunner, EagerRunner
from export.onnx.verify.structure import graph_checks
from runtime.postprocess import DEFAULT_THRESHOLD

__all__ = ["DEFAULT_MAX_IMAGES", "DEFAULT_SIZES", "ImageSources", "OutputError", "Report", "Run", "Tolerances",
           "compare_panoptic", "format_table", "list_images", "output_error", "verdict_line", "verify"]


def verify(model_path: str | os.PathLike, torch_model: torch.nn.Module, panoptic: bool, policy: ShapePolicy,
           is_thing: Mapping[int, bool], images: Sequence[Path], sizes: Sequence[int] = DEFAULT_SIZES,
           tolerances: Tolerances | None = None, threshold: float = DEFAULT_THRESHOLD,
           progress: bool = True) -> Report:
    """Verify the exported model at ``model_path`` (a single graph, or a query-sparse detector with its mask graph
    next to it) against ``torch_model`` on ``images`` (image files, see :func:`list_images`); the report's verdict is
    PASSED only if every check and every run passes."""
    tol = tolerances or Tolerances()
    report = Report(tolerances=asdict(tol))
    eager = EagerRunner(torch_model, panoptic, is_thing, threshold)
    with DeployedRunner(model_path, panoptic, is_thing, threshold) as deployed:
        graphs = [onnx.load(str(path)) for path in deployed.files]
        report.checks = graph_checks(graphs[0], graphs[1] if len(graphs) > 1 else None, policy)
        del graphs
        batches = plan_verification(images, policy, sizes)
        for batch in tqdm(batches, desc="verify", unit="batch", disable=not progress, leave=False):
            report.runs.append(compare_batch(batch, eager.run(batch), deployed.run(batch), tol, threshold))
    report.conclude()
    return report

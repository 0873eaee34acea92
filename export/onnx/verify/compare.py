"""Comparing the deployed engine with eager on one batch: per-output errors, kept queries, panoptic results.

Per output: max absolute error and error relative to the output's scale (max|ref|); an output passes when
``max_abs <= atol + rtol * max|ref|``. Per image: the queries kept (each engine deciding on its own logits) must be the
same; the panoptic results are compared by the fraction of pixels in corresponding segments and whether the segments
are the same (one-to-one, same categories). The two layouts differ only in which masks are compared: a single graph
gives every query's masks, compared in full; a query-sparse pair gives the kept queries' only, compared with eager's
rows for them (when the kept sets agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from export.onnx.defaults import (
    DEFAULT_BOXES_ATOL,
    DEFAULT_LOGITS_ATOL,
    DEFAULT_MASKS_ATOL,
    DEFAULT_MIN_PIXEL_AGREEMENT,
    DEFAULT_RTOL,
)
from export.onnx.verify.images import Batch
from export.onnx.verify.report import OUTPUT_LABELS, OutputError, Run
from export.onnx.verify.runners import DeployedRun, EagerRun
from runtime.contract import PRED_BOXES, PRED_LOGITS, PRED_MASKS
from runtime.postprocess import PanopticResult, select_queries


@dataclass(frozen=True)
class Tolerances:
    """An output passes when max_abs <= atol + rtol * max|reference|; segmentations by pixel agreement."""

    logits_atol: float = DEFAULT_LOGITS_ATOL
    boxes_atol: float = DEFAULT_BOXES_ATOL
    masks_atol: float = DEFAULT_MASKS_ATOL
    rtol: float = DEFAULT_RTOL
    min_pixel_agreement: float = DEFAULT_MIN_PIXEL_AGREEMENT  # near-tied masks (untrained models) may flip pixels
    same_segments: bool = True  # require the same segments (one-to-one, same categories) in every image

    def atol(self, output: str) -> float:
        return getattr(self, f"{OUTPUT_LABELS[output]}_atol")


def output_error(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> OutputError:
    if got.shape != ref.shape:
        return OutputError(float("inf"), float("inf"), 0.0, False)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(max_abs) or np.isnan(diff).any():
        max_abs = float("inf")
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return OutputError(max_abs, max_rel, scale, max_abs <= atol + rtol * scale)


def compare_panoptic(a: PanopticResult, b: PanopticResult) -> tuple[float, bool]:
    """(fraction of pixels in corresponding segments, same segments one-to-one with the same categories).

    Each segment of ``a`` corresponds to the segment (or VOID) of ``b`` it overlaps most; ids themselves may differ.
    """
    if a.id_map.shape != b.id_map.shape:
        return 0.0, False
    ids_a, inv_a = np.unique(a.id_map, return_inverse=True)
    ids_b, inv_b = np.unique(b.id_map, return_inverse=True)
    overlap = np.zeros((ids_a.size, ids_b.size), np.int64)
    np.add.at(overlap, (inv_a.ravel(), inv_b.ravel()), 1)
    partner = ids_b[overlap.argmax(1)]
    agreement = float((partner[inv_a.ravel()] == b.id_map.ravel()).mean()) if a.id_map.size else 1.0
    cat_a = {s["id"]: s["category_id"] for s in a.segments_info}
    cat_b = {s["id"]: s["category_id"] for s in b.segments_info}
    mapping = dict(zip(ids_a.tolist(), partner.tolist(), strict=True))
    same = (len(cat_a) == len(cat_b) and all(i in mapping for i in cat_a)
            and len({mapping[i] for i in cat_a}) == len(cat_a)
            and all(cat_b.get(mapping[i]) == c for i, c in cat_a.items()))
    return agreement, bool(same)


def _mask_error(eager_masks: np.ndarray, eager_keep: Sequence[np.ndarray], deployed: DeployedRun,
                same_kept: Sequence[bool], tol: Tolerances) -> OutputError:
    """Every query's masks when the deployed graph gives them all, else the kept rows (if the kept sets agree)."""
    if deployed.all_masks is not None:
        return output_error(deployed.all_masks, eager_masks, tol.masks_atol, tol.rtol)
    if not all(same_kept):
        return OutputError(float("inf"), float("inf"), 0.0, False)
    got = np.concatenate([k.masks for k in deployed.kept])
    ref = np.concatenate([m[k] for m, k in zip(eager_masks, eager_keep, strict=True)])
    error = output_error(got, ref, tol.masks_atol, tol.rtol)
    # rtol relative to the scale of all eager masks, as for a single graph (the kept rows may be fewer)
    error.passed = error.max_abs <= tol.masks_atol + tol.rtol * float(np.abs(eager_masks).max(initial=0.0))
    return error


def compare_batch(batch: Batch, eager: EagerRun, deployed: DeployedRun, tol: Tolerances, threshold: float) -> Run:
    """One batch's Run: errors, kept queries and panoptic agreement, and whether all are within tolerance."""
    errors = {PRED_LOGITS: output_error(deployed.pred_logits, eager.outputs[PRED_LOGITS], tol.logits_atol, tol.rtol),
              PRED_BOXES: output_error(deployed.pred_boxes, eager.outputs[PRED_BOXES], tol.boxes_atol, tol.rtol)}
    run = Run(batch.case, list(batch.images.shape), batch.names, errors, eager_ms=eager.ms,
              onnxruntime_ms=deployed.ms)
    if PRED_MASKS in eager.outputs:
        eager_keep = [select_queries(image_logits, threshold)[0] for image_logits in eager.outputs[PRED_LOGITS]]
        run.kept = [int(k.size) for k in eager_keep]
        run.same_kept = [bool(np.array_equal(a, b.indices)) for a, b in zip(eager_keep, deployed.kept, strict=True)]
        errors[PRED_MASKS] = _mask_error(eager.outputs[PRED_MASKS], eager_keep, deployed, run.same_kept, tol)
        for reference, ours in zip(eager.results, deployed.results, strict=True):
            agreement, same = compare_panoptic(reference, ours)
            run.pixel_agreement.append(agreement)
            run.same_segments.append(same)
            run.segments.append(len(reference.segments_info))
    run.passed = (all(e.passed for e in errors.values()) and all(run.same_kept)
                  and all(p >= tol.min_pixel_agreement for p in run.pixel_agreement)
                  and (not tol.same_segments or all(run.same_segments)))
    return run

"""A precision variant against the fp32 model it came from, image by image, as ``panseg-rt infer`` runs both.

Per image: the worst absolute errors of the logits and boxes (and of the masks of the queries both kept), the
category-map pixel agreement (same category, or both VOID), the segment agreement and same-segment flag of the
export's verification (``compare_panoptic``), and PQ statistics of the variant's result with the fp32 result as the
ground truth (``runtime.pq.pq_image_stats`` on the id maps). The fp32 results are computed once and reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.onnx.verify.compare import compare_panoptic
from runtime.model import load_model
from runtime.postprocess import PanopticResult, segment_kept
from runtime.pq import PQStat, pq_image_stats
from runtime.preprocess import load_and_preprocess, pad_batch

VOID_CATEGORY = -1


@dataclass
class ImageRun:
    logits: np.ndarray
    boxes: np.ndarray
    kept: np.ndarray
    masks: np.ndarray
    result: PanopticResult


def run_images(model_path: Path, images: Sequence[Path], threads: int | None = None) -> list[ImageRun]:
    """The model on each image alone, at its own resize policy and threshold, as the runtime runs it."""
    # no optimized-model cache: the sweep makes a new variant per measurement, never run again
    options: dict[str, object] = {"providers": ("cpu",), "optimized_cache": False}
    if threads:
        options["intra_op_threads"] = threads
    runs = []
    with load_model(model_path, "onnxruntime", options) as model:
        info = model.info
        for path in images:
            array, original = load_and_preprocess(path, info.resize.size, info.resize.max_size)
            batch, mask = pad_batch([array])
            out = model.run(batch, mask, info.threshold)
            kept = out.kept[0]
            result = segment_kept(kept, tuple(array.shape[1:]), original, info.is_thing, info.mask_stride)
            runs.append(ImageRun(out.pred_logits[0], out.pred_boxes[0], kept.indices, kept.masks, result))
    return runs


def category_map(result: PanopticResult) -> np.ndarray:
    lookup = {s["id"]: s["category_id"] for s in result.segments_info}
    ids, inverse = np.unique(result.id_map, return_inverse=True)
    cats = np.array([lookup.get(int(i), VOID_CATEGORY) for i in ids], np.int64)
    return cats[inverse].reshape(result.id_map.shape)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))


@dataclass
class Agreement:
    """The variant against fp32 over the images (worst and mean values; PQ in points, fp32 itself scoring 100)."""

    images: int = 0
    max_logits_error: float = 0.0
    max_boxes_error: float = 0.0
    max_masks_error: float = 0.0  # over images whose kept queries are the same
    same_kept_rate: float = 0.0
    category_agreement: float = 1.0  # mean over images
    worst_category_agreement: float = 1.0
    segment_agreement: float = 1.0
    same_segment_rate: float = 1.0
    pq: float = 100.0
    per_image: list[dict[str, float]] = field(default_factory=list)

    @property
    def pq_drop(self) -> float:
        return 100.0 - self.pq

    def to_json(self) -> dict[str, object]:
        return {**{k: v for k, v in vars(self).items()}, "pq_drop": self.pq_drop}


def compare_runs(reference: Sequence[ImageRun], variant: Sequence[ImageRun], categories: dict) -> Agreement:
    """Agreement of ``variant`` with ``reference`` (same images, same order)."""
    agreement = Agreement(images=len(reference))
    stat = PQStat()
    cat_agree, seg_agree, same_segments, same_kept = [], [], [], []
    for k, (ref, var) in enumerate(zip(reference, variant, strict=True)):
        agreement.max_logits_error = max(agreement.max_logits_error, _max_abs(var.logits, ref.logits))
        agreement.max_boxes_error = max(agreement.max_boxes_error, _max_abs(var.boxes, ref.boxes))
        kept_same = bool(np.array_equal(ref.kept, var.kept))
        same_kept.append(kept_same)
        if kept_same:
            agreement.max_masks_error = max(agreement.max_masks_error, _max_abs(var.masks, ref.masks))
        cats = float((category_map(ref.result) == category_map(var.result)).mean())
        segments, same = compare_panoptic(ref.result, var.result)
        cat_agree.append(cats)
        seg_agree.append(segments)
        same_segments.append(same)
        stat += pq_image_stats(ref.result.id_map, ref.result.segments_info, var.result.id_map,
                               var.result.segments_info, categories, f"image {k}")
        agreement.per_image.append({"category_agreement": cats, "segment_agreement": segments,
                                    "same_segments": float(same), "same_kept": float(kept_same)})
    if reference:
        agreement.category_agreement = float(np.mean(cat_agree))
        agreement.worst_category_agreement = float(np.min(cat_agree))
        agreement.segment_agreement = float(np.mean(seg_agree))
        agreement.same_segment_rate = float(np.mean(same_segments))
        agreement.same_kept_rate = float(np.mean(same_kept))
        # no fp32 segment anywhere: nothing to match, and the variant agrees only if it predicts nothing either
        has_any = any(r.result.segments_info for r in reference) or any(v.result.segments_info for v in variant)
        agreement.pq = 100.0 * stat.average(categories)["pq"] if has_any else 100.0
    return agreement

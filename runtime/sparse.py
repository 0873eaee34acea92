"""Query-sparse panoptic inference: detector graph -> threshold -> mask graph on the kept queries only.

The export (export/onnx/sparse.py) writes two graphs: ``model.onnx`` (the detector, run once per batch) and a mask
graph named in the detector's metadata (key ``query_sparse``). Which queries are kept is decided here, on the
detector's logits, with the very ``select_queries`` the post-processing uses, so the panoptic result is the one the
full model (all queries' masks) gives: the mask of a query depends on no other query.

Batches: the kept (image, query) pairs of all images are flattened into one mask-graph call, with ``image_index``
telling the graph whose per-image tensors to use, so images with different kept counts need no padding and no
per-image calls; when no image keeps anything the mask graph is not run at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import PansegError
from runtime.postprocess import MASK_STRIDE, PanopticResult, panoptic_segmentation, select_queries, valid_mask_region

METADATA_KEY = "query_sparse"
IMAGE_INPUTS = ("images", "padding_mask")
DETECTOR_OUTPUTS = ("pred_logits", "pred_boxes", "hs", "attn_keys", "memory_mask", "lay1_image", "fpn_s16", "fpn_s8",
                    "fpn_s4")
PER_IMAGE_INPUTS = ("attn_keys", "memory_mask", "lay1_image", "fpn_s16", "fpn_s8", "fpn_s4")
MASK_INPUTS = ("hs_kept", "image_index", *PER_IMAGE_INPUTS)
MASK_OUTPUT = "masks_kept"

RunGraph = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]  # (feeds, output names) -> outputs


@dataclass
class SparseOutputs:
    """One batch through both graphs; per image: kept query indices, their scores, labels and mask logits."""

    pred_logits: np.ndarray  # B x Q x (C+1)
    pred_boxes: np.ndarray  # B x Q x 4
    keep: list[np.ndarray]
    scores: list[np.ndarray]
    labels: list[np.ndarray]
    masks: list[np.ndarray]  # K_i x hm x wm, at stride 4 of the padded batch

    @property
    def kept_counts(self) -> list[int]:
        return [int(k.size) for k in self.keep]


def mask_graph_file(metadata: Mapping[str, Any], source: str = "model") -> str | None:
    """The mask graph's file name from the detector's (decoded) metadata; None for a single-graph model."""
    entry = metadata.get(METADATA_KEY)
    if entry is None:
        return None
    name = entry.get("mask_graph") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise PansegError(f"{source}: metadata {METADATA_KEY!r} must name the mask graph file (a plain file name "
                          f"next to the model), got {entry!r}")
    return name


def mask_graph_path(engine_path: str | os.PathLike, name: str) -> Path:
    """The detector ``engine_path``'s mask graph ``name`` (from :func:`mask_graph_file`): next to it, and present."""
    engine_path = Path(engine_path)
    path = engine_path.with_name(name)
    if not path.is_file():
        raise PansegError(f"{engine_path}: its mask graph {path} is missing (the export writes both files; keep "
                          "them together)")
    return path


def kept_pairs(keep: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image kept query indices -> flat (image_index, query_index), image by image in query order."""
    image_index = np.concatenate([np.full(k.size, i, np.int64) for i, k in enumerate(keep)] or [np.zeros(0, np.int64)])
    query_index = np.concatenate([np.asarray(k, np.int64) for k in keep] or [np.zeros(0, np.int64)])
    return image_index, query_index


def run_query_sparse(run_detector: RunGraph, run_masks: RunGraph, feeds: Mapping[str, np.ndarray],
                     threshold: float, is_thing: Mapping[int, bool] | None = None,
                     nms_iou: float | None = None) -> SparseOutputs:
    """Detector on the batch, select_queries per image (optionally with box NMS among things, which then also saves
    the dropped duplicates' masks), one mask-graph call on every kept query (none if none)."""
    det = run_detector(dict(feeds), list(DETECTOR_OUTPUTS))
    logits = det["pred_logits"]
    selected = [select_queries(image_logits, threshold, boxes, is_thing, nms_iou)
                for image_logits, boxes in zip(logits, det["pred_boxes"], strict=True)]
    keep = [s[0] for s in selected]
    image_index, query_index = kept_pairs(keep)
    mask_hw = det["fpn_s4"].shape[-2:]
    if image_index.size:
        mask_feeds = {"hs_kept": np.ascontiguousarray(det["hs"][image_index, query_index]),
                      "image_index": image_index}
        mask_feeds.update({name: det[name] for name in PER_IMAGE_INPUTS})
        flat = run_masks(mask_feeds, [MASK_OUTPUT])[MASK_OUTPUT]
        if flat.shape != (image_index.size, *mask_hw):
            raise PansegError(f"mask graph returned {tuple(flat.shape)} for {image_index.size} kept queries, expected "
                              f"{(image_index.size, *mask_hw)}")
        bounds = np.cumsum([0] + [k.size for k in keep])
        masks = [flat[bounds[i]:bounds[i + 1]] for i in range(len(keep))]
    else:
        masks = [np.zeros((0, *mask_hw), np.float32) for _ in keep]
    return SparseOutputs(logits, det["pred_boxes"], keep, [s[1] for s in selected], [s[2] for s in selected], masks)


def postprocess_kept(logits: np.ndarray, kept_masks: np.ndarray, processed_size: tuple[int, int],
                     target_size: tuple[int, int], is_thing: Mapping[int, bool], threshold: float,
                     mask_stride: int = MASK_STRIDE, merge_stuff: bool = False, boxes: np.ndarray | None = None,
                     nms_iou: float | None = None) -> PanopticResult:
    """One image's panoptic result from its logits (Q x C+1) and the kept queries' masks, as postprocess_panoptic.

    The kept set is recomputed from the logits (and, with ``nms_iou``, the Q x 4 ``boxes``) with the same function
    and settings, so it must match the masks.
    """
    _, scores, labels = select_queries(logits, threshold, boxes, is_thing, nms_iou)
    if labels.size != kept_masks.shape[0]:
        raise PansegError(f"{kept_masks.shape[0]} kept masks for {labels.size} queries above threshold {threshold}: "
                          "masks and logits do not belong together")
    rows, cols = valid_mask_region(processed_size, kept_masks.shape[-2:], mask_stride)
    return panoptic_segmentation(kept_masks[:, :rows, :cols], scores, labels, processed_size, target_size, is_thing,
                                 merge_stuff=merge_stuff)


def postprocess_sparse(out: SparseOutputs, processed_sizes: Sequence[tuple[int, int]],
                       target_sizes: Sequence[tuple[int, int]] | None, is_thing: Mapping[int, bool],
                       mask_stride: int = MASK_STRIDE, merge_stuff: bool = False) -> list[PanopticResult]:
    """Batch version of :func:`postprocess_kept` on what :func:`run_query_sparse` kept (no second selection)."""
    targets = processed_sizes if target_sizes is None else target_sizes
    results = []
    for masks, scores, labels, size, target in zip(out.masks, out.scores, out.labels, processed_sizes, targets,
                                                   strict=True):
        rows, cols = valid_mask_region(size, masks.shape[-2:], mask_stride)
        results.append(panoptic_segmentation(masks[:, :rows, :cols], scores, labels, size, target, is_thing,
                                             merge_stuff=merge_stuff))
    return results

"""detr's panoptic post-processing (``PostProcessPanoptic``) and box post-processing (``PostProcess``) in numpy.

The segmentation is detr's, step for step, for any single image:

1. class softmax; keep the queries whose best class (argmax over all logits) is not "no object" (the last logit) and
   whose probability exceeds ``threshold`` (0.85);
2. bilinear upsampling (``align_corners=False``) of the kept mask logits to the processed (unpadded) image size;
3. every pixel goes to the kept query with the highest mask logit (ties to the lowest query index);
4. the id map is resized to the original size with PIL's NEAREST (detr resizes an RGB-encoded PNG with PIL) and the
   areas are counted there;
5. first pass only: the pixels of all kept queries of one stuff category go to the first of them (detr's ``dedup``),
   so the others get area 0; then, while any query has area <= 4, those queries are dropped and step 3 is redone
   over the remaining ones without de-duplication. If nothing is left the result is all VOID with no segments.

Fixes, each without effect on a single unpadded image's segmentation (``detr_compat=True`` turns both off):

- segment ids start at 1: detr numbers segments from 0, and id 0 encodes as black, which the COCO panoptic format
  reserves for VOID. Output id = detr's index + 1.
- padded batches: the mask logits are cropped to the image's own region before upsampling. The mask head works at
  stride 4 of the padded batch (ResNet: ``ceil(H / 4)`` rows), so an image of processed height ``h`` owns the first
  ``ceil(h / 4)`` rows and ``ceil(w / 4)`` columns. detr upsamples the whole padded mask to ``(h, w)``: for every
  image smaller than its batch, the image's own predictions shrink towards the top-left corner and whatever the
  model predicted on the padding fills the rest. For an unpadded image the crop keeps the whole mask: no change.

Speed without changing the result: only the kept queries are upsampled; the argmax is computed only at the processed
pixels that the NEAREST resize actually samples (the others never reach the output), in cache-sized bands with the
queries as the last axis, on a few threads (runtime/upsample.py); areas are counted at that resolution with the
number of original pixels each sample becomes; after a query is dropped only the pixels it owned are recomputed.
The argmax is taken over the logits instead of detr's softmax of them (softmax is monotonic; the
two differ only where two logits are within float rounding of each other and detr's softmax rounds them to a tie;
the PyTorch port benchmarks/torch_postprocess.py with ``detr_compat=True`` reproduces even that).

Option ``merge_stuff=True``: stuff queries of one category are merged in every pass (their pixels are united into
one segment, scored with the best of them) instead of detr's behaviour of dropping all but the first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from runtime.categories import Category
from runtime.errors import PansegError
from runtime.upsample import SampledBilinear

DEFAULT_THRESHOLD = 0.85
MASK_STRIDE = 4  # the mask head's output stride (ResNet layer1 = ceil(H / 4))
MAX_SMALL_AREA = 4  # detr drops segments whose area (in original pixels) is at most this


@dataclass
class PanopticResult:
    """One image's panoptic prediction: ``id_map`` (H x W uint32, original size, 0 = VOID) and COCO segments_info."""

    id_map: np.ndarray
    segments_info: list[dict[str, Any]] = field(default_factory=list)


def is_thing_map(categories: Mapping[int, Category] | Sequence[Category]) -> dict[int, bool]:
    """category_id -> isthing, the table detr calls ``is_thing_map``."""
    values = categories.values() if isinstance(categories, Mapping) else categories
    return {c.id: bool(c.isthing) for c in values}


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def select_queries(
    logits: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    boxes: np.ndarray | None = None,
    is_thing: Mapping[int, bool] | None = None,
    nms_iou: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's Q x (C+1) class logits -> (kept query indices, their scores, their labels), as detr keeps them.

    ``nms_iou`` (off by default, as in detr) then drops duplicate things: see :func:`suppress_duplicate_things`;
    it needs the image's Q x 4 ``boxes`` (detr's cx, cy, w, h) and ``is_thing``.
    """
    logits = np.asarray(logits)
    probs = softmax(logits, axis=-1)
    labels = probs.argmax(-1)
    scores = probs.max(-1)
    keep = np.flatnonzero((labels != logits.shape[-1] - 1) & (scores > threshold))
    if nms_iou is not None:
        if boxes is None or is_thing is None:
            raise ValueError("box NMS needs the boxes and the is_thing table")
        keep = keep[suppress_duplicate_things(scores[keep], labels[keep], np.asarray(boxes)[keep], is_thing, nms_iou)]
    return keep, scores[keep], labels[keep]


def pairwise_iou(boxes_xyxy: np.ndarray) -> np.ndarray:
    """N x N IoU of boxes given as (x0, y0, x1, y1); 0 where both are empty."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    top_left = np.maximum(b[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    union = area[:, None] + area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def suppress_duplicate_things(scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray,
                              is_thing: Mapping[int, bool], iou_threshold: float) -> np.ndarray:
    """Greedy box NMS among the things of each category: which of these queries survive (a bool per query).

    Why: a briefly trained DETR often predicts one object twice, and detr's merge then splits it between two
    segments (two poor matches instead of one good one). In descending score order (ties: lower index first) a thing
    query is dropped when its box overlaps a surviving query of the same category with IoU above ``iou_threshold``.
    Stuff queries always survive: detr's de-duplication already merges stuff of one category. IoU is computed on
    detr's relative boxes, which equals IoU in pixels (scaling x and y scales every area alike).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    survive = np.ones(scores.size, dtype=bool)
    if scores.size < 2:
        return survive
    iou = pairwise_iou(box_cxcywh_to_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)))
    thing = np.array([bool(is_thing.get(int(c), False)) for c in labels.tolist()])
    order = np.argsort(-scores, kind="stable")
    for position, i in enumerate(order.tolist()):
        if not (survive[i] and thing[i]):
            continue
        later = order[position + 1:]
        survive[later[(labels[later] == labels[i]) & thing[later] & (iou[i, later] > iou_threshold)]] = False
    return survive


def valid_mask_region(processed_size: tuple[int, int], mask_shape: tuple[int, int], stride: int = MASK_STRIDE
                      ) -> tuple[int, int]:
    """Rows and columns of the (padded) mask grid that belong to an image of ``processed_size``: ceil(size / stride)."""
    h, w = (int(v) for v in processed_size)
    rows, cols = math.ceil(h / stride), math.ceil(w / stride)
    if rows > mask_shape[0] or cols > mask_shape[1]:
        raise PansegError(
            f"masks of {mask_shape[0]}x{mask_shape[1]} are too small for an image of {h}x{w} at stride {stride} "
            f"(need {rows}x{cols}): processed sizes and masks do not belong together"
        )
    return rows, cols


@lru_cache(maxsize=256)
def nearest_taps(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output index of PIL's NEAREST resize n_in -> n_out.

    Taken from PIL itself (resizing a row of indices), so it follows PIL's own arithmetic in any version; PIL's
    NEAREST resize is separable, so a 2-D resize is ``image[taps_y][:, taps_x]``.
    """
    row = Image.fromarray(np.arange(n_in, dtype=np.int32)[None, :])
    return np.asarray(row.resize((n_out, 1), Image.NEAREST), dtype=np.int64)[0]


def sample_grid(n_processed: int, n_target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The processed indices that the nearest resize samples, how many output pixels each becomes, and the inverse."""
    taps = nearest_taps(n_processed, n_target)
    used, inverse, counts = np.unique(taps, return_inverse=True, return_counts=True)
    return used, counts, inverse


def first_of_category(labels: np.ndarray, alive: np.ndarray, is_stuff: np.ndarray) -> np.ndarray:
    """For every query, the first alive query of its category if it is stuff; itself otherwise."""
    rep = np.arange(labels.size)
    first: dict[int, int] = {}
    for q in np.flatnonzero(alive & is_stuff).tolist():
        rep[q] = first.setdefault(int(labels[q]), q)
    return rep


def panoptic_segmentation(
    masks: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    processed_size: tuple[int, int],
    target_size: tuple[int, int],
    is_thing: Mapping[int, bool],
    merge_stuff: bool = False,
    first_id: int = 1,
    threads: int | None = None,
) -> PanopticResult:
    """Panoptic segmentation of one image from its kept queries.

    ``masks``: K x h x w mask logits of the kept queries, already restricted to the image (see valid_mask_region);
    ``scores``/``labels``: their class probabilities and category ids; sizes are (height, width). ``threads``: for
    the argmax over queries (None: the CPUs available, at most 4); the result does not depend on it.
    """
    masks = np.asarray(masks, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    target_h, target_w = (int(v) for v in target_size)
    if min(target_h, target_w, *(int(v) for v in processed_size)) < 1:
        raise ValueError(f"image sizes must be positive, got processed {processed_size} and target {target_size}")
    n = labels.size
    if masks.ndim != 3 or masks.shape[0] != n or scores.size != n:
        raise ValueError(f"expected K x h x w masks for K={n} queries, got masks {masks.shape}, scores {scores.shape}")
    empty = PanopticResult(np.zeros((target_h, target_w), dtype=np.uint32), [])
    if n == 0:
        return empty
    unknown = sorted({int(c) for c in labels.tolist()} - set(is_thing))
    if unknown:
        raise PansegError(f"predicted class ids {unknown} are not in the category table ({len(is_thing)} categories)")
    is_stuff = np.array([not is_thing[int(c)] for c in labels.tolist()], dtype=bool)

    rows, row_counts, row_inverse = sample_grid(int(processed_size[0]), target_h)
    cols, col_counts, col_inverse = sample_grid(int(processed_size[1]), target_w)
    weight = np.outer(row_counts, col_counts).astype(np.float64).ravel()  # original pixels per sampled pixel
    up = SampledBilinear(masks, processed_size, rows, cols)
    owner = up.argmax(threads)

    alive = np.ones(n, dtype=bool)
    first_pass = True
    while True:
        rep = first_of_category(labels, alive, is_stuff) if (first_pass or merge_stuff) else np.arange(n)
        segment = rep[owner]
        area = np.rint(np.bincount(segment.ravel(), weights=weight, minlength=n)).astype(np.int64)
        # detr's first pass judges every query by its own (de-duplicated) area, so stuff duplicates (area 0) go;
        # when merging, a query goes only if its whole merged segment is small.
        small = alive & ((area <= MAX_SMALL_AREA) if not merge_stuff else (area[rep] <= MAX_SMALL_AREA))
        first_pass = False
        if not small.any():
            break
        alive &= ~small
        if not alive.any():
            return empty
        lost = ~alive[owner]
        candidates = np.flatnonzero(alive)
        if candidates.size == 1:  # the argmax over one query needs no values
            owner[lost] = candidates[0]
        else:
            r, c = np.nonzero(lost)
            owner[r, c] = candidates[up.argmax_at(r, c, candidates, threads=threads)]

    segment_queries = np.flatnonzero(alive & (rep == np.arange(n)))
    seg_ids = np.zeros(n, dtype=np.uint32)
    seg_ids[segment_queries] = np.arange(first_id, first_id + segment_queries.size, dtype=np.uint32)
    sampled_ids = seg_ids[segment]
    id_map = sampled_ids[row_inverse][:, col_inverse]
    boxes = segment_boxes(segment, segment_queries, row_counts, col_counts)
    segments_info = []
    for k, q in enumerate(segment_queries.tolist()):
        members = np.flatnonzero(alive & (rep == q))
        segments_info.append(
            {
                "id": int(seg_ids[q]),
                "category_id": int(labels[q]),
                "isthing": bool(is_thing[int(labels[q])]),
                "area": int(area[q]),
                "bbox": boxes[k],
                "score": float(scores[members].max()),
            }
        )
    return PanopticResult(id_map, segments_info)


def segment_boxes(segment: np.ndarray, queries: np.ndarray, row_counts: np.ndarray, col_counts: np.ndarray
                  ) -> list[list[int]]:
    """COCO [x, y, w, h] of each query's pixels in the original image, from the sampled grid.

    Each sampled row (column) stands for a contiguous run of original rows (NEAREST is monotonic), so a segment's
    extent is the runs of its first and last sampled row and column.
    """
    row_start = np.concatenate([[0], np.cumsum(row_counts)])
    col_start = np.concatenate([[0], np.cumsum(col_counts)])
    n_rows, n_cols = segment.shape
    slot = np.zeros(int(segment.max()) + 1, dtype=np.intp)  # 0: not one of ``queries``
    slot[queries] = np.arange(1, queries.size + 1)
    s = slot[segment]
    # Which rows and columns each query occurs in: one scatter of every sampled pixel each (slot 0 is dropped).
    in_row = np.zeros((queries.size + 1, n_rows), dtype=bool)
    in_row[s, np.arange(n_rows)[:, None]] = True
    in_col = np.zeros((queries.size + 1, n_cols), dtype=bool)
    in_col[s, np.arange(n_cols)] = True
    in_row, in_col = in_row[1:], in_col[1:]
    r0 = in_row.argmax(axis=1)
    r1 = n_rows - 1 - in_row[:, ::-1].argmax(axis=1)
    c0 = in_col.argmax(axis=1)
    c1 = n_cols - 1 - in_col[:, ::-1].argmax(axis=1)
    y0, y1 = row_start[r0], row_start[r1 + 1]
    x0, x1 = col_start[c0], col_start[c1 + 1]
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.int64).tolist()


def postprocess_panoptic(
    pred_logits: np.ndarray,
    pred_masks: np.ndarray,
    processed_sizes: Sequence[tuple[int, int]],
    target_sizes: Sequence[tuple[int, int]] | None,
    is_thing: Mapping[int, bool],
    threshold: float = DEFAULT_THRESHOLD,
    merge_stuff: bool = False,
    detr_compat: bool = False,
    mask_stride: int = MASK_STRIDE,
    threads: int | None = None,
    pred_boxes: np.ndarray | None = None,
    nms_iou: float | None = None,
) -> list[PanopticResult]:
    """A batch of model outputs -> one PanopticResult per image (detr's PostProcessPanoptic, with the fixes).

    ``pred_logits``: B x Q x (C+1); ``pred_masks``: B x Q x hm x wm (mask logits at stride 4 of the padded batch);
    ``processed_sizes``: each image's (height, width) as fed to the model, before padding; ``target_sizes``: the
    (height, width) wanted for the output, usually the original image size (None: the processed sizes).
    ``detr_compat=True`` gives detr's ids (from 0) and its padding behaviour (masks upsampled with their padding).
    ``nms_iou``: box NMS among things before the merge (see select_queries; needs ``pred_boxes``, B x Q x 4).
    """
    pred_logits = np.asarray(pred_logits)
    pred_masks = np.asarray(pred_masks)
    if target_sizes is None:
        target_sizes = processed_sizes
    if not (len(pred_logits) == len(pred_masks) == len(processed_sizes) == len(target_sizes)):
        raise ValueError(
            f"batch sizes differ: {len(pred_logits)} logits, {len(pred_masks)} masks, {len(processed_sizes)} "
            f"processed sizes, {len(target_sizes)} target sizes"
        )
    boxes_per_image = [None] * len(pred_logits) if pred_boxes is None else list(np.asarray(pred_boxes))
    results = []
    for logits, masks, size, target, boxes in zip(pred_logits, pred_masks, processed_sizes, target_sizes,
                                                  boxes_per_image, strict=True):
        kept = KeptQueries.select(logits, masks, threshold, boxes, is_thing, nms_iou)
        if detr_compat:
            results.append(panoptic_segmentation(kept.masks, kept.scores, kept.labels, size, target, is_thing,
                                                 merge_stuff=merge_stuff, first_id=0, threads=threads))
        else:
            results.append(segment_kept(kept, size, target, is_thing, mask_stride, merge_stuff, threads))
    return results


@dataclass
class KeptQueries:
    """One image's queries that passed selection: what the engine stage hands to the post-processing.

    A query-sparse model computes masks only for these (runtime/sparse.py), a single graph computes all and keeps
    these rows; either way the post-processing takes this as it is and never selects again.
    """

    indices: np.ndarray  # K query indices, ascending
    scores: np.ndarray  # K class probabilities
    labels: np.ndarray  # K category ids
    masks: np.ndarray  # K x hm x wm mask logits at stride 4 of the padded batch

    @classmethod
    def select(cls, logits: np.ndarray, masks: np.ndarray, threshold: float, boxes: np.ndarray | None = None,
               is_thing: Mapping[int, bool] | None = None, nms_iou: float | None = None) -> KeptQueries:
        """From one image's Q x (C+1) logits and all Q masks (a single graph's outputs)."""
        keep, scores, labels = select_queries(logits, threshold, boxes, is_thing, nms_iou)
        return cls(keep, scores, labels, np.asarray(masks)[keep])


@dataclass
class ModelOutputs:
    """One batch through the model (either layout): the raw class logits and boxes, and per image what was kept."""

    pred_logits: np.ndarray  # B x Q x (C+1)
    pred_boxes: np.ndarray  # B x Q x 4
    kept: list[KeptQueries]

    @property
    def kept_counts(self) -> list[int]:
        return [int(k.indices.size) for k in self.kept]


def segment_kept(kept: KeptQueries, processed_size: tuple[int, int], target_size: tuple[int, int] | None,
                 is_thing: Mapping[int, bool], mask_stride: int = MASK_STRIDE, merge_stuff: bool = False,
                 threads: int | None = None) -> PanopticResult:
    """One image's panoptic result from its kept queries (masks cropped to the image's region of the batch)."""
    rows, cols = valid_mask_region(processed_size, kept.masks.shape[-2:], mask_stride)
    target = processed_size if target_size is None else target_size
    return panoptic_segmentation(kept.masks[:, :rows, :cols], kept.scores, kept.labels, processed_size, target,
                                 is_thing, merge_stuff=merge_stuff, threads=threads)


def box_cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = np.moveaxis(np.asarray(boxes), -1, 0)
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def postprocess_boxes(pred_logits: np.ndarray, pred_boxes: np.ndarray, target_sizes: Sequence[tuple[int, int]]
                      ) -> list[dict[str, np.ndarray]]:
    """detr's PostProcess: per image, every query's best real class, its probability, and its box as absolute
    [x0, y0, x1, y1] in the target (original) image; boxes are relative to the unpadded image, so padding is moot.
    """
    probs = softmax(pred_logits, axis=-1)[..., :-1]
    scores = probs.max(-1)
    labels = probs.argmax(-1)
    boxes = box_cxcywh_to_xyxy(np.asarray(pred_boxes, dtype=np.float32))
    results = []
    for s, lab, b, (h, w) in zip(scores, labels, boxes, target_sizes, strict=True):
        scale = np.array([w, h, w, h], dtype=np.float32)
        results.append({"scores": s.astype(np.float32), "labels": lab, "boxes": b * scale})
    return results

"""panseg's vectorized PyTorch port of detr's post-processing: ``PostProcessPanoptic`` and ``PostProcess`` (boxes).

Why it exists: the latency benchmark times it as a second, stronger PyTorch baseline next to detr's published code
(benchmarks/detr_reference.py), on eager's own outputs. Training evaluates with the runtime's numpy
post-processing (runtime/postprocess.py), not with this.

Same semantics as detr's models/segmentation.py PostProcessPanoptic (see runtime/postprocess.py for the steps and
the two fixes: segment ids from 1, masks cropped to the image's region of a padded batch). ``detr_compat=True``
reproduces detr exactly, including its pixel assignment by argmax of the softmax over queries; by default the
argmax is taken over the logits (softmax is monotonic; only detr's rounding ties differ). Areas are counted at the
processed pixels the final NEAREST resize samples, weighted by how many output pixels each becomes; the small
bookkeeping steps (sample grid, stuff de-duplication, boxes) are the runtime's own functions on a few numbers.
Results are :class:`runtime.postprocess.PanopticResult` (numpy id map + segments_info), the runtime's type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.errors import PansegError
from runtime.postprocess import (
    DEFAULT_THRESHOLD,
    MASK_STRIDE,
    MAX_SMALL_AREA,
    PanopticResult,
    first_of_category,
    sample_grid,
    segment_boxes,
    suppress_duplicate_things,
    valid_mask_region,
)
from train.util.box_ops import box_cxcywh_to_xyxy

SizeLike = Sequence[int] | Tensor


def _size(size: SizeLike) -> tuple[int, int]:
    values = size.tolist() if isinstance(size, Tensor) else list(size)
    return int(values[0]), int(values[1])


def _argmax_first(values: Tensor, queries: list[int]) -> Tensor:
    """Position in ``queries`` of the largest ``values[q]`` per pixel, the first one on ties (as torch.argmax).

    A running maximum over the few kept queries: much faster on CPU than argmax over a leading dimension.
    """
    best = values[queries[0]].clone()
    index = torch.zeros(best.shape, dtype=torch.int64, device=values.device)
    for k, q in enumerate(queries[1:], start=1):
        better = values[q] > best
        best = torch.where(better, values[q], best)
        index.masked_fill_(better, k)
    return index


class PostProcessPanoptic(nn.Module):
    """Model outputs -> one PanopticResult per image (id map at the target size, 0 = VOID, and segments_info)."""

    def __init__(
        self,
        is_thing_map: Mapping[int, bool],
        threshold: float = DEFAULT_THRESHOLD,
        detr_compat: bool = False,
        merge_stuff: bool = False,
        mask_stride: int = MASK_STRIDE,
        nms_iou: float | None = None,
    ):
        super().__init__()
        self.is_thing_map = dict(is_thing_map)
        self.threshold = threshold
        self.nms_iou = nms_iou  # box NMS among things (runtime.postprocess.suppress_duplicate_things); None: detr's
        self.detr_compat = detr_compat
        self.merge_stuff = merge_stuff
        self.mask_stride = mask_stride

    @torch.no_grad()
    def forward(
        self,
        outputs: Mapping[str, Tensor],
        processed_sizes: Sequence[SizeLike],
        target_sizes: Sequence[SizeLike] | None = None,
    ) -> list[PanopticResult]:
        """``outputs``: pred_logits [B,Q,C+1] and pred_masks [B,Q,hm,wm]; sizes are (height, width) per image:
        processed = fed to the model before padding, target = wanted output (default: processed)."""
        if target_sizes is None:
            target_sizes = processed_sizes
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        if self.nms_iou is not None and "pred_boxes" not in outputs:
            raise ValueError("box NMS needs pred_boxes in the outputs")
        boxes = outputs["pred_boxes"] if self.nms_iou is not None else [None] * len(logits)
        if not (len(logits) == len(masks) == len(processed_sizes) == len(target_sizes)):
            raise ValueError("pred_logits, pred_masks, processed_sizes and target_sizes must have one entry per image")
        no_object = logits.shape[-1] - 1
        results = []
        for cur_logits, cur_masks, cur_boxes, size, target in zip(logits, masks, boxes, processed_sizes, target_sizes,
                                                                  strict=True):
            scores, labels = cur_logits.softmax(-1).max(-1)
            keep = labels.ne(no_object) & (scores > self.threshold)
            if self.nms_iou is not None:
                keep = self._suppress_duplicates(keep, scores, labels, cur_boxes)
            kept = cur_masks[keep]
            size = _size(size)
            if not self.detr_compat:
                rows, cols = valid_mask_region(size, tuple(cur_masks.shape[-2:]), self.mask_stride)
                kept = kept[:, :rows, :cols]
            results.append(self.segment(kept, scores[keep], labels[keep], size, _size(target)))
        return results

    def _suppress_duplicates(self, keep: Tensor, scores: Tensor, labels: Tensor, boxes: Tensor) -> Tensor:
        """``keep`` without the duplicate things box NMS drops: the runtime's function on these (at most Q) numbers,
        so PyTorch evaluation and the runtime drop the same queries."""
        index = torch.nonzero(keep).flatten()
        survive = suppress_duplicate_things(scores[index].double().cpu().numpy(), labels[index].cpu().numpy(),
                                            boxes[index].double().cpu().numpy(), self.is_thing_map, self.nms_iou)
        out = torch.zeros_like(keep)
        out[index[torch.from_numpy(survive).to(index.device)]] = True
        return out

    def segment(
        self, masks: Tensor, scores: Tensor, labels: Tensor, processed_size: tuple[int, int],
        target_size: tuple[int, int]
    ) -> PanopticResult:
        """One image from its kept queries' mask logits (K x h x w, already restricted to the image)."""
        target_h, target_w = target_size
        n = labels.numel()
        device = masks.device
        empty = PanopticResult(np.zeros((target_h, target_w), dtype=np.uint32), [])
        if n == 0:
            return empty
        label_list = labels.tolist()
        unknown = sorted(set(label_list) - set(self.is_thing_map))
        if unknown:
            raise PansegError(
                f"predicted class ids {unknown} are not in the category table ({len(self.is_thing_map)} categories)"
            )
        is_stuff = np.array([not self.is_thing_map[c] for c in label_list], dtype=bool)
        label_array = labels.cpu().numpy()

        upsampled = F.interpolate(masks[None].float(), size=processed_size, mode="bilinear", align_corners=False)[0]
        row_grid, col_grid = sample_grid(processed_size[0], target_h), sample_grid(processed_size[1], target_w)
        rows, row_counts, row_inverse = (torch.from_numpy(a).to(device) for a in row_grid)
        cols, col_counts, col_inverse = (torch.from_numpy(a).to(device) for a in col_grid)
        weight = (row_counts[:, None] * col_counts[None, :]).flatten().to(torch.float64)

        def owners(alive: Tensor) -> Tensor:
            """Owner query of every sampled pixel (argmax on the processed image, then the NEAREST samples)."""
            candidates = torch.nonzero(alive).flatten()
            if self.detr_compat:  # detr: argmax of the softmax over queries
                probs = upsampled[candidates].flatten(1).transpose(0, 1).softmax(-1)
                best = probs.argmax(-1).view(processed_size)
            else:
                best = _argmax_first(upsampled, candidates.tolist())
            return candidates[best[rows][:, cols]]

        alive = torch.ones(n, dtype=torch.bool, device=device)
        owner = owners(alive)
        identity = torch.arange(n, device=device)
        first_pass = True
        while True:
            if first_pass or self.merge_stuff:
                rep = torch.from_numpy(first_of_category(label_array, alive.cpu().numpy(), is_stuff)).to(device)
            else:
                rep = identity
            segment = rep[owner]
            area = torch.bincount(segment.flatten(), weights=weight, minlength=n).round().to(torch.int64)
            judged = area[rep] if self.merge_stuff else area
            small = alive & (judged <= MAX_SMALL_AREA)
            first_pass = False
            if not bool(small.any()):
                break
            alive &= ~small
            if not bool(alive.any()):
                return empty
            owner = owners(alive)

        segment_queries = torch.nonzero(alive & (rep == identity)).flatten()
        first_id = 0 if self.detr_compat else 1
        seg_ids = torch.zeros(n, dtype=torch.int64, device=device)
        seg_ids[segment_queries] = torch.arange(segment_queries.numel(), device=device) + first_id
        id_map = seg_ids[segment][row_inverse][:, col_inverse]
        boxes = segment_boxes(segment.cpu().numpy(), segment_queries.cpu().numpy(), row_grid[1], col_grid[1])
        segments_info: list[dict[str, Any]] = []
        for k, q in enumerate(segment_queries.tolist()):
            members = alive & (rep == q)
            category = label_list[q]
            segments_info.append(
                {
                    "id": int(seg_ids[q]),
                    "category_id": int(category),
                    "isthing": bool(self.is_thing_map[category]),
                    "area": int(area[q]),
                    "bbox": boxes[k],
                    "score": float(scores[members].max()),
                }
            )
        return PanopticResult(id_map.cpu().numpy().astype(np.uint32), segments_info)


class PostProcess(nn.Module):
    """detr's box post-processing: per image, scores/labels (best real class) and absolute xyxy boxes."""

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """``target_sizes``: [B, 2] (height, width) of the images the boxes should be expressed in."""
        prob = outputs["pred_logits"].softmax(-1)
        scores, labels = prob[..., :-1].max(-1)
        boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"])
        img_h, img_w = target_sizes.unbind(1)
        scale = torch.stack([img_w, img_h, img_w, img_h], dim=1).to(boxes.dtype)
        boxes = boxes * scale[:, None, :]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes, strict=True)]

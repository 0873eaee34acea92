"""Bounding-box conversions, pairwise IoU / generalized IoU and mask-to-box, as DETR uses them.

DETR predicts boxes as normalized (center_x, center_y, width, height); the IoU family needs corner form
(x0, y0, x1, y1). Pairwise functions operate on the last two dimensions so the matcher can also use them batched:
boxes1 [..., N, 4] and boxes2 [..., M, 4] give [..., N, M].
"""

import torch
from torch import Tensor

from runtime.errors import PansegError


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1) on the last dimension."""
    cx, cy, w, h = boxes.unbind(-1)
    half_w, half_h = 0.5 * w, 0.5 * h
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h) on the last dimension."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of corner-form boxes [..., 4] -> [...]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of corner-form boxes, returned with the union areas (generalized IoU needs both).

    Same contract as detr's util/box_ops.box_iou: ``iou, union = box_iou(a, b)``, each [..., N, M].
    """
    top_left = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    return inter / union, union


def _check_corner_boxes(boxes: Tensor, name: str) -> None:
    """Fail loudly on boxes that would turn GIoU into NaN or silently wrong values (e.g. diverged predictions)."""
    if not torch.isfinite(boxes).all():
        raise PansegError(f"generalized_box_iou: {name} contains NaN or infinite coordinates (did training diverge?)")
    inverted = (boxes[..., 2:] < boxes[..., :2]).any(-1)
    if inverted.any():
        first = boxes[inverted][0].tolist()
        raise PansegError(
            f"generalized_box_iou: {name} has {int(inverted.sum())} box(es) with x1 < x0 or y1 < y0, "
            f"e.g. {first}; boxes must be (x0, y0, x1, y1)"
        )


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (https://giou.stanford.edu/) of corner-form boxes: [..., N, M].

    GIoU = IoU - (enclosing area - union) / enclosing area; it lies in (-1, 1] and, unlike IoU, still gives a
    useful signal for boxes that do not overlap, which is why DETR uses 1 - GIoU as a loss and -GIoU as a cost.
    """
    _check_corner_boxes(boxes1, "boxes1")
    _check_corner_boxes(boxes2, "boxes2")
    iou, union = box_iou(boxes1, boxes2)
    enclose_top_left = torch.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    enclose_bottom_right = torch.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    enclose_wh = (enclose_bottom_right - enclose_top_left).clamp(min=0)
    enclose_area = enclose_wh[..., 0] * enclose_wh[..., 1]
    return iou - (enclose_area - union) / enclose_area


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight corner-form boxes [N, 4] around binary masks [N, H, W], in pixel indices (x1, y1 inclusive).

    Matches torchvision.ops.masks_to_boxes, including an all-zero box for an empty mask.
    """
    if masks.numel() == 0:
        return torch.zeros((masks.shape[0], 4), device=masks.device, dtype=torch.float)
    present = masks.bool()
    height, width = present.shape[-2:]
    rows = present.any(dim=2).to(torch.uint8)  # [N, H]: rows the mask touches
    cols = present.any(dim=1).to(torch.uint8)  # [N, W]
    # argmax returns the first maximal index: the first touched row/column from either end.
    y0 = rows.argmax(dim=1)
    y1 = height - 1 - rows.flip(1).argmax(dim=1)
    x0 = cols.argmax(dim=1)
    x1 = width - 1 - cols.flip(1).argmax(dim=1)
    boxes = torch.stack((x0, y0, x1, y1), dim=1).float()
    empty = ~rows.bool().any(dim=1)
    return boxes.masked_fill(empty[:, None], 0.0)

"""Test-only reference: detr's evaluation transform and box post-processing, transcribed literally from
facebookresearch/detr (datasets/transforms.py, util/misc.py, models/detr.py PostProcess), plus its
PostProcessPanoptic (benchmarks/detr_original.py, which the latency benchmark also times as eager's baseline), so
that our implementations can be checked against detr's own behaviour.

Only what no longer runs on current libraries is adapted, without changing results: detr's util.misc.interpolate
(F.interpolate, or an empty tensor when there is nothing to interpolate) and torch.ByteStorage.from_buffer
(replaced by np.asarray of the same PIL bytes).
"""

# A literal transcription keeps detr's closures over loop variables and its plain zip() calls.
# ruff: noqa: B023, B905

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from benchmarks.detr_original import box_cxcywh_to_xyxy, decode_png, interpolate, post_process_panoptic

__all__ = ["decode_png", "detr_eval_transform", "get_size_with_aspect_ratio", "interpolate",
           "nested_tensor_from_tensor_list", "post_process_boxes", "post_process_panoptic"]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---- datasets/transforms.py: resize (RandomResize([800], max_size=1333) picks 800), ToTensor, Normalize ----

def get_size_with_aspect_ratio(image_size, size, max_size=None):
    w, h = image_size
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))

    if (w <= h and w == size) or (h <= w and h == size):
        return (h, w)

    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)

    return (oh, ow)


def detr_eval_transform(image: Image.Image, size: int = 800, max_size: int = 1333) -> torch.Tensor:
    out_size = get_size_with_aspect_ratio(image.size, size, max_size)
    rescaled = TF.resize(image, out_size)
    tensor = TF.to_tensor(rescaled)
    return TF.normalize(tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD)


# ---- util/misc.py ----

def nested_tensor_from_tensor_list(tensor_list):
    max_size = [max(s) for s in zip(*[list(img.shape) for img in tensor_list])]
    batch_shape = [len(tensor_list)] + max_size
    b, c, h, w = batch_shape
    tensor = torch.zeros(batch_shape, dtype=tensor_list[0].dtype)
    mask = torch.ones((b, h, w), dtype=torch.bool)
    for img, pad_img, m in zip(tensor_list, tensor, mask):
        pad_img[: img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return tensor, mask


# ---- util/box_ops.py and models/detr.py PostProcess ----

@torch.no_grad()
def post_process_boxes(outputs, target_sizes):
    out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
    prob = F.softmax(out_logits, -1)
    scores, labels = prob[..., :-1].max(-1)
    boxes = box_cxcywh_to_xyxy(out_bbox)
    img_h, img_w = target_sizes.unbind(1)
    scale_fct = torch.stack([img_w, img_h, img_w, img_h], dim=1)
    boxes = boxes * scale_fct[:, None, :]
    return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]

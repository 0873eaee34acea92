"""Every literal transcription of detr's published code (facebookresearch/detr) that panseg keeps, in one place:
the tests' reference for our implementations and the latency benchmark's eager baseline.

- models/segmentation.py ``PostProcessPanoptic`` (:func:`post_process_panoptic`): the PyTorch post-processing a
  detr user runs; the benchmark times it as eager's post-processing stage;
- models/detr.py ``PostProcess`` (:func:`post_process_boxes`) and util/box_ops.py ``box_cxcywh_to_xyxy``;
- datasets/transforms.py's evaluation transform (:func:`detr_eval_transform`: resize by
  :func:`get_size_with_aspect_ratio` as RandomResize([800], max_size=1333) does, ToTensor, Normalize) and
  util/misc.py ``nested_tensor_from_tensor_list`` (padding a batch): eager's preprocessing in the benchmark
  (:func:`detr_eval_batch`);
- util/misc.py ``interpolate``.

Transcribed literally; only what no longer runs on current libraries is adapted, without changing results: detr's
util.misc.interpolate (F.interpolate, or an empty tensor when there is nothing to interpolate),
torch.ByteStorage.from_buffer (np.asarray of the same PIL bytes), panopticapi's id2rgb/rgb2id (runtime's, the same
encoding). Additions, marked as panseg's: ``encode_png=False`` stops at detr's PIL id image instead of encoding it to
PNG bytes, so the benchmark times the same work as the runtime's post-processing stage (which also stops at the id
map; writing PNGs is a later stage there); :func:`decode_png` and :func:`to_panoptic_result` convert detr's output
to ours (ids from 1) untimed; :func:`detr_eval_batch` chains detr's transform and padding for a list of photos.
"""

# A literal transcription keeps detr's closures over loop variables and its plain zip() calls.
# ruff: noqa: B023, B905

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from runtime.panoptic_format import id2rgb, rgb2id
from runtime.postprocess import PanopticResult

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---- util/misc.py and util/box_ops.py ----


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    if input.numel() > 0:
        return F.interpolate(input, size, scale_factor, mode, align_corners)
    return input.new_empty(list(input.shape[:-2]) + list(size))


def box_cxcywh_to_xyxy(x):
    x_c, y_c, w, h = x.unbind(-1)
    b = [(x_c - 0.5 * w), (y_c - 0.5 * h), (x_c + 0.5 * w), (y_c + 0.5 * h)]
    return torch.stack(b, dim=-1)


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


def detr_eval_transform(image: Image.Image, size: int = 800, max_size: int | None = 1333) -> torch.Tensor:
    out_size = get_size_with_aspect_ratio(image.size, size, max_size)
    rescaled = TF.resize(image, out_size)
    tensor = TF.to_tensor(rescaled)
    return TF.normalize(tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def detr_eval_batch(pictures: list[Image.Image], size: int = 800, max_size: int | None = 1333
                    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """panseg addition: detr's evaluation preprocessing of RGB ``pictures`` as one padded batch: (images, padding
    mask, each image's processed (height, width) before padding)."""
    tensors = [detr_eval_transform(picture, size, max_size) for picture in pictures]
    images, mask = nested_tensor_from_tensor_list(tensors)
    return images, mask, [tuple(t.shape[-2:]) for t in tensors]


# ---- models/detr.py PostProcess ----

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


# ---- models/segmentation.py PostProcessPanoptic ----

@torch.no_grad()
def post_process_panoptic(outputs, processed_sizes, target_sizes=None, is_thing_map=None, threshold=0.85,
                          encode_png=True):
    if target_sizes is None:
        target_sizes = processed_sizes
    assert len(processed_sizes) == len(target_sizes)
    out_logits, raw_masks, raw_boxes = outputs["pred_logits"], outputs["pred_masks"], outputs["pred_boxes"]
    assert len(out_logits) == len(raw_masks) == len(target_sizes)
    preds = []

    def to_tuple(tup):
        if isinstance(tup, tuple):
            return tup
        return tuple(tup.cpu().tolist())

    for cur_logits, cur_masks, cur_boxes, size, target_size in zip(
        out_logits, raw_masks, raw_boxes, processed_sizes, target_sizes
    ):
        scores, labels = cur_logits.softmax(-1).max(-1)
        keep = labels.ne(outputs["pred_logits"].shape[-1] - 1) & (scores > threshold)
        cur_scores, cur_classes = cur_logits.softmax(-1).max(-1)
        cur_scores = cur_scores[keep]
        cur_classes = cur_classes[keep]
        cur_masks = cur_masks[keep]
        cur_masks = interpolate(cur_masks[None], to_tuple(size), mode="bilinear").squeeze(0)
        cur_boxes = box_cxcywh_to_xyxy(cur_boxes[keep])

        h, w = cur_masks.shape[-2:]
        assert len(cur_boxes) == len(cur_classes)

        cur_masks = cur_masks.flatten(1)
        stuff_equiv_classes = defaultdict(lambda: [])
        for k, label in enumerate(cur_classes):
            if not is_thing_map[label.item()]:
                stuff_equiv_classes[label.item()].append(k)

        def get_ids_area(masks, scores, dedup=False):
            m_id = masks.transpose(0, 1).softmax(-1)

            if m_id.shape[-1] == 0:
                m_id = torch.zeros((h, w), dtype=torch.long, device=m_id.device)
            else:
                m_id = m_id.argmax(-1).view(h, w)

            if dedup:
                for equiv in stuff_equiv_classes.values():
                    if len(equiv) > 1:
                        for eq_id in equiv:
                            m_id.masked_fill_(m_id.eq(eq_id), equiv[0])

            final_h, final_w = to_tuple(target_size)

            seg_img = Image.fromarray(id2rgb(m_id.view(h, w).cpu().numpy()))
            seg_img = seg_img.resize(size=(final_w, final_h), resample=Image.NEAREST)

            np_seg_img = np.asarray(seg_img).reshape(final_h, final_w, 3)
            m_id = torch.from_numpy(rgb2id(np_seg_img).astype(np.int64))

            area = []
            for i in range(len(scores)):
                area.append(m_id.eq(i).sum().item())
            return area, seg_img

        area, seg_img = get_ids_area(cur_masks, cur_scores, dedup=True)
        if cur_classes.numel() > 0:
            while True:
                filtered_small = torch.as_tensor(
                    [area[i] <= 4 for i, c in enumerate(cur_classes)], dtype=torch.bool, device=keep.device
                )
                if filtered_small.any().item():
                    cur_scores = cur_scores[~filtered_small]
                    cur_classes = cur_classes[~filtered_small]
                    cur_masks = cur_masks[~filtered_small]
                    area, seg_img = get_ids_area(cur_masks, cur_scores)
                else:
                    break

        else:
            cur_classes = torch.ones(1, dtype=torch.long, device=cur_classes.device)

        segments_info = []
        for i, a in enumerate(area):
            cat = cur_classes[i].item()
            segments_info.append({"id": i, "isthing": is_thing_map[cat], "category_id": cat, "area": a})
        del cur_classes

        if not encode_png:  # panseg addition (see the module docstring)
            preds.append({"seg_img": seg_img, "segments_info": segments_info})
            continue
        with io.BytesIO() as out:
            seg_img.save(out, format="PNG")
            predictions = {"png_string": out.getvalue(), "segments_info": segments_info}
        preds.append(predictions)
    return preds


# ---- panseg's conversions (untimed) ----

def decode_png(png_string: bytes) -> np.ndarray:
    """detr's png_string -> H x W id map (detr's ids, from 0)."""
    with Image.open(io.BytesIO(png_string)) as im:
        return rgb2id(np.asarray(im.convert("RGB"))).astype(np.int64)


def to_panoptic_result(prediction: dict[str, Any]) -> PanopticResult:
    """detr's prediction (``png_string`` or ``seg_img``) -> PanopticResult with ids from 1 (0 is VOID in COCO).

    detr gives every pixel to a segment, so the id map is detr's + 1 wherever it has segments; with none left, detr
    leaves an all-zero image: all VOID.
    """
    if "png_string" in prediction:
        ids = decode_png(prediction["png_string"])
    else:
        ids = rgb2id(np.asarray(prediction["seg_img"].convert("RGB"))).astype(np.int64)
    segments = [{**s, "id": s["id"] + 1} for s in prediction["segments_info"]]
    id_map = (ids + 1 if segments else np.zeros_like(ids)).astype(np.uint32)
    return PanopticResult(id_map, segments)

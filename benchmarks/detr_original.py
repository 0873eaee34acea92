"""detr's ``PostProcessPanoptic`` as published (facebookresearch/detr, models/segmentation.py), the PyTorch
post-processing a detr user runs: the latency benchmark's eager baseline and the tests' reference.

Transcribed literally; only what no longer runs on current libraries is adapted, without changing results: detr's
util.misc.interpolate (F.interpolate, or an empty tensor when there is nothing to interpolate),
torch.ByteStorage.from_buffer (np.asarray of the same PIL bytes), panopticapi's id2rgb/rgb2id (runtime's, the same
encoding). One addition: ``encode_png=False`` stops at detr's PIL id image instead of encoding it to PNG bytes, so
the benchmark times the same work as the runtime's post-processing stage (which also stops at the id map; writing
PNGs is a later stage there). :func:`to_panoptic_result` converts detr's output to ours (ids from 1) untimed.
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
from PIL import Image

from runtime.panoptic_format import id2rgb, rgb2id
from runtime.postprocess import PanopticResult


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    if input.numel() > 0:
        return F.interpolate(input, size, scale_factor, mode, align_corners)
    return input.new_empty(list(input.shape[:-2]) + list(size))


def box_cxcywh_to_xyxy(x):
    x_c, y_c, w, h = x.unbind(-1)
    b = [(x_c - 0.5 * w), (y_c - 0.5 * h), (x_c + 0.5 * w), (y_c + 0.5 * h)]
    return torch.stack(b, dim=-1)


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

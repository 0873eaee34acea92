"""Evaluation during and after training: validation losses, and PQ through the runtime's evaluator.

Panoptic predictions are made by the runtime's own numpy post-processing (runtime.postprocess, detr's
PostProcessPanoptic with its fixes) on the model outputs, written as COCO panoptic PNG + JSON, and scored by
runtime.pq (panopticapi's rules): the very code, files and scorer a deployed model is evaluated with, so the PQ
training reports is the PQ ``panseg-rt infer`` + ``panseg-rt eval`` give for the same outputs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.atomic import atomic_write_json
from runtime.panoptic_format import write_panoptic_png
from runtime.postprocess import PanopticResult, postprocess_panoptic
from runtime.pq import pq_compute
from train.engine import to_device, weighted_loss

LOGGED_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "class_error")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    loader: Iterable,
    device: str,
    args: argparse.Namespace,
    output_dir: Path | None,
) -> dict[str, Any]:
    """Validation losses; for panoptic models also PQ/SQ/RQ (All, Things, Stuff) in percent, as detr logs them."""
    model.eval()
    criterion.eval()
    panoptic = bool(args.masks) and args.dataset_file == "coco_panoptic"
    gt_json = Path(args.coco_panoptic_path) / "annotations" / "panoptic_val2017.json"
    gt_folder = Path(args.coco_panoptic_path) / "panoptic_val2017"
    if panoptic:
        gt = json.loads(gt_json.read_text())
        file_names = {ann["image_id"]: ann["file_name"] for ann in gt["annotations"]}
        is_thing = {c["id"]: bool(c["isthing"]) for c in gt["categories"]}
        nms_iou = getattr(args, "nms_iou", None)
    sums: dict[str, float] = defaultdict(float)
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        pred_folder = Path(tmp) / "panoptic"
        annotations = []
        for images, padding_mask, targets in loader:
            outputs = model(images.to(device), padding_mask.to(device))
            loss_dict = criterion(outputs, to_device(targets, device))
            sums["loss"] += float(weighted_loss(loss_dict, criterion.weight_dict))
            for k in LOGGED_TERMS:
                if k in loss_dict:
                    sums[k] += float(loss_dict[k])
            count += 1
            if not panoptic:
                continue
            results = panoptic_results(outputs, targets, is_thing, args.threshold, nms_iou)
            for target, result in zip(targets, results, strict=True):
                image_id = int(target["image_id"])
                write_panoptic_png(pred_folder / file_names[image_id], result.id_map)
                annotations.append({"image_id": image_id, "file_name": file_names[image_id],
                                    "segments_info": result.segments_info})
        stats = {f"val_{k}": v / max(count, 1) for k, v in sums.items()}
        if panoptic:
            pred_json = Path(tmp) / "predictions.json"
            atomic_write_json(pred_json, {"annotations": annotations})
            pq = pq_compute(gt_json, gt_folder, pred_json, pred_folder, workers=1, progress=False)
            for key, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
                for metric in ("pq", "sq", "rq"):
                    stats[f"{metric}{key}"] = round(100 * pq[group][metric], 3)
    return stats


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def panoptic_results(outputs: dict[str, torch.Tensor], targets: list[dict[str, Any]], is_thing: dict[int, bool],
                     threshold: float, nms_iou: float | None = None) -> list[PanopticResult]:
    """A batch's panoptic predictions at the original sizes: the runtime's post-processing on the outputs as the
    float32 arrays an exported model returns (processed size = the image fed to the model, before padding)."""
    processed = [tuple(int(v) for v in t["size"]) for t in targets]
    originals = [tuple(int(v) for v in t["orig_size"]) for t in targets]
    boxes = _numpy(outputs["pred_boxes"]) if nms_iou is not None else None
    return postprocess_panoptic(_numpy(outputs["pred_logits"]), _numpy(outputs["pred_masks"]), processed, originals,
                                is_thing, threshold, pred_boxes=boxes, nms_iou=nms_iou)

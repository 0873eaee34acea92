"""COCO detection (instances JSON) as detr targets: boxes, labels and, optionally, instance masks.

Mirrors detr's CocoDetection + ConvertCocoPolysToMask: crowd annotations are dropped, boxes go from xywh to
xyxy clipped to the image, and boxes left empty are filtered out. Labels are the category ids themselves
(detr's convention: num_classes = max id + 1).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from runtime.errors import PansegError
from runtime.jsonfile import read_json
from train.datasets.transforms import Target


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Load an image as RGB; a missing or unreadable file is a PansegError naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as exc:
        raise PansegError(f"{path}: image missing") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise PansegError(f"{path}: not a readable image ({exc})") from exc


def image_size_from_header(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header: PIL reads no pixels; no EXIF rotation, as in ``open_rgb``."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as exc:
        raise PansegError(f"{path}: cannot read the image header: {exc}") from exc


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed RLE or compressed RLE -> H x W uint8 mask (several polygons are merged)."""
    if isinstance(segmentation, list) and not segmentation:
        return np.zeros((height, width), dtype=np.uint8)
    if isinstance(segmentation, list):  # polygons: one flat [x0, y0, x1, y1, ...] list each
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return coco_mask.decode(rle)


def annotations_to_target(
    image_id: int, annotations: Sequence[Mapping[str, Any]], width: int, height: int, return_masks: bool
) -> Target:
    """One image's COCO annotations -> detr's target (absolute xyxy boxes; ``size`` = ``orig_size`` = (h, w))."""
    anns = [a for a in annotations if a.get("iscrowd", 0) == 0]
    boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2].clamp_(min=0, max=width)
    boxes[:, 1::2].clamp_(min=0, max=height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])

    area = [float(a["area"]) if "area" in a else float(a["bbox"][2] * a["bbox"][3]) for a in anns]
    target: Target = {
        "boxes": boxes[keep],
        "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)[keep],
        "image_id": torch.tensor([image_id]),
        "area": torch.tensor(area, dtype=torch.float32)[keep],
        "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
        "orig_size": torch.tensor([height, width]),
        "size": torch.tensor([height, width]),
    }
    if return_masks:
        kept = [a for a, k in zip(anns, keep.tolist(), strict=True) if k]
        masks = [torch.from_numpy(segmentation_to_mask(a["segmentation"], height, width)) for a in kept]
        target["masks"] = torch.stack(masks).bool() if masks else torch.zeros((0, height, width), dtype=torch.bool)
    return target


def load_coco(ann_file: str | os.PathLike, need_segmentation: bool) -> COCO:
    """Read an instances JSON with pycocotools, checking what the targets need; errors name the file."""
    ann_file = Path(ann_file)
    data = read_json(ann_file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise PansegError(f"{ann_file}: expected a COCO JSON object with an 'images' list")
    required = ("image_id", "category_id", "bbox") + (("segmentation",) if need_segmentation else ())
    for ann in data.get("annotations", []):
        missing = [key for key in required if key not in ann]
        if missing:
            raise PansegError(f"{ann_file}: annotation {ann.get('id')!r} lacks {', '.join(missing)}")
        if len(ann["bbox"]) != 4:
            raise PansegError(f"{ann_file}: annotation {ann.get('id')!r} has a bbox of {len(ann['bbox'])} numbers")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """COCO images with detr targets; every image in the JSON is an item, even one without annotations."""

    def __init__(
        self,
        img_folder: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Callable | None = None,
        return_masks: bool = False,
    ) -> None:
        self.img_folder = Path(img_folder)
        self.coco = load_coco(ann_file, need_segmentation=return_masks)
        self.ids = sorted(self.coco.imgs)
        self.transforms = transforms
        self.return_masks = return_masks

    def __len__(self) -> int:
        return len(self.ids)

    def image_size(self, idx: int) -> tuple[int, int]:
        """(width, height) of item ``idx`` from the JSON, without decoding it (for size-grouped batches)."""
        info = self.coco.imgs[self.ids[idx]]
        if "width" in info and "height" in info:
            return int(info["width"]), int(info["height"])
        return image_size_from_header(self.img_folder / info["file_name"])

    def __getitem__(self, idx: int):
        image_id = self.ids[idx]
        image = open_rgb(self.img_folder / self.coco.imgs[image_id]["file_name"])
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id]))
        target = annotations_to_target(image_id, anns, image.width, image.height, self.return_masks)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

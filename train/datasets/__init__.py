"""Training data: COCO detection / COCO panoptic datasets with detr's targets and augmentations, and batching.

``build_dataset`` expects detr's directory layout::

    coco_path/{train2017,val2017}/                      images
    coco_path/annotations/instances_{train,val}2017.json  (dataset_file="coco")
    coco_panoptic_path/annotations/panoptic_{train,val}2017.json  (dataset_file="coco_panoptic")
    coco_panoptic_path/panoptic_{train,val}2017/        PNG id maps
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from runtime.errors import PansegError
from train.datasets.coco import CocoDetection
from train.datasets.coco_panoptic import CocoPanoptic
from train.datasets.collate import Collate, collate_fn, pad_images
from train.datasets.transforms import build_transforms, scaled_transform_options

__all__ = [
    "CocoDetection",
    "CocoPanoptic",
    "Collate",
    "build_dataset",
    "build_transforms",
    "collate_fn",
    "pad_images",
    "scaled_transform_options",
]

IMAGE_SETS = ("train", "val")
DATASET_FILES = ("coco", "coco_panoptic")


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise PansegError(f"{path}: {what} not found")
    return path


def build_dataset(
    image_set: str,
    dataset_file: str,
    coco_path: str | os.PathLike,
    coco_panoptic_path: str | os.PathLike | None = None,
    masks: bool = False,
    **transform_options: Any,
) -> Dataset:
    """The ``image_set`` split of ``dataset_file`` with ``build_transforms(image_set, **transform_options)``.

    ``masks`` adds instance masks to the targets (needed to train the panoptic head).
    """
    if image_set not in IMAGE_SETS:
        raise PansegError(f"unknown image set {image_set!r}: expected one of {', '.join(IMAGE_SETS)}")
    if dataset_file not in DATASET_FILES:
        raise PansegError(f"unknown dataset {dataset_file!r}: expected one of {', '.join(DATASET_FILES)}")
    transforms = build_transforms(image_set, **transform_options)
    root = _existing(Path(coco_path), "COCO directory")
    img_folder = _existing(root / f"{image_set}2017", "image folder")

    if dataset_file == "coco":
        ann_file = _existing(root / "annotations" / f"instances_{image_set}2017.json", "annotation file")
        return CocoDetection(img_folder, ann_file, transforms=transforms, return_masks=masks)

    if coco_panoptic_path is None:
        raise PansegError("coco_panoptic needs coco_panoptic_path (the folder holding annotations/panoptic_*.json)")
    pan_root = _existing(Path(coco_panoptic_path), "COCO panoptic directory")
    ann_file = _existing(pan_root / "annotations" / f"panoptic_{image_set}2017.json", "annotation file")
    ann_folder = _existing(pan_root / f"panoptic_{image_set}2017", "panoptic PNG folder")
    return CocoPanoptic(img_folder, ann_folder, ann_file, transforms=transforms, return_masks=masks)

"""COCO panoptic (PNG id maps + JSON) as detr targets: one binary mask per segment, with its category and box.

Mirrors detr's CocoPanoptic: masks are ``id_map == segment id`` for every entry of ``segments_info``, labels are
the category ids, boxes come from the masks (torchvision's masks_to_boxes: inclusive pixel indices, as detr's
util.box_ops.masks_to_boxes), and crowd segments are kept with ``iscrowd`` = 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.ops import masks_to_boxes

from runtime.errors import PanopticFormatError
from runtime.panoptic_format import load_panoptic_json, read_panoptic_png
from train.datasets.coco import image_size_from_header, open_rgb
from train.datasets.transforms import Target


def segments_to_target(
    image_id: int, id_map: np.ndarray, segments_info: Sequence[Mapping[str, Any]], return_masks: bool, where: str
) -> Target:
    """One image's id map and segments_info -> detr's target; a segment absent from the map is an error."""
    h, w = id_map.shape
    ids = np.array([seg["id"] for seg in segments_info], dtype=np.int64)
    masks = torch.from_numpy(id_map[None, :, :] == ids[:, None, None])
    empty = [int(i) for i, m in zip(ids, masks, strict=True) if not m.any()]
    if empty:
        raise PanopticFormatError(f"{where}: segment ids {empty} are in the JSON but not in the PNG")
    if all("area" in seg for seg in segments_info):
        area = torch.tensor([float(seg["area"]) for seg in segments_info], dtype=torch.float32)
    else:  # the JSON's areas are the pixel counts, when present
        area = masks.flatten(1).sum(1).float()
    target: Target = {
        "image_id": torch.tensor([image_id]),
        "labels": torch.tensor([seg["category_id"] for seg in segments_info], dtype=torch.int64),
        "boxes": masks_to_boxes(masks).reshape(-1, 4).float(),
        "iscrowd": torch.tensor([int(seg.get("iscrowd", 0)) for seg in segments_info], dtype=torch.int64),
        "area": area,
        "orig_size": torch.tensor([h, w]),
        "size": torch.tensor([h, w]),
    }
    if return_masks:
        target["masks"] = masks
    return target


class CocoPanoptic(Dataset):
    """One item per annotation of the panoptic JSON, ordered by image id like detr."""

    def __init__(
        self,
        img_folder: str | os.PathLike,
        ann_folder: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Callable | None = None,
        return_masks: bool = True,
    ) -> None:
        self.img_folder = Path(img_folder)
        self.ann_folder = Path(ann_folder)
        self.ann_file = Path(ann_file)
        data = load_panoptic_json(self.ann_file)
        self.images = {img["id"]: img for img in data.get("images", []) if isinstance(img, dict) and "id" in img}
        self.annotations = sorted(data["annotations"], key=lambda ann: ann["image_id"])
        self.transforms = transforms
        self.return_masks = return_masks

    def __len__(self) -> int:
        return len(self.annotations)

    def image_size(self, idx: int) -> tuple[int, int]:
        """(width, height) of item ``idx`` from the JSON, without decoding it (for size-grouped batches)."""
        ann = self.annotations[idx]
        info = self.images.get(ann["image_id"]) or {}
        if "width" in info and "height" in info:
            return int(info["width"]), int(info["height"])
        return image_size_from_header(self.image_path(ann))

    def image_path(self, ann: Mapping[str, Any]) -> Path:
        """The image named in the JSON's images list, else detr's guess: the PNG's name with .jpg."""
        info = self.images.get(ann["image_id"])
        name = info["file_name"] if info and "file_name" in info else str(Path(ann["file_name"]).with_suffix(".jpg"))
        return self.img_folder / name

    def __getitem__(self, idx: int):
        ann = self.annotations[idx]
        png_path = self.ann_folder / ann["file_name"]
        image = open_rgb(self.image_path(ann))
        id_map = read_panoptic_png(png_path)
        if id_map.shape != (image.height, image.width):
            raise PanopticFormatError(
                f"{png_path}: PNG is {id_map.shape[1]}x{id_map.shape[0]}, image is {image.width}x{image.height}"
            )
        target = segments_to_target(ann["image_id"], id_map, ann["segments_info"], self.return_masks, str(png_path))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

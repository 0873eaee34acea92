"""detr's joint image + target augmentations, with the image sizes made configurable for small models.

Every transform takes and returns ``(image, target)``: a PIL image (a tensor after ``ToTensor``) and detr's target
dict. Geometric transforms keep ``boxes`` (absolute xyxy pixels until ``Normalize``), ``masks``, ``area`` and
``size`` consistent with the image, so the matcher and the mask loss see what the pixels show.

Randomness comes from Python's ``random`` and torch's global generator, exactly like detr, so seeding both
(``random.seed`` + ``torch.manual_seed``) makes a pipeline reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as nnf
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.ops import box_convert

from runtime.errors import PansegError

Target = dict[str, torch.Tensor]
Transform = Callable[[Any, Target | None], tuple[Any, Target | None]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# detr's COCO numbers: they are the defaults of build_transforms.
DETR_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
DETR_MAX_SIZE = 1333
DETR_CROP = (384, 600)
DETR_CROP_RESIZE = (400, 500, 600)
DETR_EVAL_SIZE = 800

# Target entries with one row per instance: filtered together when instances are dropped.
INSTANCE_FIELDS = ("labels", "boxes", "masks", "area", "iscrowd")


def resized_size(image_size: tuple[int, int], size: int, max_size: int | None = None) -> tuple[int, int]:
    """detr's rule: (h, w) with the short side ``size`` and the aspect ratio kept, the long side held near ``max_size``.

    ``image_size`` is PIL's (w, h). When the long side would exceed ``max_size``, the short side is reduced to
    round(max_size * short / long); the long side is then truncated, as detr does.
    """
    w, h = image_size
    if max_size is not None:
        short, long = float(min(w, h)), float(max(w, h))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def crop(
    image: Image.Image, target: Target | None, region: tuple[int, int, int, int]
) -> tuple[Image.Image, Target | None]:
    """Crop to ``region`` = (top, left, height, width); drop instances left with an empty box (or mask, without boxes).

    As in detr, ``area`` becomes the area of the clipped box.
    """
    cropped = F.crop(image, *region)
    if target is None:
        return cropped, None
    top, left, h, w = region
    target = dict(target)
    target["size"] = torch.tensor([h, w])

    if "boxes" in target:
        boxes = target["boxes"] - torch.as_tensor([left, top, left, top], dtype=torch.float32)
        corners = torch.min(boxes.reshape(-1, 2, 2), torch.as_tensor([w, h], dtype=torch.float32)).clamp(min=0)
        target["boxes"] = corners.reshape(-1, 4)
        target["area"] = (corners[:, 1, :] - corners[:, 0, :]).prod(dim=1)
    if "masks" in target:
        target["masks"] = target["masks"][:, top : top + h, left : left + w]

    if "boxes" in target:  # detr favours the boxes when deciding what survived
        corners = target["boxes"].reshape(-1, 2, 2)
        keep = torch.all(corners[:, 1, :] > corners[:, 0, :], dim=1)
    elif "masks" in target:
        keep = target["masks"].flatten(1).any(1)
    else:
        return cropped, target
    for name in INSTANCE_FIELDS:
        if name in target:
            target[name] = target[name][keep]
    return cropped, target


def hflip(image: Image.Image, target: Target | None) -> tuple[Image.Image, Target | None]:
    """Mirror left-right: x -> width - x for boxes (so x0 and x1 swap), masks flipped along their last axis."""
    flipped = F.hflip(image)
    if target is None:
        return flipped, None
    w, _ = image.size
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return flipped, target


def resize(
    image: Image.Image, target: Target | None, size: int, max_size: int | None = None
) -> tuple[Image.Image, Target | None]:
    """Resize to ``resized_size``; boxes and area scale with the image, masks use nearest then ``> 0.5`` like detr."""
    h, w = resized_size(image.size, size, max_size)
    resized = F.resize(image, [h, w])
    if target is None:
        return resized, None
    ratio_w, ratio_h = w / image.width, h / image.height
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.as_tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=torch.float32)
    if "area" in target:
        target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = torch.tensor([h, w])
    if "masks" in target:
        masks = target["masks"]
        if masks.shape[0] == 0:  # interpolate refuses empty batches
            target["masks"] = torch.zeros((0, h, w), dtype=torch.bool)
        else:
            target["masks"] = nnf.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
    return resized, target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image, target):
        if random.random() < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


_BATCH_SCALE: ContextVar[int | None] = ContextVar("batch_scale", default=None)


@contextmanager
def batch_scale(size: int) -> Iterator[None]:
    """Within this block, multi-scale resizes use ``size`` instead of drawing one (one scale per batch: see
    train/datasets/grouped.py). Resizes built with ``batch_scaled=False`` (the crop branch's first one) ignore it."""
    token = _BATCH_SCALE.set(size)
    try:
        yield
    finally:
        _BATCH_SCALE.reset(token)


class RandomResize:
    """Resize the short side to one of ``sizes``, chosen uniformly (or to the batch's scale, see ``batch_scale``)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None, batch_scaled: bool = False) -> None:
        if not sizes:
            raise ValueError("RandomResize needs at least one size")
        self.sizes = list(sizes)
        self.max_size = max_size
        self.batch_scaled = batch_scaled

    def __call__(self, image, target=None):
        forced = _BATCH_SCALE.get() if self.batch_scaled else None
        return resize(image, target, forced if forced is not None else random.choice(self.sizes), self.max_size)

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


class RandomSizeCrop:
    """Crop a random region whose sides are drawn from [min_size, min(image side, max_size)].

    Unlike detr, an image side shorter than ``min_size`` is kept whole instead of raising.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image, target):
        hi_w, hi_h = min(image.width, self.max_size), min(image.height, self.max_size)
        w = random.randint(min(self.min_size, hi_w), hi_w)
        h = random.randint(min(self.min_size, hi_h), hi_h)
        region = T.RandomCrop.get_params(image, [h, w])
        return crop(image, target, region)

    def __repr__(self) -> str:
        return f"RandomSizeCrop({self.min_size}, {self.max_size})"


class RandomSelect:
    """Apply ``first`` with probability ``p``, otherwise ``second``."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5) -> None:
        self.first, self.second, self.p = first, second, p

    def __call__(self, image, target):
        if random.random() < self.p:
            return self.first(image, target)
        return self.second(image, target)

    def __repr__(self) -> str:
        return f"RandomSelect({self.first!r}, {self.second!r}, p={self.p})"


class ToTensor:
    def __call__(self, image, target):
        return F.to_tensor(image), target

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """Standardise the image tensor and turn boxes into detr's training form: cxcywh divided by (w, h, w, h)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image, target=None):
        image = F.normalize(image, mean=self.mean, std=self.std)
        if target is None:
            return image, None
        target = dict(target)
        if "boxes" in target:
            h, w = image.shape[-2:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            target["boxes"] = box_convert(target["boxes"], "xyxy", "cxcywh") / scale
        return image, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"Compose({inner}\n)"


def build_transforms(
    image_set: str,
    scales: Sequence[int] = DETR_SCALES,
    max_size: int | None = DETR_MAX_SIZE,
    crop: tuple[int, int] | None = DETR_CROP,
    eval_size: int = DETR_EVAL_SIZE,
    crop_resize: Sequence[int] = DETR_CROP_RESIZE,
) -> Compose:
    """detr's pipelines; the defaults reproduce its COCO numbers.

    train: random flip, then either a multi-scale resize or (resize to ``crop_resize``, random crop of ``crop``
    sides, multi-scale resize); ``crop=None`` leaves only the multi-scale resize. val: resize to ``eval_size``.
    Both end with ToTensor + Normalize.
    """
    normalize = Compose([ToTensor(), Normalize()])
    if image_set == "train":
        multiscale = RandomResize(scales, max_size=max_size, batch_scaled=True)
        if crop is None:
            geometry: Transform = multiscale
        else:
            geometry = RandomSelect(
                multiscale,
                Compose([RandomResize(crop_resize), RandomSizeCrop(*crop),
                         RandomResize(scales, max_size=max_size, batch_scaled=True)]),
            )
        return Compose([RandomHorizontalFlip(), geometry, normalize])
    if image_set == "val":
        return Compose([RandomResize([eval_size], max_size=max_size), normalize])
    raise PansegError(f"unknown image set {image_set!r}: expected 'train' or 'val'")


def scaled_transform_options(eval_size: int) -> dict[str, Any]:
    """detr's COCO sizes scaled by ``eval_size / 800``: keyword arguments for ``build_transforms`` for small models.

    E.g. 128 gives train scales 77..128, max_size 213, crop (61, 96) after a resize to 64/80/96, eval 128.
    """
    if eval_size < 1:
        raise PansegError(f"eval size must be positive, got {eval_size}")
    r = eval_size / DETR_EVAL_SIZE

    def scale(values: Sequence[int]) -> list[int]:
        return sorted({max(1, round(v * r)) for v in values})

    return {
        "scales": scale(DETR_SCALES),
        "max_size": max(1, round(DETR_MAX_SIZE * r)),
        "crop": (max(1, round(DETR_CROP[0] * r)), max(1, round(DETR_CROP[1] * r))),
        "crop_resize": scale(DETR_CROP_RESIZE),
        "eval_size": eval_size,
    }

"""Batching images of different sizes: zero-pad to a common size and say where the padding is.

Same semantics as detr's nested_tensor_from_tensor_list: images sit in the top-left corner, the padding mask is
True on padding, and (by default) the batch is exactly as large as its largest image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from train.datasets.transforms import Target


def pad_images(images: Sequence[torch.Tensor], size_divisibility: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, H_i, W_i] tensors -> (images [B, C, H, W] zero-padded bottom/right, padding mask [B, H, W], True = pad).

    With ``size_divisibility`` > 0, H and W are rounded up to a multiple of it (e.g. the backbone stride).
    """
    if not images:
        raise ValueError("cannot batch an empty list of images")
    if any(img.ndim != 3 for img in images):
        raise ValueError(f"expected [C, H, W] images, got shapes {[tuple(img.shape) for img in images]}")
    channels = {img.shape[0] for img in images}
    if len(channels) != 1:
        raise ValueError(f"images have different channel counts {sorted(channels)}")
    h = max(img.shape[1] for img in images)
    w = max(img.shape[2] for img in images)
    if size_divisibility > 0:
        h = -(-h // size_divisibility) * size_divisibility
        w = -(-w // size_divisibility) * size_divisibility
    first = images[0]
    batch = torch.zeros((len(images), first.shape[0], h, w), dtype=first.dtype, device=first.device)
    mask = torch.ones((len(images), h, w), dtype=torch.bool, device=first.device)
    for b, img in enumerate(images):
        batch[b, :, : img.shape[1], : img.shape[2]].copy_(img)
        mask[b, : img.shape[1], : img.shape[2]] = False
    return batch, mask


class Collate:
    """A DataLoader ``collate_fn`` (picklable, for worker processes): -> (images, padding_mask, targets list)."""

    def __init__(self, size_divisibility: int = 0) -> None:
        self.size_divisibility = size_divisibility

    def __call__(self, batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
        images, targets = zip(*batch, strict=True)
        padded, mask = pad_images(images, self.size_divisibility)
        return padded, mask, list(targets)

    def __repr__(self) -> str:
        return f"Collate(size_divisibility={self.size_divisibility})"


collate_fn = Collate()

"""Verification images: the caller's folders and files, preprocessed by the runtime, in padded batches.

Why batches of their own rather than the runtime's: verification runs every image alone (batch 1) and in pairs padded
to a common size (batch 2, the second image taken smaller so there always is padding) at several shorter-side sizes,
so that a dimension frozen at export time shows up. Both engines then get the very same padded batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from export.onnx.graph import ShapePolicy
from runtime.contract import IMAGE_EXTENSIONS
from runtime.errors import PansegError
from runtime.preprocess import DEFAULT_MAX_SIZE, DEFAULT_SIZE, load_image, pad_batch, preprocess

ImageSources = str | os.PathLike | Sequence[str | os.PathLike]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(sources: ImageSources, max_images: int | None = None) -> list[Path]:
    """Image files from folders (their images, sorted, not recursive) and files, in the order given, each once; the
    first ``max_images``. A missing path, a folder without images or a file that is not an image is an error."""
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and _is_image(p))
            if not files:
                raise PansegError(f"{path}: no images ({extensions}) to verify with")
            found.extend(files)
        elif path.is_file():
            if not _is_image(path):
                raise PansegError(f"{path}: not an image file to verify with (extensions: {extensions})")
            found.append(path)
        else:
            raise PansegError(f"{path}: no such folder or image file to verify with")
    if not found:
        raise PansegError("no verification images given: pass folders or image files (python -m export.onnx "
                          "--verify-images PATH ...), or skip verification")
    unique = list(dict.fromkeys(found))
    return unique if max_images is None else unique[:max_images]


@dataclass
class Batch:
    """One padded batch, as both engines get it."""

    case: str  # e.g. "96 b2"
    names: list[str]
    images: np.ndarray  # B x 3 x H x W float32, zero on padding
    mask: np.ndarray  # B x H x W bool, True on padding
    processed: list[tuple[int, int]]  # each image's (height, width) before padding
    originals: list[tuple[int, int]]  # each image's (height, width) as read


def _fit_into(image: Image.Image, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Resize keeping the aspect ratio to fit ``scale`` x (height, width), then normalize (static-shape graphs)."""
    factor = min(height / image.height, width / image.width) * scale
    out_h, out_w = max(1, int(image.height * factor)), max(1, int(image.width * factor))
    resized = image.resize((out_w, out_h), Image.BILINEAR)
    return preprocess(resized, size=min(out_h, out_w), max_size=None)


def _pad_to(arrays: Sequence[np.ndarray], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    batch, mask = pad_batch(list(arrays))
    images = np.zeros((len(arrays), 3, height, width), np.float32)
    full_mask = np.ones((len(arrays), height, width), bool)
    images[:, :, : batch.shape[2], : batch.shape[3]] = batch
    full_mask[:, : mask.shape[1], : mask.shape[2]] = mask
    return images, full_mask


def plan_verification(paths: Sequence[Path], policy: ShapePolicy, sizes: Sequence[int],
                      max_size_ratio: float = DEFAULT_MAX_SIZE / DEFAULT_SIZE) -> list[Batch]:
    """The batches to run (see the module docstring). Static graphs get their own batch and canvas size only."""
    pictures = [(p.name, load_image(p)) for p in paths]
    batches: list[Batch] = []

    def make(case: str, items: list[tuple[str, Image.Image, np.ndarray]]) -> Batch:
        arrays = [a for _, _, a in items]
        if policy.dynamic_size:
            images, mask = pad_batch(arrays)
        else:
            images, mask = _pad_to(arrays, policy.height, policy.width)
        return Batch(case, [n for n, _, _ in items], images, mask, [tuple(a.shape[1:]) for a in arrays],
                     [(im.height, im.width) for _, im, _ in items])

    batch_sizes = (1, 2) if policy.dynamic_batch else (policy.batch,)
    if not policy.dynamic_size:
        for n in batch_sizes:
            for start in range(0, len(pictures), n):
                group = [pictures[(start + k) % len(pictures)] for k in range(n)]
                items = [(name, im, _fit_into(im, policy.height, policy.width, 1.0 if k == 0 else 0.75))
                         for k, (name, im) in enumerate(group)]
                batches.append(make(f"{policy.height}x{policy.width} b{n}", items))
        return batches

    for size in sizes:
        max_size = int(round(size * max_size_ratio))
        full = [(name, im, preprocess(im, size, max_size)) for name, im in pictures]
        for b in batch_sizes:
            if b == 1:
                batches.extend(make(f"{size} b1", [item]) for item in full)
                continue
            small = max(8, (3 * size) // 4)
            for start in range(0, len(full), b):
                group = [full[(start + k) % len(full)] for k in range(b)]
                # later images at a smaller size, so the batch is always padded
                items = [group[0]] + [(name, im, preprocess(im, small, int(round(small * max_size_ratio))))
                                      for name, im, _ in group[1:]]
                batches.append(make(f"{size} b{b}", items))
    return batches

"""Image loading and detr's evaluation preprocessing in numpy + PIL (no torch).

detr evaluates with ``RandomResize([800], max_size=1333)`` then ``ToTensor`` and ``Normalize`` (ImageNet mean/std).
torchvision's ``F.resize`` on a PIL image is ``img.resize((w, h), Image.BILINEAR)`` (PIL always antialiases; the
``antialias`` flag only matters for tensors), so doing the same PIL call here gives the model the same numbers.

Differences from detr, on purpose: EXIF orientation is applied (``apply_exif=True``; pass False to match pixel
coordinates of annotations made on the raw, unrotated pixels, which is what COCO and detr's loader use), and images
that are not 8-bit RGB are converted with the rules of :func:`to_rgb` rather than PIL's clipping ``convert("RGB")``.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.errors import PansegError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 800
DEFAULT_MAX_SIZE = 1333
# Pillow's own default decompression-bomb threshold (about 9459 x 9459), fixed here so that a global change to
# Image.MAX_IMAGE_PIXELS elsewhere does not silently change what the runtime accepts.
DEFAULT_MAX_PIXELS = 89_478_485
# Background for transparent pixels: the usual "flatten" convention of image editors and viewers.
ALPHA_BACKGROUND = 255

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, MemoryError)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transposition that shows the image upright (ImageOps.exif_transpose's table).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIDE_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def load_image(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, apply_exif: bool = True
) -> Image.Image:
    """Read an image file as an RGB PIL image (EXIF orientation applied); every failure is a one-line PansegError.

    The pixel limit is checked from the header, before any pixel data is decoded, so a decompression bomb (a small
    file declaring a huge image) is refused without allocating memory for it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise PansegError(f"{path}: no such file") from exc
    except OSError as exc:
        raise PansegError(f"{path}: cannot read ({_one_line(exc)})") from exc
    if path.is_dir():
        raise PansegError(f"{path}: is a directory, not an image")
    if size == 0:
        raise PansegError(f"{path}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's warning; Pillow still raises for twice its limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError as exc:
        raise PansegError(f"{path}: not an image (unrecognised or corrupt header)") from exc
    except Image.DecompressionBombError as exc:
        raise PansegError(f"{path}: refused as a possible decompression bomb ({_one_line(exc)})") from exc
    except _DECODE_ERRORS as exc:
        raise PansegError(f"{path}: unreadable image ({_one_line(exc)})") from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise PansegError(f"{path}: image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise PansegError(
                f"{path}: image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
                "(possible decompression bomb; raise max_pixels if the image is genuine)"
            )
        try:
            image.load()
        except _DECODE_ERRORS as exc:
            raise PansegError(f"{path}: truncated or corrupt image data ({_one_line(exc)})") from exc
        orientation = exif_orientation(image) if apply_exif else 1
        if orientation != 1:
            image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
        try:
            rgb = to_rgb(image)
        except PansegError as exc:
            raise PansegError(f"{path}: {exc}") from exc
        # Closing the file may release the pixels of the image it opened (Pillow's documented close()): keep a copy.
        return rgb.copy() if rgb is image else rgb


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (2..8: how to turn it upright), or 1 (as stored) when there is none to apply.

    One reader for :func:`load_image` (which turns the pixels) and ``runtime.inputs.probe_size`` (which predicts the
    size from the header alone), so the two cannot disagree. A damaged EXIF block or an unknown value should not make
    an otherwise good image unusable: the stored orientation is kept then.
    """
    try:
        orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - Pillow raises many types for malformed EXIF
        return 1
    return orientation if orientation in _ORIENTATION_TRANSPOSE else 1


def oriented_size(height: int, width: int, orientation: int) -> tuple[int, int]:
    """(height, width) of a stored ``height`` x ``width`` image once turned by EXIF ``orientation``."""
    return (width, height) if orientation in _SIDE_SWAPPING_ORIENTATIONS else (height, width)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    - RGB is returned as is; 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX use PIL's ``convert("RGB")``.
    - Transparency (RGBA, LA, PA, RGBa, La, and P/L/RGB with a ``transparency`` entry) is composited over white.
    - 16-bit (I;16*) is scaled to 8 bit, ``round(v / 257)`` (65535 -> 255), instead of PIL's clipping at 255.
    - 32-bit integer (I): values within 0..255 are taken as 8-bit, within 0..65535 as 16-bit (scaled as above),
      anything else (negative or larger) is stretched linearly from its min..max to 0..255.
    - float (F): non-finite values become 0; values within 0..1 are scaled by 255, within 0..255 taken as they are,
      anything else stretched from min..max to 0..255; then rounded.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.uint32)
        return _gray_to_rgb((values * 255 + 32767) // 65535)
    if mode == "I":
        return _gray_to_rgb(_integer_to_8bit(np.asarray(image).astype(np.int64)))
    if mode == "F":
        return _gray_to_rgb(_float_to_8bit(np.asarray(image).astype(np.float64)))
    if mode == "La":  # premultiplied luminance + alpha: Pillow cannot convert it; composite directly
        la = np.asarray(image).astype(np.int32)
        return _gray_to_rgb(np.clip(la[..., 0] + ALPHA_BACKGROUND * (255 - la[..., 1]) // 255, 0, 255))
    if mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (ALPHA_BACKGROUND,) * 3 + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise PansegError(f"cannot convert image mode {mode} to RGB ({_one_line(exc)})") from exc


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.asarray(values).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float64)
    return (values - lo) * 255.0 / (hi - lo)


def _integer_to_8bit(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 255:
        return values
    if lo >= 0 and hi <= 65535:
        return (values * 255 + 32767) // 65535
    return np.rint(_stretch(values.astype(np.float64)))


def _float_to_8bit(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return values
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        values = values * 255.0
    elif not (lo >= 0.0 and hi <= 255.0):
        values = _stretch(values)
    return np.clip(np.rint(values), 0, 255)


def target_size(width: int, height: int, size: int = DEFAULT_SIZE, max_size: int | None = DEFAULT_MAX_SIZE
                ) -> tuple[int, int]:
    """(height, width) after detr's resize: shorter side to ``size``, longer side at most ``max_size``.

    The arithmetic is detr's ``get_size_with_aspect_ratio`` step for step (float ratios, Python's ``round`` with
    ties to even, ``int`` truncation of the long side), because any other rounding changes the input by a pixel.
    """
    if max_size is not None:
        min_original_size = float(min((width, height)))
        max_original_size = float(max((width, height)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        out_w = size
        out_h = int(size * height / width)
    else:
        out_h = size
        out_w = int(size * width / height)
    return out_h, out_w


def preprocess(
    image: Image.Image,
    size: int = DEFAULT_SIZE,
    max_size: int | None = DEFAULT_MAX_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """PIL image -> 3 x H x W float32, resized and normalized exactly as detr's evaluation transform."""
    image = to_rgb(image)
    out_h, out_w = target_size(image.width, image.height, size, max_size)
    if out_h <= 0 or out_w <= 0:
        raise PansegError(
            f"a {image.width}x{image.height} image is too elongated to resize to shorter side {size} with longer "
            f"side at most {max_size}"
        )
    if (out_h, out_w) != (image.height, image.width):
        image = image.resize((out_w, out_h), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean32 = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((pixels - mean32) / std32)


def load_and_preprocess(
    path: str | os.PathLike,
    size: int = DEFAULT_SIZE,
    max_size: int | None = DEFAULT_MAX_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    apply_exif: bool = True,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Load and preprocess one file: (3 x H x W float32, original (height, width) after EXIF orientation)."""
    image = load_image(path, max_pixels=max_pixels, apply_exif=apply_exif)
    try:
        return preprocess(image, size, max_size), (image.height, image.width)
    except PansegError as exc:
        raise PansegError(f"{path}: {exc}") from exc


def pad_batch(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack C x H x W arrays into B x C x Hmax x Wmax, zero-padded at the bottom/right, and the padding mask.

    Same layout as detr's ``nested_tensor_from_tensor_list``: the mask is B x Hmax x Wmax, True on padding.
    """
    if len(images) == 0:
        raise ValueError("pad_batch needs at least one image")
    shapes = [np.shape(img) for img in images]
    if any(len(s) != 3 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"pad_batch expects C x H x W arrays with the same C, got shapes {shapes}")
    channels = shapes[0][0]
    max_h = max(s[1] for s in shapes)
    max_w = max(s[2] for s in shapes)
    batch = np.zeros((len(images), channels, max_h, max_w), dtype=np.float32)
    mask = np.ones((len(images), max_h, max_w), dtype=bool)
    for k, (img, (_, h, w)) in enumerate(zip(images, shapes, strict=True)):
        batch[k, :, :h, :w] = img
        mask[k, :h, :w] = False
    return batch, mask


def plan_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Split image indices into batches that need as little padding as possible.

    Images of one processed size fill whole batches first (no padding at all); the few left over per size are then
    sorted by size, so that the mixed batches join similar sizes, and cut into batches. Every index appears once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, hw in enumerate(sizes):
        by_size.setdefault((int(hw[0]), int(hw[1])), []).append(index)
    batches: list[list[int]] = []
    leftovers: list[int] = []
    for indices in by_size.values():
        full = len(indices) - len(indices) % batch_size
        batches.extend(indices[k:k + batch_size] for k in range(0, full, batch_size))
        leftovers.extend(indices[full:])
    leftovers.sort(key=lambda i: (int(sizes[i][0]), int(sizes[i][1]), i))
    batches.extend(leftovers[k:k + batch_size] for k in range(0, len(leftovers), batch_size))
    return batches

"""COCO panoptic format: id <-> RGB encoding, PNG and JSON reading/writing, and validation.

A panoptic PNG stores a segment id per pixel as RGB with id = R + 256*G + 256^2*B; id 0 is VOID (unlabelled).
The JSON holds, per image, ``segments_info``: id, category_id, area, bbox [x, y, w, h], iscrowd.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runtime.atomic import atomic_write_with
from runtime.categories import Category
from runtime.errors import PanopticFormatError
from runtime.jsonfile import read_json

VOID = 0
OFFSET = 256 * 256 * 256  # ids are 24-bit


def rgb2id(color: np.ndarray | tuple[int, int, int] | list[int]) -> np.ndarray | int:
    """RGB (H x W x 3 array, or one color) -> segment id(s) as uint32 (or int)."""
    if isinstance(color, np.ndarray) and color.ndim >= 1 and color.shape[-1] == 3:
        c = color.astype(np.uint32, copy=False)
        return c[..., 0] + (c[..., 1] << 8) + (c[..., 2] << 16)
    r, g, b = (int(v) for v in color)
    return r + 256 * g + 256 * 256 * b


def id2rgb(id_map: np.ndarray | int) -> np.ndarray | tuple[int, int, int]:
    """Segment id(s) -> RGB (H x W x 3 uint8 array, or one color tuple)."""
    if isinstance(id_map, np.ndarray):
        ids = id_map.astype(np.uint32, copy=False)
        if ids.size and int(ids.max()) >= OFFSET:
            raise ValueError(f"segment id {int(ids.max())} does not fit in 24 bits")
        out = np.empty(ids.shape + (3,), dtype=np.uint8)
        out[..., 0] = ids & 0xFF
        out[..., 1] = (ids >> 8) & 0xFF
        out[..., 2] = (ids >> 16) & 0xFF
        return out
    i = int(id_map)
    if not 0 <= i < OFFSET:
        raise ValueError(f"segment id {i} does not fit in 24 bits")
    return (i & 0xFF, (i >> 8) & 0xFF, (i >> 16) & 0xFF)


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a panoptic PNG as an H x W uint32 id map; a missing or unreadable file is a PanopticFormatError."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise PanopticFormatError(f"{path}: panoptic PNG must be RGB, got mode {im.mode}")
            arr = np.asarray(im)
    except FileNotFoundError as exc:
        raise PanopticFormatError(f"{path}: panoptic PNG missing") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise PanopticFormatError(f"{path}: not a readable PNG ({exc})") from exc
    return rgb2id(arr)


def write_panoptic_png(path: str | os.PathLike, id_map: np.ndarray) -> None:
    """Write an id map as a panoptic PNG, atomically."""
    image = Image.fromarray(id2rgb(np.asarray(id_map)))
    atomic_write_with(path, lambda f: image.save(f, format="PNG"))


def segment_stats(id_map: np.ndarray) -> dict[int, dict[str, Any]]:
    """Area and COCO bbox [x, y, w, h] of every non-VOID id in the map."""
    ids = np.asarray(id_map)
    flat = ids.ravel()
    labels, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    h, w = ids.shape
    ys, xs = np.divmod(np.arange(flat.size), w)
    n = labels.size
    x0 = np.full(n, w, dtype=np.int64)
    y0 = np.full(n, h, dtype=np.int64)
    x1 = np.full(n, -1, dtype=np.int64)
    y1 = np.full(n, -1, dtype=np.int64)
    np.minimum.at(x0, inverse, xs)
    np.minimum.at(y0, inverse, ys)
    np.maximum.at(x1, inverse, xs)
    np.maximum.at(y1, inverse, ys)
    stats = {}
    for k, label in enumerate(labels.tolist()):
        if label == VOID:
            continue
        stats[label] = {
            "area": int(counts[k]),
            "bbox": [int(x0[k]), int(y0[k]), int(x1[k] - x0[k] + 1), int(y1[k] - y0[k] + 1)],
        }
    return stats


def load_panoptic_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO panoptic JSON (ground truth or predictions) and check its top-level structure."""
    path = Path(path)
    data = read_json(path, PanopticFormatError)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise PanopticFormatError(f"{path}: expected a JSON object with an 'annotations' list")
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or "file_name" not in ann or "image_id" not in ann:
            raise PanopticFormatError(f"{path}: an annotation lacks 'image_id' or 'file_name'")
        if not isinstance(ann.get("segments_info"), list):
            raise PanopticFormatError(f"{path}: annotation of image {ann['image_id']} lacks a 'segments_info' list")
    return data


def validate_annotation(
    annotation: Mapping[str, Any],
    id_map: np.ndarray,
    categories: Mapping[int, Category],
    image_size: tuple[int, int] | None = None,
    check_area: bool = False,
) -> None:
    """Check one image's segments_info against its PNG; raise PanopticFormatError naming the first problem.

    ``image_size`` is (height, width) from the JSON's images list, when known.
    """
    where = f"image {annotation.get('image_id')!r} ({annotation.get('file_name')})"
    if image_size is not None and tuple(id_map.shape) != tuple(image_size):
        raise PanopticFormatError(
            f"{where}: PNG is {id_map.shape[1]}x{id_map.shape[0]}, image is {image_size[1]}x{image_size[0]}"
        )
    seen: set[int] = set()
    for seg in annotation["segments_info"]:
        seg_id = seg.get("id")
        if not isinstance(seg_id, int) or isinstance(seg_id, bool):
            raise PanopticFormatError(f"{where}: segment id {seg_id!r} is not an integer")
        if seg_id == VOID:
            raise PanopticFormatError(f"{where}: segment id 0 is reserved for VOID")
        if seg_id in seen:
            raise PanopticFormatError(f"{where}: duplicate segment id {seg_id}")
        seen.add(seg_id)
        if seg.get("category_id") not in categories:
            raise PanopticFormatError(f"{where}: segment {seg_id} has unknown category_id {seg.get('category_id')}")
    stats = segment_stats(id_map)
    in_png = set(stats)
    missing_in_json = sorted(in_png - seen)
    if missing_in_json:
        raise PanopticFormatError(f"{where}: segment ids {missing_in_json} are in the PNG but not in the JSON")
    missing_in_png = sorted(seen - in_png)
    if missing_in_png:
        raise PanopticFormatError(f"{where}: segment ids {missing_in_png} are in the JSON but not in the PNG")
    if check_area:
        for seg in annotation["segments_info"]:
            area = stats[seg["id"]]["area"]
            if "area" in seg and int(seg["area"]) != area:
                raise PanopticFormatError(
                    f"{where}: segment {seg['id']} has area {seg['area']} in the JSON but {area} pixels in the PNG"
                )


def validate_dataset(
    json_path: str | os.PathLike,
    png_folder: str | os.PathLike,
    categories: Mapping[int, Category] | None = None,
    check_area: bool = False,
) -> int:
    """Validate every annotation of a panoptic JSON against its PNG folder; returns the number checked."""
    from runtime.categories import categories_from_json

    data = load_panoptic_json(json_path)
    if categories is None:
        categories = categories_from_json(data.get("categories", []), str(json_path))
    sizes = {img["id"]: (img["height"], img["width"]) for img in data.get("images", []) if "height" in img}
    for ann in data["annotations"]:
        id_map = read_panoptic_png(Path(png_folder) / ann["file_name"])
        validate_annotation(ann, id_map, categories, sizes.get(ann["image_id"]), check_area=check_area)
    return len(data["annotations"])

"""Pictures of a panoptic prediction: segments tinted in their category colour over the photo, with labels.

``render_overlay`` draws what ``--overlay`` saves per image (like the prediction images of the DETR demo):
a translucent category colour per segment, segment outlines, and for things a box with "name 0.97"; stuff gets its
label at an interior point. ``colorize_panoptic`` is the plain colour map used for documentation pictures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from runtime.errors import PansegError

VOID = 0
RGB = tuple[int, int, int]

_JITTER = 60  # how far (per channel) an instance colour may move from its category colour
_LABEL_GRID = 128  # interior points are searched on an id map at most this many pixels across


class CategoryLike(Protocol):
    name: str
    color: tuple[int, int, int] | list[int]


def _category(categories: Mapping[int, CategoryLike], segment: Mapping[str, Any]) -> CategoryLike:
    cat = categories.get(int(segment["category_id"]))
    if cat is None:
        raise PansegError(f"segment {segment['id']} has category_id {segment['category_id']}, "
                          f"not one of the {len(categories)} known categories")
    return cat


def _is_thing(segment: Mapping[str, Any], cat: CategoryLike) -> bool:
    return bool(segment.get("isthing", getattr(cat, "isthing", False)))


def segment_colors(
    segments_info: Iterable[Mapping[str, Any]],
    categories: Mapping[int, CategoryLike],
    distinct_instances: bool = True,
) -> dict[int, RGB]:
    """Segment id -> colour. Stuff and the first instance of a thing category keep the category colour; with
    ``distinct_instances`` later instances get a nearby variant no other segment of the image uses, so touching
    instances stay apart (as panopticapi's IdGenerator does, but seeded by the segment id so it is repeatable)."""
    colors: dict[int, RGB] = {}
    used: set[RGB] = set()
    for seg in segments_info:
        cat = _category(categories, seg)
        base: RGB = tuple(int(c) for c in cat.color)  # type: ignore[assignment]
        color = base
        if distinct_instances and _is_thing(seg, cat) and color in used:
            rng = np.random.default_rng(int(seg["id"]))
            while color in used:
                jitter = rng.integers(-_JITTER, _JITTER + 1, size=3)
                color = tuple(int(v) for v in np.clip(np.asarray(base) + jitter, 0, 255))  # type: ignore[assignment]
        colors[int(seg["id"])] = color
        used.add(color)
    return colors


def _paint(id_map: np.ndarray, colors: Mapping[int, RGB]) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 colour image, H x W mask of pixels that belong to a listed segment); VOID stays black."""
    ids = np.asarray(id_map)
    out = np.zeros(ids.shape + (3,), dtype=np.uint8)
    seg_ids = np.array(sorted(i for i in colors if i != VOID), dtype=np.int64)
    if seg_ids.size == 0:
        return out, np.zeros(ids.shape, dtype=bool)
    table = np.array([colors[int(i)] for i in seg_ids], dtype=np.uint8)
    pos = np.searchsorted(seg_ids, ids).clip(max=seg_ids.size - 1)
    covered = seg_ids[pos] == ids
    out[covered] = table[pos[covered]]
    return out, covered


def colorize_panoptic(
    id_map: np.ndarray,
    segments_info: Iterable[Mapping[str, Any]],
    categories: Mapping[int, CategoryLike],
    distinct_instances: bool = False,
) -> np.ndarray:
    """H x W x 3 uint8: every segment in its category colour, VOID (and ids without segments_info) black."""
    colors = segment_colors(segments_info, categories, distinct_instances)
    return _paint(id_map, colors)[0]


def _boundaries(ids: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of a different id (both sides of every boundary)."""
    edge = np.zeros(ids.shape, dtype=bool)
    horizontal = ids[:, 1:] != ids[:, :-1]
    vertical = ids[1:, :] != ids[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


def interior_point(mask: np.ndarray) -> tuple[int, int] | None:
    """(row, col) of a pixel that survives the most 4-neighbour erosions: roughly the farthest from the border."""
    if not mask.any():
        return None
    current = mask
    while True:
        padded = np.pad(current, 1, constant_values=False)
        eroded = (current & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
        if not eroded.any():
            break
        current = eroded
    rows, cols = np.nonzero(current)
    k = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))  # the middle of the deepest ridge
    return int(rows[k]), int(cols[k])


def _label_point(ids: np.ndarray, small: np.ndarray, stride: int, seg_id: int) -> tuple[int, int] | None:
    """(x, y) inside segment ``seg_id``, found on the subsampled map ``small`` (= ids[::stride, ::stride])."""
    point = interior_point(small == seg_id)
    if point is not None:
        return point[1] * stride, point[0] * stride  # subsampled pixels are original pixels: still inside
    rows, cols = np.nonzero(ids == seg_id)  # thinner than the stride: any member pixel will do
    if rows.size == 0:
        return None
    k = rows.size // 2
    return int(cols[k]), int(rows[k])


def _bbox(seg: Mapping[str, Any], ids: np.ndarray) -> tuple[int, int, int, int] | None:
    """COCO [x, y, w, h] from segments_info, or measured from the map if absent."""
    if seg.get("bbox") is not None:
        x, y, w, h = (int(round(float(v))) for v in seg["bbox"])
        return x, y, w, h
    rows, cols = np.nonzero(ids == int(seg["id"]))
    if rows.size == 0:
        return None
    return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


def _font(height: int, width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(10, min(height, width) // 40)
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled font: nothing to download
    except (TypeError, ImportError, OSError):  # old Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_color(background: RGB) -> RGB:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _label_text(name: str, seg: Mapping[str, Any]) -> str:
    score = seg.get("score")
    return name if score is None else f"{name} {float(score):.2f}"


def _draw_label(draw: ImageDraw.ImageDraw, font, text: str, xy: tuple[int, int], color: RGB, anchor: str,
                size: tuple[int, int]) -> None:
    """Text on a filled box in the segment colour, kept inside the picture."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 2
    x, y = xy
    if anchor == "center":
        x, y = x - tw // 2, y - th // 2
    elif anchor == "above":
        y = y - th if y - th >= 0 else y
    x = min(max(x, 0), max(size[0] - tw, 0))
    y = min(max(y, 0), max(size[1] - th, 0))
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=color)
    draw.text((x + 2 - left, y + 1 - top), text, fill=_text_color(color), font=font)


def render_overlay(
    image: Image.Image,
    id_map: np.ndarray,
    segments_info: list[Mapping[str, Any]],
    categories: Mapping[int, CategoryLike],
    alpha: float = 0.5,
) -> Image.Image:
    """The photo with each segment blended ``alpha`` toward its colour, outlines, thing boxes and labels.

    segments_info entries: id, category_id, isthing (else taken from the category), bbox [x, y, w, h] (else
    measured), optional score. VOID pixels and pixels of ids without an entry are left as in the photo.
    """
    if not 0.0 <= alpha <= 1.0:
        raise PansegError(f"overlay alpha must be between 0 and 1, got {alpha}")
    ids = np.asarray(id_map)
    if ids.ndim != 2 or ids.shape != (image.height, image.width):
        raise PansegError(f"overlay: id map of shape {ids.shape} does not match the {image.width}x{image.height} image")
    photo = np.asarray(image.convert("RGB"))
    colors = segment_colors(segments_info, categories, distinct_instances=True)
    paint, covered = _paint(ids, colors)

    out = photo.copy()
    blend = photo[covered] * (1.0 - alpha) + paint[covered] * alpha
    out[covered] = np.rint(blend).astype(np.uint8)
    outline = _boundaries(ids) & covered
    out[outline] = paint[outline]

    result = Image.fromarray(out)
    draw = ImageDraw.Draw(result)
    height, width = ids.shape
    font = _font(height, width)
    line = max(1, round(min(height, width) / 320))
    stride = max(1, math.ceil(max(height, width) / _LABEL_GRID))
    small = ids[::stride, ::stride]
    labels: list[tuple[str, tuple[int, int], RGB, str]] = []
    for seg in segments_info:
        seg_id = int(seg["id"])
        cat = _category(categories, seg)
        color = colors[seg_id]
        text = _label_text(cat.name, seg)
        if _is_thing(seg, cat):
            box = _bbox(seg, ids)
            if box is None:
                continue
            x, y, w, h = box
            draw.rectangle((x, y, x + max(w, 1) - 1, y + max(h, 1) - 1), outline=color, width=line)
            labels.append((text, (x, y), color, "above"))
        else:
            point = _label_point(ids, small, stride, seg_id)
            if point is not None:
                labels.append((text, point, color, "center"))
    for text, xy, color, anchor in labels:  # after all boxes, so no box crosses a label
        _draw_label(draw, font, text, xy, color, anchor, (width, height))
    return result

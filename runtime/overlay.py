"""Pictures of a panoptic prediction: segments tinted over the photo, with labels and a legend.

``render_overlay`` draws what ``--overlay`` saves per image, in the style of detectron2's and panopticapi's
pictures: every thing instance in its own colour (a jitter of its category colour, so overlapping instances of one
category stay apart), stuff in a saturated version of its category colour (COCO's and the synthetic set's stuff
colours are pale and vanish on a photo), segment outlines, a box with "name 0.97" per thing, stuff labels at an
interior point, and a legend of the classes present. Text scales with the picture. ``colorize_panoptic`` is the
plain colour map used for documentation pictures.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from runtime.errors import PansegError

VOID = 0
RGB = tuple[int, int, int]

_INSTANCE_SHIFT = 100.0  # RGB distance from the category colour to the colour of its second, third, ... instance
_INSTANCE_GAP = 80.0  # instances of one category are at least this far apart in RGB (when the tries allow it)
_INSTANCE_TRIES = 200
_STUFF_SATURATION = 0.6  # stuff is drawn at least this saturated...
_GREY = 0.08  # ...unless its category colour is a grey on purpose (pavement, house): then it stays grey
_STUFF_VALUE = (0.35, 0.9)  # and neither near-black nor near-white
_LABEL_GRID = 128  # interior points are searched on an id map at most this many pixels across
_FONT_DIVISOR = 40  # font pixels = sqrt(image area) / this: 7 px at 171x128, 14 at 640x480, 26 at 1333x800
_FONT_RANGE = (7, 64)
_LEGEND_ALPHA = 170  # legend panel: black at this opacity (0-255) under the swatches and names
_LEGEND_MAX_SHARE = 0.25  # no legend on a picture too small to hold it in a quarter of its area


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


def vivid_stuff_color(color: Iterable[int]) -> RGB:
    """A stuff colour that shows on a photo: hue kept, saturation raised to at least 0.6 (greys stay grey), and
    brightness kept between dark and white."""
    r, g, b = (int(c) / 255 for c in color)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if s >= _GREY:
        s = max(s, _STUFF_SATURATION)
    v = min(max(v, _STUFF_VALUE[0]), _STUFF_VALUE[1])
    return tuple(round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def instance_colors(base: Iterable[int], category_id: int, count: int) -> list[RGB]:
    """Colours of a category's first ``count`` instances: the category colour, then jitters of it.

    As panopticapi's IdGenerator, but with a fixed step (``_INSTANCE_SHIFT`` in a random direction) and a minimum
    gap between the instances, so each one is visibly its own; the random directions are seeded by (category,
    instance index), so instance k of a category has the same colour in every picture.
    """
    base_rgb = np.asarray(tuple(base), dtype=np.float64)
    colors: list[RGB] = [tuple(int(c) for c in base_rgb)]  # type: ignore[list-item]
    for index in range(1, count):
        rng = np.random.default_rng([int(category_id), index])
        best, best_gap = colors[0], -1.0
        for _ in range(_INSTANCE_TRIES):
            direction = rng.normal(size=3)
            candidate = np.clip(base_rgb + _INSTANCE_SHIFT * direction / np.linalg.norm(direction), 0, 255).round()
            gap = min(float(np.linalg.norm(candidate - np.asarray(c))) for c in colors)
            if gap > best_gap:
                best, best_gap = tuple(int(c) for c in candidate), gap  # type: ignore[assignment]
            if gap >= _INSTANCE_GAP:
                break
        colors.append(best)
    return colors


def segment_colors(
    segments_info: Iterable[Mapping[str, Any]],
    categories: Mapping[int, CategoryLike],
    distinct_instances: bool = True,
    vivid_stuff: bool = False,
) -> dict[int, RGB]:
    """Segment id -> colour: the category colour, except that with ``distinct_instances`` the n-th instance of a
    thing category gets :func:`instance_colors`' n-th colour, and with ``vivid_stuff`` stuff gets
    :func:`vivid_stuff_color`. Instances are counted in ``segments_info`` order."""
    segments = list(segments_info)
    counts: dict[int, int] = {}
    for seg in segments:
        cat = _category(categories, seg)
        if _is_thing(seg, cat):
            counts[int(seg["category_id"])] = counts.get(int(seg["category_id"]), 0) + 1
    palettes = {cid: instance_colors(categories[cid].color, cid, n if distinct_instances else 1)
                for cid, n in counts.items()}
    colors: dict[int, RGB] = {}
    seen: dict[int, int] = {}
    for seg in segments:
        cat = _category(categories, seg)
        cid = int(seg["category_id"])
        if _is_thing(seg, cat):
            index = seen.get(cid, 0) if distinct_instances else 0
            seen[cid] = seen.get(cid, 0) + 1
            colors[int(seg["id"])] = palettes[cid][index]
        else:
            base: RGB = tuple(int(c) for c in cat.color)  # type: ignore[assignment]
            colors[int(seg["id"])] = vivid_stuff_color(base) if vivid_stuff else base
    return colors


def legend_entries(segments_info: Iterable[Mapping[str, Any]], categories: Mapping[int, CategoryLike]
                   ) -> list[tuple[str, RGB]]:
    """(name, swatch colour) of each category present, things first, then stuff, each by category id. Things
    show their category colour (the first instance's), stuff the colour it is drawn in."""
    present: dict[int, bool] = {}
    for seg in segments_info:
        present[int(seg["category_id"])] = _is_thing(seg, _category(categories, seg))
    order = sorted(present, key=lambda cid: (not present[cid], cid))
    return [(categories[cid].name,
             tuple(int(c) for c in categories[cid].color) if present[cid]  # type: ignore[misc]
             else vivid_stuff_color(categories[cid].color)) for cid in order]


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
    vivid_stuff: bool = False,
) -> np.ndarray:
    """H x W x 3 uint8: every segment in its category colour, VOID (and ids without segments_info) black; with
    ``distinct_instances`` and ``vivid_stuff``, in exactly the colours of :func:`render_overlay`."""
    colors = segment_colors(segments_info, categories, distinct_instances, vivid_stuff)
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


def label_font_size(width: int, height: int) -> int:
    """Text height in pixels for a picture of this size: proportional to its diagonal scale, within readable bounds
    (a fixed size either covers a thumbnail or vanishes on a large photo)."""
    return min(max(round(math.sqrt(width * height) / _FONT_DIVISOR), _FONT_RANGE[0]), _FONT_RANGE[1])


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
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


Box = tuple[int, int, int, int]  # left, top, right, bottom (inclusive)


def _label_box(draw: ImageDraw.ImageDraw, font, text: str, xy: tuple[int, int], anchor: str,
               size: tuple[int, int]) -> Box:
    """Where a label's filled box goes: centred on ``xy`` or just above it, kept inside the picture."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, font_size(font) // 7)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = xy
    if anchor == "center":
        x, y = x - tw // 2, y - th // 2
    elif anchor == "above":
        y = y - th if y - th >= 0 else y
    x = min(max(x, 0), max(size[0] - tw, 0))
    y = min(max(y, 0), max(size[1] - th, 0))
    return x, y, x + tw - 1, y + th - 1


def font_size(font) -> int:
    return int(getattr(font, "size", 10))


def _draw_label(draw: ImageDraw.ImageDraw, font, text: str, box: Box, color: RGB) -> None:
    """Text on a filled box in the segment colour."""
    left, top, _, _ = draw.textbbox((0, 0), text, font=font)
    pad = max(1, font_size(font) // 7)
    draw.rectangle(box, fill=color)
    draw.text((box[0] + pad - left, box[1] + pad - top), text, fill=_text_color(color), font=font)


def _overlap(a: Box, b: Box) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    return max(w, 0) * max(h, 0)


def _legend_layout(draw: ImageDraw.ImageDraw, font, entries: list[tuple[str, RGB]], size: tuple[int, int],
                   things: np.ndarray, labels: list[Box]) -> tuple[Box, int, int]:
    """(panel box, row height, swatch size) in the corner where the legend hides the least of the things and the
    labels; ties go to top right, top left, bottom right, bottom left."""
    fs = font_size(font)
    pad, swatch = max(2, fs // 3), max(5, round(fs * 0.9))
    row = max(swatch, fs) + max(1, fs // 4)
    text_w = max(draw.textbbox((0, 0), name, font=font)[2] for name, _ in entries)
    pw, ph = 3 * pad + swatch + text_w, 2 * pad + row * len(entries) - max(1, fs // 4)
    width, height = size
    margin = max(2, fs // 3)
    corners = [(width - pw - margin, margin), (margin, margin), (width - pw - margin, height - ph - margin),
               (margin, height - ph - margin)]
    thing_sum = np.pad(things.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def hidden(box: Box) -> int:
        x0, y0 = max(box[0], 0), max(box[1], 0)
        x1, y1 = min(box[2], width - 1) + 1, min(box[3], height - 1) + 1
        covered = 0 if x1 <= x0 or y1 <= y0 else int(
            thing_sum[y1, x1] - thing_sum[y0, x1] - thing_sum[y1, x0] + thing_sum[y0, x0])
        return covered + 3 * sum(_overlap(box, label) for label in labels)  # a hidden label is worse than a tint

    boxes = [(max(x, 0), max(y, 0), max(x, 0) + pw - 1, max(y, 0) + ph - 1) for x, y in corners]
    best = min(range(len(boxes)), key=lambda i: (hidden(boxes[i]), i))
    return boxes[best], row, swatch


def _draw_legend(image: Image.Image, font, entries: list[tuple[str, RGB]], things: np.ndarray,
                 labels: list[Box]) -> Image.Image:
    """A translucent dark panel listing each class present: a swatch in its colour and its name (none if it would
    cover more than a quarter of the picture)."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    box, row, swatch = _legend_layout(draw, font, entries, image.size, things, labels)
    if (box[2] - box[0] + 1) * (box[3] - box[1] + 1) > _LEGEND_MAX_SHARE * image.width * image.height:
        return image
    draw.rectangle(box, fill=(0, 0, 0, _LEGEND_ALPHA))
    pad = max(2, font_size(font) // 3)
    for k, (name, color) in enumerate(entries):
        x, y = box[0] + pad, box[1] + pad + k * row
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=(*color, 255))
        top = draw.textbbox((0, 0), name, font=font)[1]
        text_h = draw.textbbox((0, 0), name, font=font)[3] - top
        draw.text((x + swatch + pad, y + (swatch - text_h) // 2 - top), name, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def render_overlay(
    image: Image.Image,
    id_map: np.ndarray,
    segments_info: list[Mapping[str, Any]],
    categories: Mapping[int, CategoryLike],
    alpha: float = 0.5,
    labels: bool = True,
    legend: bool = True,
) -> Image.Image:
    """The photo with each segment blended ``alpha`` toward its colour, outlines, thing boxes, labels and a legend.

    segments_info entries: id, category_id, isthing (else taken from the category), bbox [x, y, w, h] (else
    measured), optional score. VOID pixels and pixels of ids without an entry are left as in the photo (except
    under labels and the legend, which a corner with few things gets).
    """
    if not 0.0 <= alpha <= 1.0:
        raise PansegError(f"overlay alpha must be between 0 and 1, got {alpha}")
    ids = np.asarray(id_map)
    if ids.ndim != 2 or ids.shape != (image.height, image.width):
        raise PansegError(f"overlay: id map of shape {ids.shape} does not match the {image.width}x{image.height} image")
    photo = np.asarray(image.convert("RGB"))
    colors = segment_colors(segments_info, categories, distinct_instances=True, vivid_stuff=True)
    paint, covered = _paint(ids, colors)

    out = photo.copy()
    blend = photo[covered] * (1.0 - alpha) + paint[covered] * alpha
    out[covered] = np.rint(blend).astype(np.uint8)
    outline = _boundaries(ids) & covered
    out[outline] = paint[outline]

    result = Image.fromarray(out)
    draw = ImageDraw.Draw(result)
    height, width = ids.shape
    font = _font(label_font_size(width, height))
    line = max(1, round(math.sqrt(height * width) / 320))
    stride = max(1, math.ceil(max(height, width) / _LABEL_GRID))
    small = ids[::stride, ::stride]
    placed: list[tuple[str, tuple[int, int], RGB, str]] = []
    thing_ids: list[int] = []
    for seg in segments_info:
        seg_id = int(seg["id"])
        cat = _category(categories, seg)
        color = colors[seg_id]
        text = _label_text(cat.name, seg)
        if _is_thing(seg, cat):
            box = _bbox(seg, ids)
            if box is None:
                continue
            thing_ids.append(seg_id)
            x, y, w, h = box
            draw.rectangle((x, y, x + max(w, 1) - 1, y + max(h, 1) - 1), outline=color, width=line)
            placed.append((text, (x, y), color, "above"))
        elif labels:
            point = _label_point(ids, small, stride, seg_id)
            if point is not None:
                placed.append((text, point, color, "center"))
    label_boxes: list[Box] = []
    if labels:
        for text, xy, color, anchor in placed:  # after all boxes, so no box crosses a label
            label_boxes.append(_label_box(draw, font, text, xy, anchor, (width, height)))
            _draw_label(draw, font, text, label_boxes[-1], color)
    entries = legend_entries(segments_info, categories)
    if legend and entries:
        result = _draw_legend(result, font, entries, np.isin(ids, thing_ids), label_boxes)
    return result

"""`python -m train.prepare synthetic`: the built-in synthetic panoptic dataset, in detr's COCO layout.

Why synthetic: the whole toolchain (training, export, runtime, PQ) needs data that is free, tiny, and learnable on a
CPU in minutes. Things are shapes, stuff is textured background bands. By default every thing class has its own shape
AND its own hue band (a from-scratch DETR at 128 px learns colour-coded classes in ~10 CPU minutes but not shape-only
ones); ``--hard`` makes classes differ only by shape, with more, smaller, overlapping objects, crowds and VOID.

Consistency by construction: each object's mask is decoded by pycocotools from the very polygon written to the JSON,
the image is painted from those masks, and occluded objects are written as RLE of their visible part, so annotations,
panoptic PNGs and pixels agree exactly. Every image draws from its own RNG seeded by (seed, split, index): the output
is byte-identical for a seed and does not depend on how many images come before it.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from runtime.atomic import atomic_write_json, atomic_write_with
from runtime.categories import Category, categories_to_json
from runtime.errors import PansegError
from runtime.subcommands import add_deprecated, int_in_range, positive_int

SPLITS = ("train", "val")
JPEG_QUALITY = 95  # 4:4:4 chroma and high quality keep colours true up to the mask edge

# ---------------------------------------------------------------------------------------------------------------------
# Category table. Things first (ids 1..6), then stuff (7..11): detr's num_classes = max id + 1 = 12.
# Each thing class owns a shape and, in the default variant, a hue band of +-THING_HUE_JITTER around its hue.
# Stuff is kept at low saturation so that, by default, saturation alone separates things from background.


@dataclass(frozen=True)
class ThingClass:
    id: int
    name: str
    hue: float  # degrees: centre of the class's colour family


@dataclass(frozen=True)
class StuffClass:
    id: int
    name: str
    hsv_low: tuple[float, float, float]  # base colour range (hue degrees, saturation, value)
    hsv_high: tuple[float, float, float]
    position: str  # "top" (sky, wall) or "bottom" (grass, ground, water): where the band goes


THINGS = (
    ThingClass(1, "circle", 0.0),
    ThingClass(2, "triangle", 60.0),
    ThingClass(3, "square", 120.0),
    ThingClass(4, "star", 180.0),
    ThingClass(5, "ring", 240.0),
    ThingClass(6, "cross", 300.0),
)
STUFF = (
    StuffClass(7, "sky", (195, 0.12, 0.78), (225, 0.30, 0.95), "top"),
    StuffClass(8, "wall", (20, 0.05, 0.55), (45, 0.25, 0.75), "top"),
    StuffClass(9, "grass", (85, 0.30, 0.35), (120, 0.42, 0.50), "bottom"),
    StuffClass(10, "ground", (20, 0.30, 0.35), (38, 0.42, 0.55), "bottom"),
    StuffClass(11, "water", (190, 0.30, 0.30), (220, 0.42, 0.45), "bottom"),
)
THING_HUE_JITTER = 12.0  # degrees; neighbouring classes are 60 degrees apart
THING_SATURATION = (0.7, 1.0)
THING_VALUE = (0.75, 1.0)
THING_MIN_SHADE = 0.85  # things are shaded by a factor in [THING_MIN_SHADE, 1]
STUFF_MAX_SATURATION = 0.42


def _hsv_to_rgb(hue_deg: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def categories() -> list[Category]:
    """The panoptic category table (also written to DIR/categories.json)."""
    cats = [Category(t.id, t.name, True, _hsv_to_rgb(t.hue, 0.85, 0.9), "shape") for t in THINGS]
    for s in STUFF:
        mid = (np.asarray(s.hsv_low) + np.asarray(s.hsv_high)) / 2
        cats.append(Category(s.id, s.name, False, _hsv_to_rgb(*mid.tolist()), "background"))
    return cats


# ---------------------------------------------------------------------------------------------------------------------
# Variants


@dataclass(frozen=True)
class Variant:
    """Everything that differs between the default (learnable) and --hard datasets; lengths in pixels at 128 px."""

    objects: tuple[int, int]  # inclusive range of things per image
    radius: tuple[float, float]
    colour_coded: bool  # thing classes have their own hue band (else: any colour, shape is the only cue)
    cluster_prob: float  # chance that an object is placed next to an earlier one (more occlusion)
    inside: bool  # objects lie fully inside the image
    crowd_prob: float  # chance of one crowd (many tiny same-class objects annotated as one iscrowd=1 RLE)
    tiny_to_void: bool  # tiny visible fragments stay painted but unannotated (VOID) instead of being removed
    min_area: float = 40.0


DEFAULT = Variant(objects=(1, 4), radius=(10.0, 24.0), colour_coded=True, cluster_prob=0.0, inside=True,
                  crowd_prob=0.0, tiny_to_void=False)
HARD = Variant(objects=(3, 10), radius=(5.0, 16.0), colour_coded=False, cluster_prob=0.5, inside=False,
               crowd_prob=0.3, tiny_to_void=True)


# ---------------------------------------------------------------------------------------------------------------------
# Shapes: polygons (flat [x0, y0, x1, y1, ...] lists, as COCO stores them), rasterised by pycocotools itself.


def _regular(cx: float, cy: float, radii: Sequence[float], angle: float) -> np.ndarray:
    n = len(radii)
    t = angle + 2 * np.pi * np.arange(n) / n
    r = np.asarray(radii, dtype=np.float64)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (N x 2, x then y) of a shape of nominal radius ``r``; the ring is one keyhole polygon.

    pycocotools fills polygons with the even-odd rule, so the ring's slit (traversed once each way) cancels out and
    the hole stays open. A COCO list of several polygons would be their union, which cannot have a hole.
    """
    if shape == "circle":
        return _regular(cx, cy, [r] * 32, angle)
    if shape == "triangle":
        return _regular(cx, cy, [1.2 * r] * 3, angle)
    if shape == "square":
        return _regular(cx, cy, [r] * 4, angle)
    if shape == "star":
        return _regular(cx, cy, [r, 0.45 * r] * 5, angle)
    if shape == "cross":
        t = 0.35 * r  # half the arm width
        pts = np.array([(t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r),
                        (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t), (-t, -r)])
        c, s = np.cos(angle), np.sin(angle)
        return pts @ np.array([[c, s], [-s, c]]) + (cx, cy)
    if shape == "ring":
        a = np.linspace(0.0, 2 * np.pi, 33)  # closed: first and last points coincide, the slit is horizontal
        outer = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)
        inner = np.stack([cx + 0.55 * r * np.cos(a[::-1]), cy + 0.55 * r * np.sin(a[::-1])], axis=1)
        return np.concatenate([outer, inner])
    raise ValueError(f"unknown shape {shape!r}")


SHAPE_EXTENT = {"triangle": 1.2}  # farthest vertex / nominal radius, where it is not 1


def polygon_to_coco(vertices: np.ndarray, height: int, width: int) -> list[float]:
    """Clamp to the image and round to 0.01 px: the exact numbers that go into the JSON."""
    v = np.empty_like(vertices)
    v[:, 0] = np.clip(vertices[:, 0], 0.0, width)
    v[:, 1] = np.clip(vertices[:, 1], 0.0, height)
    return [round(float(c), 2) for c in v.ravel()]


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """What COCO's annToMask makes of a polygon annotation: pycocotools' rasterisation, union of the polygons."""
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def tight_bbox(mask: np.ndarray) -> list[int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


# ---------------------------------------------------------------------------------------------------------------------
# Textures (float32 H x W arrays or H x W x 3 images, 0..255)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell_y: float, cell_x: float) -> np.ndarray:
    """Unit-variance-ish value noise: a coarse Gaussian grid, bilinearly interpolated (blobs of ~cell pixels)."""
    gy, gx = int(height / cell_y) + 2, int(width / cell_x) + 2
    grid = rng.standard_normal((gy, gx)).astype(np.float32)
    y = np.arange(height, dtype=np.float32) / cell_y
    x = np.arange(width, dtype=np.float32) / cell_x
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _uniform_hsv(rng: np.random.Generator, low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    h, s, v = (float(rng.uniform(lo, hi)) for lo, hi in zip(low, high, strict=True))
    return np.array(_hsv_to_rgb(h, s, v), dtype=np.float32)


def stuff_texture(stuff: StuffClass, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A full-image texture for one stuff class: gradient (sky), bricks (wall), streaks (grass), blotches (ground),
    waves (water), plus 1.5% pixel noise. Only brightness varies: hue and saturation stay the base colour's."""
    base = _uniform_hsv(rng, stuff.hsv_low, stuff.hsv_high)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    if stuff.name == "sky":
        shade = 1.0 - float(rng.uniform(0.05, 0.2)) * y / height + 0.03 * smooth_noise(rng, height, width, 24, 32)
    elif stuff.name == "wall":
        period = float(rng.integers(6, 11))
        yy = y + rng.uniform(0, period)
        row = np.floor(yy / period)  # every other row of bricks is offset by half a brick
        brick_x = (x + rng.uniform(0, 2 * period) + row * period) % (2 * period)
        brick_y = np.broadcast_to(yy % period, (height, width))
        mortar = (brick_x < 1.0) | (brick_y < 1.0)
        shade = np.where(mortar, np.float32(0.75), np.float32(1.0)) + 0.04 * smooth_noise(rng, height, width, 4, 4)
    elif stuff.name == "grass":
        shade = 1.0 + 0.12 * smooth_noise(rng, height, width, 8, 1.5)
    elif stuff.name == "ground":
        shade = 1.0 + 0.1 * smooth_noise(rng, height, width, 6, 6) + 0.05 * smooth_noise(rng, height, width, 2, 2)
    elif stuff.name == "water":
        period, wobble = float(rng.uniform(5, 9)), float(rng.uniform(1, 3))
        phase = 2 * np.pi * (x / rng.uniform(20, 40))
        shade = 1.0 + 0.12 * np.sin(2 * np.pi * y / period + wobble * np.sin(phase))
    else:
        raise ValueError(f"no texture for stuff class {stuff.name!r}")
    shade = shade + np.float32(0.015) * rng.standard_normal((height, width), dtype=np.float32)
    return shade[..., None] * base


def thing_colour(thing: ThingClass, rng: np.random.Generator, variant: Variant) -> np.ndarray:
    if variant.colour_coded:
        hue = thing.hue + float(rng.uniform(-THING_HUE_JITTER, THING_HUE_JITTER))
        return np.array(_hsv_to_rgb(hue, rng.uniform(*THING_SATURATION), rng.uniform(*THING_VALUE)), np.float32)
    return np.array(_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.25, 1.0), rng.uniform(0.3, 1.0)), np.float32)


def paint_thing(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``mask`` with ``colour`` under a linear shading in a random direction and a little grey noise."""
    ys, xs = np.nonzero(mask)
    theta = rng.uniform(0, 2 * np.pi)
    t = xs * np.cos(theta) + ys * np.sin(theta)
    span = max(float(t.max() - t.min()), 1.0)
    shade = 1.0 - (1.0 - THING_MIN_SHADE) * (t - t.min()) / span
    noise = rng.normal(0.0, 2.0, size=ys.size)
    image[ys, xs] = colour[None, :] * shade[:, None] + noise[:, None]


# ---------------------------------------------------------------------------------------------------------------------
# One image


@dataclass
class _Layer:
    """One painted thing (or crowd): its full mask, and the polygons that rasterise to it (None for a crowd)."""

    thing: ThingClass
    mask: np.ndarray
    polygons: list[list[float]] | None
    colours: list[tuple[np.ndarray, np.ndarray]]  # (member mask, colour) in painting order


@dataclass
class Sample:
    image: np.ndarray  # H x W x 3 uint8
    annotations: list[dict[str, Any]]  # COCO detection annotations without id/image_id

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def _image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """Shorter side ``size``; the longer one up to 1.375x (landscape 3 times in 4) so that resizing is exercised."""
    long_side = int(round(size * rng.uniform(1.0, 1.375)))
    return (size, long_side) if rng.random() < 0.75 else (long_side, size)


def _stuff_layout(rng: np.random.Generator, height: int, width: int) -> list[tuple[StuffClass, np.ndarray]]:
    """2-3 disjoint regions covering the image: a top band (sky or wall) and one or two bottom regions, either
    stacked bands or side by side, with wavy tilted boundaries."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]

    def wave(centre: float, length: int, along: np.ndarray) -> np.ndarray:
        amp = rng.uniform(0.0, 0.06) * length
        period = rng.uniform(0.5, 1.5) * length
        tilt = rng.uniform(-0.15, 0.15)
        phase = rng.uniform(0, 2 * np.pi)
        return centre + amp * np.sin(2 * np.pi * along / period + phase) + tilt * (along - length / 2)

    top = [s for s in STUFF if s.position == "top"]
    bottom = [s for s in STUFF if s.position == "bottom"]
    top_class = top[int(rng.integers(len(top)))]
    order = rng.permutation(len(bottom))
    n_regions = int(rng.integers(2, 4))
    if n_regions == 2:
        horizon = wave(rng.uniform(0.35, 0.65) * height, width, x)
        below = y >= horizon
        return [(top_class, ~below), (bottom[order[0]], below)]
    if rng.random() < 0.5:  # three stacked bands
        b1 = wave(rng.uniform(0.25, 0.4) * height, width, x)
        b2 = np.maximum(wave(rng.uniform(0.6, 0.75) * height, width, x), b1 + 0.15 * height)
        m1, m2 = y >= b1, y >= b2
        return [(top_class, ~m1), (bottom[order[0]], m1 & ~m2), (bottom[order[1]], m2)]
    horizon = wave(rng.uniform(0.35, 0.6) * height, width, x)
    split = wave(rng.uniform(0.35, 0.65) * width, height, y)
    below, right = y >= horizon, x >= split
    return [(top_class, ~below), (bottom[order[0]], below & ~right), (bottom[order[1]], below & right)]


def _place_object(rng: np.random.Generator, variant: Variant, scale: float, height: int, width: int,
                  layers: list[_Layer]) -> tuple[ThingClass, float, float, float, float]:
    """Class, centre, radius and rotation of the next object."""
    thing = THINGS[int(rng.integers(len(THINGS)))]
    r = rng.uniform(*variant.radius) * scale
    if layers and rng.random() < variant.cluster_prob:
        ys, xs = np.nonzero(layers[int(rng.integers(len(layers)))].mask)
        k = int(rng.integers(ys.size))
        cx, cy = xs[k] + rng.normal(0, r), ys[k] + rng.normal(0, r)
    elif variant.inside:
        margin = SHAPE_EXTENT.get(thing.name, 1.0) * r + 1.0
        cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    return thing, float(cx), float(cy), float(r), float(rng.uniform(0, 2 * np.pi))


def _make_layers(rng: np.random.Generator, variant: Variant, scale: float, height: int,
                 width: int) -> list[_Layer]:
    """The things of one image in painting order (bottom first), with at most one crowd among them."""
    layers: list[_Layer] = []
    n = int(rng.integers(variant.objects[0], variant.objects[1] + 1))
    crowd_at = int(rng.integers(n + 1)) if rng.random() < variant.crowd_prob else -1
    for i in range(n + 1):
        if i == crowd_at:
            layers.append(_make_crowd(rng, variant, scale, height, width))
        if i == n:
            break
        thing, cx, cy, r, angle = _place_object(rng, variant, scale, height, width, layers)
        polygon = polygon_to_coco(shape_polygon(thing.name, cx, cy, r, angle), height, width)
        mask = polygons_to_mask([polygon], height, width)
        if mask.any():
            layers.append(_Layer(thing, mask, [polygon], [(mask, thing_colour(thing, rng, variant))]))
    return layers


def _make_crowd(rng: np.random.Generator, variant: Variant, scale: float, height: int, width: int) -> _Layer:
    """Many tiny objects of one class close together, annotated as a single crowd region (like COCO's crowds)."""
    thing = THINGS[int(rng.integers(len(THINGS)))]
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    union = np.zeros((height, width), dtype=bool)
    members = []
    for _ in range(int(rng.integers(6, 13))):
        px, py = cx + rng.normal(0, 8 * scale), cy + rng.normal(0, 6 * scale)
        polygon = polygon_to_coco(
            shape_polygon(thing.name, px, py, rng.uniform(2.5, 4.5) * scale, rng.uniform(0, 2 * np.pi)), height, width
        )
        mask = polygons_to_mask([polygon], height, width)
        colour = thing_colour(thing, rng, variant)
        if mask.any():
            union |= mask
            members.append((mask, colour))
    return _Layer(thing, union, None, members)


def _visible(layers: list[_Layer]) -> list[np.ndarray]:
    """Later layers occlude earlier ones: the visible part of each layer is its mask minus every later mask."""
    if not layers:
        return []
    covered = np.zeros_like(layers[0].mask)
    out = []
    for layer in reversed(layers):
        out.append(layer.mask & ~covered)
        covered |= layer.mask
    return out[::-1]


def generate_sample(seed: int, split: str, index: int, size: int = 128, hard: bool = False) -> Sample:
    """One image and its COCO annotations, a pure function of its arguments."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index, int(hard)])
    variant = HARD if hard else DEFAULT
    scale = size / 128.0
    min_area = max(4, int(round(variant.min_area * scale * scale)))
    height, width = _image_size(rng, size)
    regions = _stuff_layout(rng, height, width)
    layers = _make_layers(rng, variant, scale, height, width)

    # Drop the topmost layer whose visible part is tiny, until none is (removing a layer only uncovers the ones
    # below it). In --hard, tiny fragments stay painted but unannotated instead: they become VOID.
    visible = _visible(layers)
    if not variant.tiny_to_void:
        while True:
            tiny = [i for i, v in enumerate(visible) if v.sum() < min_area]
            if not tiny:
                break
            del layers[tiny[-1]]
            visible = _visible(layers)

    image = np.zeros((height, width, 3), dtype=np.float32)
    for stuff, region in regions:
        np.copyto(image, stuff_texture(stuff, rng, height, width), where=region[..., None])
    things_union = np.zeros((height, width), dtype=bool)
    for layer in layers:
        things_union |= layer.mask
        for member_mask, colour in layer.colours:
            paint_thing(image, member_mask, colour, rng)

    annotations = []
    for layer, vis in zip(layers, visible, strict=True):
        area = int(vis.sum())
        if area < min_area:
            continue
        crowd = layer.polygons is None
        unoccluded = not crowd and np.array_equal(vis, layer.mask)
        annotations.append({
            "category_id": layer.thing.id,
            "segmentation": layer.polygons if unoccluded else encode_rle(vis),
            "area": area,
            "bbox": tight_bbox(vis),
            "iscrowd": int(crowd),
        })
    for stuff, region in regions:
        vis = region & ~things_union
        area = int(vis.sum())
        if area == 0 or (variant.tiny_to_void and area < min_area):
            continue
        annotations.append({"category_id": stuff.id, "segmentation": encode_rle(vis), "area": area,
                            "bbox": tight_bbox(vis), "iscrowd": 0})
    return Sample(np.clip(np.rint(image), 0, 255).astype(np.uint8), annotations)


# ---------------------------------------------------------------------------------------------------------------------
# Dataset on disk


def image_file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"  # COCO's naming; detr finds the image from the panoptic PNG's name by .png -> .jpg


def encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def _fresh_dir(final: Path, tag: str) -> Path:
    """An empty hidden sibling of ``final`` to build it in (mkdir, not mkdtemp: it gets the umask's permissions)."""
    tmp = final.parent / f".{final.name}.{tag}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left over by a run that was killed
    tmp.mkdir(parents=True)
    return tmp


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace the directory ``final`` by the finished ``tmp``; the old one, if any, is removed afterwards."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old)


def write_split(out: Path, split: str, count: int, size: int, seed: int, hard: bool) -> Path:
    """Write ``{split}2017/*.jpg`` and ``annotations/instances_{split}2017.json``; return the JSON's path."""
    images, annotations = [], []
    folder = out / f"{split}2017"
    tmp = _fresh_dir(folder, "tmp")
    try:
        for index in tqdm(range(count), desc=f"synthetic {split}2017", unit="img"):
            sample = generate_sample(seed, split, index, size, hard)
            image_id = index + 1
            file_name = image_file_name(image_id)
            (tmp / file_name).write_bytes(encode_jpeg(sample.image))
            images.append({"id": image_id, "file_name": file_name, "height": sample.height, "width": sample.width})
            for ann in sample.annotations:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    instances = {
        "info": {"description": f"panseg synthetic {'hard ' if hard else ''}{split} (seed {seed}, size {size})"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories_to_json(categories()),
    }
    path = out / "annotations" / f"instances_{split}2017.json"
    atomic_write_json(path, instances)
    return path


def convert_split(out: Path, split: str, instances_json: Path, seed: int) -> None:
    """COCO panoptic version of a split, through the project's detection -> panoptic converter."""
    from train.prepare.detection2panoptic import convert_detection_to_panoptic

    folder = out / f"panoptic_{split}2017"
    tmp = _fresh_dir(folder, "tmp")
    try:
        convert_detection_to_panoptic(str(instances_json), str(out / "annotations" / f"panoptic_{split}2017.json"),
                                      str(tmp), str(out / "categories.json"), seed=seed, workers=1)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def generate_dataset(out: str | os.PathLike, train: int, val: int, size: int = 128, seed: int = 0,
                     hard: bool = False) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PansegError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PansegError(f"{out}: cannot create the dataset folder ({exc.strerror})") from exc
    atomic_write_json(out / "categories.json", categories_to_json(categories()), indent=1)
    for split, count in zip(SPLITS, (train, val), strict=True):
        instances_json = write_split(out, split, count, size, seed, hard)
        convert_split(out, split, instances_json, seed)


# ---------------------------------------------------------------------------------------------------------------------
# Preview picture (docs/synthetic_samples.png)


def colourise(id_map: np.ndarray, segments_info: list[dict[str, Any]], cats: dict[int, Category]) -> np.ndarray:
    """Category colours, each thing instance a little lighter or darker than the last, dark segment borders."""
    out = np.zeros(id_map.shape + (3,), dtype=np.float32)
    n_things = 0
    for seg in segments_info:
        cat = cats[seg["category_id"]]
        colour = np.array(cat.color, dtype=np.float32)
        if cat.isthing:
            colour = np.clip(colour * (1.15 - 0.15 * (n_things % 3)), 0, 255)
            n_things += 1
        out[id_map == seg["id"]] = colour
    border = np.zeros(id_map.shape, dtype=bool)
    border[1:] |= id_map[1:] != id_map[:-1]
    border[:, 1:] |= id_map[:, 1:] != id_map[:, :-1]
    out[border] *= 0.3
    return out.astype(np.uint8)


PREVIEW_GAP = 4  # pixels between an image and its segmentation
PREVIEW_MARGIN = 12  # pixels around and between the (image, segmentation) pairs


def render_samples(dataset: str | os.PathLike, out_png: str | os.PathLike, split: str = "val", count: int = 8,
                   zoom: int = 2, columns: int = 2) -> None:
    """A picture of the first ``count`` images of a split, each next to its colourised panoptic segmentation."""
    from runtime.categories import categories_from_json
    from runtime.panoptic_format import read_panoptic_png

    dataset = Path(dataset)
    data = json.loads((dataset / "annotations" / f"panoptic_{split}2017.json").read_text())
    cats = categories_from_json(data["categories"])
    images = {img["id"]: img for img in data["images"]}
    pairs = []
    for ann in sorted(data["annotations"], key=lambda a: a["image_id"])[:count]:
        with Image.open(dataset / f"{split}2017" / images[ann["image_id"]]["file_name"]) as im:
            img = np.asarray(im.convert("RGB"))
        id_map = read_panoptic_png(dataset / f"panoptic_{split}2017" / ann["file_name"])
        pairs.append((img, colourise(id_map, ann["segments_info"], cats)))
    if not pairs:
        raise PansegError(f"{dataset}: no {split} images to draw")
    cell_w = max(img.shape[1] for img, _ in pairs) * zoom * 2 + PREVIEW_GAP
    cell_h = max(img.shape[0] for img, _ in pairs) * zoom
    columns = min(columns, len(pairs))
    rows = -(-len(pairs) // columns)
    canvas = Image.new("RGB", (columns * (cell_w + PREVIEW_MARGIN) + PREVIEW_MARGIN,
                               rows * (cell_h + PREVIEW_MARGIN) + PREVIEW_MARGIN), (255, 255, 255))
    for k, (img, pan) in enumerate(pairs):
        x = PREVIEW_MARGIN + (k % columns) * (cell_w + PREVIEW_MARGIN)
        y = PREVIEW_MARGIN + (k // columns) * (cell_h + PREVIEW_MARGIN)
        h, w = img.shape[0] * zoom, img.shape[1] * zoom
        canvas.paste(Image.fromarray(img).resize((w, h), Image.NEAREST), (x, y))
        canvas.paste(Image.fromarray(pan).resize((w, h), Image.NEAREST), (x + w + PREVIEW_GAP, y))
    atomic_write_with(out_png, lambda f: canvas.save(f, format="PNG"))


# ---------------------------------------------------------------------------------------------------------------------
# Command line


MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 32, 4096  # --size: one backbone stride at least; a sane upper bound


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True,
                        help="dataset folder (detr's COCO layout; reused files are replaced)")
    add_deprecated(parser, "--out", "-o/--output")
    parser.add_argument("--train", type=positive_int, default=2000, help="training images (default: 2000)")
    parser.add_argument("--val", type=positive_int, default=100, help="validation images (default: 100)")
    parser.add_argument("--size", type=int_in_range(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE), default=128,
                        help="shorter image side in pixels (default: 128)")
    parser.add_argument("--seed", type=int_in_range(0, 2**63 - 1), default=0, help="same seed, same bytes (default: 0)")
    parser.add_argument("--hard", action="store_true",
                        help="classes differ only by shape; more, smaller, overlapping objects; crowds and VOID")
    parser.add_argument("--preview", metavar="PNG", help="also draw the first 8 val images and their segmentations")


def run(args: argparse.Namespace) -> int:
    try:
        generate_dataset(args.output, args.train, args.val, args.size, args.seed, args.hard)
        if args.preview:
            render_samples(args.output, args.preview, "val", count=8)
    except OSError as exc:  # disk full, permissions...: one line naming the file, as for any other bad input
        raise PansegError(f"{exc.filename or args.output}: {exc.strerror or exc}") from exc
    print(f"{args.output}: {args.train} train and {args.val} val images with COCO detection and panoptic annotations")
    return 0

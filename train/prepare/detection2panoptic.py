"""Convert a COCO detection dataset (instances JSON) to COCO panoptic format (PNGs + JSON).

Follows panopticapi's ``converters/detection2panoptic_coco_format.py``: every annotation becomes a segment that
keeps its own fields (area, bbox, iscrowd, ...) except ``segmentation`` and ``image_id``, with ``id`` replaced by
the segment id; masks are decoded like pycocotools' ``COCO.annToMask``; overlapping masks and unknown categories
are errors. Segment colours follow panopticapi's ``IdGenerator`` (stuff: the category colour; things: the
category colour if still free in the image, otherwise a random colour within +-30 of it). Unlike panopticapi:

* colours are drawn from a generator seeded with (seed, image id), so the output is reproducible and identical
  for any number of worker processes;
* no real segment gets id 0 (black), ids are unique within an image, taken colours are tracked per image;
* stuff annotations of one category in one image share one segment *and one* ``segments_info`` entry
  (area summed, bbox = union box, iscrowd 0), so the JSON and the PNG agree;
* annotations whose mask has no pixel are skipped with a warning (a segment must appear in the PNG);
* numpy scalars in an in-memory input do not crash, and every file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from runtime.atomic import atomic_write_json
from runtime.categories import Category, categories_from_json, categories_to_json, load_categories
from runtime.errors import PansegError
from runtime.panoptic_format import rgb2id, write_panoptic_png
from runtime.subcommands import add_deprecated, non_negative_int, positive_int

log = logging.getLogger(__name__)

BLACK = (0, 0, 0)
MAX_COLOR_DISTANCE = 30  # panopticapi's IdGenerator: random colours within +-30 of the category colour
_RANDOM_TRIES = 64  # after this many collisions, pick from the free colours of the whole neighbourhood

Color = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------------------------
# Segment colours


class SegmentColors:
    """panopticapi's IdGenerator for one image, made deterministic and unable to hand out black or a used colour.

    Stuff colours are reserved up front (as in panopticapi) so a thing never takes a stuff category's colour.
    """

    def __init__(self, categories: Mapping[int, Category], rng: np.random.Generator):
        self._categories = categories
        self._rng = rng
        self._reserved = {c.color for c in categories.values() if not c.isthing}
        self._used: set[Color] = set()

    def _taken(self, color: Color) -> bool:
        return color == BLACK or color in self._used or color in self._reserved

    def _take(self, color: Color) -> Color:
        self._used.add(color)
        return color

    def _random_near(self, base: Color, cat_id: int) -> Color:
        base_arr = np.asarray(base, dtype=np.int64)
        for _ in range(_RANDOM_TRIES):
            offset = self._rng.integers(-MAX_COLOR_DISTANCE, MAX_COLOR_DISTANCE + 1, size=3)
            color = tuple(int(v) for v in np.clip(base_arr + offset, 0, 255))
            if not self._taken(color):
                return self._take(color)
        # Crowded neighbourhood: choose uniformly among the colours still free (slow, but only when needed).
        axes = [range(max(0, b - MAX_COLOR_DISTANCE), min(255, b + MAX_COLOR_DISTANCE) + 1) for b in base]
        free = [(r, g, b) for r in axes[0] for g in axes[1] for b in axes[2] if not self._taken((r, g, b))]
        if not free:
            raise PansegError(f"no free segment colour left near {list(base)} for category {cat_id}")
        return self._take(free[int(self._rng.integers(len(free)))])

    def next_color(self, cat_id: int) -> Color:
        """The colour of a new segment of category ``cat_id`` (call once per stuff category per image)."""
        category = self._categories[cat_id]
        base = category.color
        if category.isthing:
            free = not self._taken(base)
        else:  # its own colour is reserved for it; it is free unless black or already given to another segment
            free = base != BLACK and base not in self._used
        return self._take(base) if free else self._random_near(base, cat_id)


def image_rng(seed: int, image_id: int) -> np.random.Generator:
    """A generator that depends only on (seed, image id): colours do not depend on order or worker count."""
    return np.random.default_rng([seed, abs(image_id), int(image_id < 0)])


# ----------------------------------------------------------------------------------------------------------------
# Masks


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> H x W bool mask, like ``annToMask``.

    Raises ValueError on a malformed segmentation. Polygon parts with fewer than three points have no area and
    are ignored (pycocotools would misread a two-point polygon as a box and crash).
    """
    if isinstance(segm, list):
        parts = []
        for part in segm:
            if not isinstance(part, list) or len(part) % 2:
                raise ValueError("a polygon must be a list of x, y coordinates")
            if len(part) >= 6:
                parts.append([float(v) for v in part])
        if not parts:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = [int(v) for v in segm["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image size [{height}, {width}]")
        if isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects({"size": size, "counts": segm["counts"]}, height, width)
        elif isinstance(segm["counts"], str | bytes):
            rle = {"size": size, "counts": segm["counts"]}
        else:
            raise ValueError("RLE counts must be a list or a string")
    else:
        raise ValueError("expected a list of polygons or an RLE dict with 'counts' and 'size'")
    try:
        mask = mask_utils.decode(rle)
    except Exception as exc:  # pycocotools raises bare Exceptions/ValueErrors on corrupt RLE
        raise ValueError(f"cannot decode RLE ({exc})") from exc
    return mask.astype(bool, copy=False)


def mask_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def union_bbox(boxes: Sequence[Sequence[float]]) -> list[float]:
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


# ----------------------------------------------------------------------------------------------------------------
# One image


@dataclass(frozen=True)
class ImageJob:
    image: dict[str, Any]
    annotations: list[dict[str, Any]]
    png_name: str


@dataclass(frozen=True)
class JobContext:
    source: str
    categories: dict[int, Category]
    segmentations_folder: str
    seed: int


def convert_image(job: ImageJob, ctx: JobContext) -> tuple[dict[str, Any], int]:
    """Write one image's panoptic PNG; return its panoptic record and the number of empty annotations skipped."""
    image = job.image
    image_id, height, width = image["id"], image["height"], image["width"]
    where = f"{ctx.source}: image {image_id} ({image.get('file_name')})"
    colors = SegmentColors(ctx.categories, image_rng(ctx.seed, image_id))
    id_map = np.zeros((height, width), dtype=np.uint32)
    covered = np.zeros((height, width), dtype=bool)
    overlap = np.zeros((height, width), dtype=bool)
    segments: list[dict[str, Any]] = []
    stuff_group: dict[int, list[dict[str, Any]]] = {}  # stuff category -> its annotations' entries
    skipped = 0
    for ann in job.annotations:
        try:
            mask = decode_segmentation(ann["segmentation"], height, width)
        except (ValueError, TypeError) as exc:
            raise PansegError(f"{where}: annotation {ann.get('id')}: bad segmentation: {exc}") from exc
        if not mask.any():
            skipped += 1
            continue
        overlap |= covered & mask
        covered |= mask
        entry = {k: v for k, v in ann.items() if k not in ("segmentation", "image_id")}
        entry.setdefault("area", int(mask.sum()))
        entry.setdefault("bbox", mask_bbox(mask))
        entry.setdefault("iscrowd", 0)
        cat_id = ann["category_id"]
        if not ctx.categories[cat_id].isthing and cat_id in stuff_group:
            stuff_group[cat_id].append(entry)
            segment_id = stuff_group[cat_id][0]["id"]
        else:
            segment_id = rgb2id(colors.next_color(cat_id))
            entry["id"] = segment_id
            segments.append(entry)
            if not ctx.categories[cat_id].isthing:
                stuff_group[cat_id] = [entry]
        id_map[mask] = segment_id
    n_overlap = int(overlap.sum())
    if n_overlap:
        raise PansegError(f"{ctx.source}: segments of image {image_id} ({image.get('file_name')}) "
                          f"overlap at {n_overlap} pixels")
    for entries in stuff_group.values():
        if len(entries) > 1:  # the first entry is the one in `segments`; it absorbs the others
            first = entries[0]
            first["area"] = sum(e["area"] for e in entries)
            first["bbox"] = union_bbox([e["bbox"] for e in entries])
            first["iscrowd"] = 0
    write_panoptic_png(Path(ctx.segmentations_folder) / job.png_name, id_map)
    return {"image_id": image_id, "file_name": job.png_name, "segments_info": segments}, skipped


_worker_ctx: JobContext | None = None


def _init_worker(ctx: JobContext) -> None:
    global _worker_ctx
    _worker_ctx = ctx


def _convert_in_worker(job: ImageJob) -> tuple[dict[str, Any], int]:
    assert _worker_ctx is not None
    return convert_image(job, _worker_ctx)


# ----------------------------------------------------------------------------------------------------------------
# Dataset


def _plain(obj: Any) -> Any:
    if isinstance(obj, bytes):  # pycocotools.mask.encode returns compressed counts as bytes
        return obj.decode("ascii")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _load_json(source: str | os.PathLike | Mapping | list, what: str) -> tuple[Any, str]:
    """A path is read; an in-memory object is copied to plain Python types (numpy scalars, bytes counts)."""
    if isinstance(source, Mapping | list):
        try:
            return json.loads(json.dumps(source, default=_plain)), what
        except (TypeError, ValueError) as exc:
            raise PansegError(f"{what}: not convertible to JSON ({exc})") from exc
    path = Path(source)
    try:
        return json.loads(path.read_text()), str(path)
    except FileNotFoundError as exc:
        raise PansegError(f"{path}: no such file") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PansegError(f"{path}: not a readable JSON file ({exc})") from exc


def _load_categories(categories_json: str | os.PathLike | list | Mapping) -> tuple[dict[int, Category], str]:
    if isinstance(categories_json, str | os.PathLike):
        return load_categories(categories_json), str(categories_json)
    data, source = _load_json(categories_json, "categories")
    if isinstance(data, dict):
        data = data.get("categories")
    if not isinstance(data, list):
        raise PansegError(f"{source}: expected a list of categories or a dict with 'categories'")
    return categories_from_json(data, source), source


def png_name_for(file_name: str) -> str:
    """panopticapi's rule: the image file name up to its first dot, plus '.png'."""
    return file_name.split(".")[0] + ".png"


def _check_png_name(png_name: str, image: Mapping[str, Any], source: str) -> None:
    parts = PurePosixPath(png_name.replace("\\", "/")).parts
    if png_name == ".png" or png_name.startswith(("/", "\\")) or ".." in parts:
        raise PansegError(
            f"{source}: image {image['id']} has file_name {image['file_name']!r}, "
            f"which gives the unusable PNG name {png_name!r}"
        )


def plan_jobs(
    detection: Any, categories: Mapping[int, Category], source: str, categories_source: str
) -> list[ImageJob]:
    """Check the detection dataset's structure and group its annotations by image, in the input's order."""
    if not isinstance(detection, dict):
        raise PansegError(f"{source}: expected a JSON object with 'images' and 'annotations'")
    images, annotations = detection.get("images"), detection.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise PansegError(f"{source}: expected 'images' and 'annotations' lists")
    by_image: dict[int, list[dict[str, Any]]] = {}
    png_owner: dict[str, Any] = {}
    order: list[tuple[dict[str, Any], str]] = []
    for image in images:
        if not isinstance(image, dict) or not all(k in image for k in ("id", "file_name", "height", "width")):
            raise PansegError(f"{source}: an image entry lacks 'id', 'file_name', 'height' or 'width'")
        image_id = image["id"]
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise PansegError(f"{source}: image id {image_id!r} is not an integer")
        if image_id in by_image:
            raise PansegError(f"{source}: duplicate image id {image_id}")
        h, w = image["height"], image["width"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
            raise PansegError(f"{source}: image {image_id} has height {h!r} and width {w!r}, expected positive ints")
        png_name = png_name_for(str(image["file_name"]))
        _check_png_name(png_name, image, source)
        if png_name in png_owner:
            raise PansegError(
                f"{source}: images {png_owner[png_name]} and {image_id} would both be written to {png_name}"
            )
        png_owner[png_name] = image_id
        by_image[image_id] = []
        order.append((image, png_name))
    for ann in annotations:
        if not isinstance(ann, dict) or not all(k in ann for k in ("image_id", "category_id", "segmentation")):
            raise PansegError(f"{source}: an annotation lacks 'image_id', 'category_id' or 'segmentation'")
        if ann["image_id"] not in by_image:
            raise PansegError(f"{source}: annotation {ann.get('id')} refers to image {ann['image_id']}, "
                              "which is not in 'images'")
        if ann["category_id"] not in categories:
            raise PansegError(f"{source}: annotation {ann.get('id')} of image {ann['image_id']} has category_id "
                              f"{ann['category_id']}, which is not in {categories_source}")
        by_image[ann["image_id"]].append(ann)
    return [ImageJob(image, by_image[image["id"]], png_name) for image, png_name in order]


def _run_jobs(jobs: list[ImageJob], ctx: JobContext, workers: int) -> Iterator[tuple[dict[str, Any], int]]:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield convert_image(job, ctx)
        return
    chunksize = max(1, min(64, len(jobs) // (4 * workers)))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                               initializer=_init_worker, initargs=(ctx,))
    try:
        yield from pool.map(_convert_in_worker, jobs, chunksize=chunksize)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def convert_detection_to_panoptic(
    input_json: str | os.PathLike | Mapping[str, Any],
    output_json: str | os.PathLike,
    segmentations_folder: str | os.PathLike,
    categories_json: str | os.PathLike | list[Mapping[str, Any]],
    seed: int = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Convert a COCO detection dataset (a path, or the loaded dict) to panoptic; return the panoptic dict.

    PNGs go to ``segmentations_folder``; the JSON is written last, so it exists only if every image converted.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise PansegError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(workers, int | np.integer) or workers < 1:
        raise PansegError(f"workers must be a positive integer, got {workers!r}")
    categories, categories_source = _load_categories(categories_json)
    detection, source = _load_json(input_json, "detection dataset")
    jobs = plan_jobs(detection, categories, source, categories_source)
    ctx = JobContext(source, categories, str(segmentations_folder), int(seed))
    Path(segmentations_folder).mkdir(parents=True, exist_ok=True)

    records: list[dict[str, Any]] = []
    skipped = 0
    with tqdm(total=len(jobs), desc="detection2panoptic", unit="img", disable=None) as bar:
        for record, n_skipped in _run_jobs(jobs, ctx, int(workers)):
            records.append(record)
            skipped += n_skipped
            bar.update()
    if skipped:
        log.warning("%s: skipped %d annotations whose mask has no pixel", source, skipped)

    panoptic: dict[str, Any] = {k: detection[k] for k in ("info", "licenses") if k in detection}
    panoptic["images"] = detection["images"]
    panoptic["annotations"] = records
    panoptic["categories"] = categories_to_json(categories)
    atomic_write_json(output_json, panoptic)
    return panoptic


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-json", required=True, help="COCO detection JSON (instances)")
    parser.add_argument("-o", "--output", required=True, metavar="PANOPTIC_JSON", help="COCO panoptic JSON to write")
    add_deprecated(parser, "--output-json", "-o/--output")
    parser.add_argument("--segmentations-folder", default=None,
                        help="folder for the panoptic PNGs (default: the output JSON's path without .json)")
    parser.add_argument("--categories-json", required=True,
                        help="panoptic categories (id, name, isthing, color): a list or a dict with 'categories'")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed for the segment colours")
    parser.add_argument("--workers", type=positive_int, default=1, help="worker processes (output is the same)")


def run(args: argparse.Namespace) -> int:
    folder = args.segmentations_folder
    if folder is None:
        folder = str(Path(args.output).with_suffix(""))
    panoptic = convert_detection_to_panoptic(
        args.input_json, args.output, folder, args.categories_json, seed=args.seed, workers=args.workers
    )
    n_segments = sum(len(a["segments_info"]) for a in panoptic["annotations"])
    shown = f"{Path(folder)}{os.sep}"  # one separator whether or not the argument ended with one
    print(f"wrote {len(panoptic['annotations'])} images, {n_segments} segments: {args.output}, {shown}")
    return 0

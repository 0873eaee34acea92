"""Contact sheets of a ``panseg-rt infer`` output folder: a few images per page, each as a row of three pictures,
the image | its panoptic segments in colour | the overlay with labels and a legend of class names.

Looking through hundreds of single overlays is slow; a page of rows with the raw segmentation next to the photo shows
at a glance what a model gets wrong. Everything comes from the folder itself (predictions.json for the order and the
categories, records/ for each image's input file, panoptic/ for the id maps), so sheets can be made long after the
run, with or without ``--overlay``. The colours are the overlay's (runtime.overlay), so its legend holds for both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from runtime.atomic import atomic_write_with
from runtime.categories import Category, categories_from_json
from runtime.errors import PansegError
from runtime.outputs import PANOPTIC_DIR, PREDICTIONS_FILE, RECORDS_DIR
from runtime.overlay import _font, colorize_panoptic, render_overlay
from runtime.panoptic_format import read_panoptic_png
from runtime.preprocess import load_image

COLUMNS = ("image", "segments", "overlay")
DEFAULT_ROWS = 4
DEFAULT_CELL = (480, 360)  # width, height of each picture's box; pictures keep their aspect ratio inside it
GAP = 8  # pixels between boxes and around the page
CAPTION = 18  # height of the file-name strip above each row
BACKGROUND = (32, 32, 32)
CAPTION_COLOR = (230, 230, 230)
PAGE_NAME = "sheet_{:03d}.png"


@dataclass(frozen=True)
class Result:
    """One finished image of an infer folder."""

    image_path: Path
    png_path: Path
    segments_info: list[dict[str, Any]]
    apply_exif: bool

    @property
    def name(self) -> str:
        return self.image_path.name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PansegError(f"{path}: not found (is this a panseg-rt infer output folder?)") from None
    except (OSError, ValueError) as exc:
        raise PansegError(f"{path}: not readable JSON ({exc})") from None


def load_results(folder: str | os.PathLike) -> tuple[dict[int, Category], list[Result]]:
    """The categories and the finished images of an infer output folder, in predictions.json's order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PansegError(f"{folder}: no such folder (give the --output folder of panseg-rt infer)")
    predictions_path = folder / PREDICTIONS_FILE
    predictions = _read_json(predictions_path)
    if not isinstance(predictions, dict) or not isinstance(predictions.get("annotations"), list):
        raise PansegError(f"{predictions_path}: expected {{'annotations': [...], 'categories': [...]}}")
    categories = categories_from_json(predictions.get("categories") or [], str(predictions_path))
    results = []
    for annotation in predictions["annotations"]:
        file_name = str(annotation.get("file_name", ""))
        stem = file_name[: -len(".png")] if file_name.endswith(".png") else file_name
        record_path = folder / RECORDS_DIR / f"{stem}.json"
        record = _read_json(record_path)
        if not isinstance(record, dict) or "input" not in record:
            raise PansegError(f"{record_path}: no 'input' image path")
        settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
        results.append(Result(Path(record["input"]), folder / PANOPTIC_DIR / file_name,
                              list(annotation.get("segments_info") or []), bool(settings.get("exif", True))))
    return categories, results


def fitted_size(width: int, height: int, cell: tuple[int, int]) -> tuple[int, int]:
    """The largest size of this aspect ratio that fits the cell."""
    scale = min(cell[0] / width, cell[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def centred(picture: Image.Image, cell: tuple[int, int]) -> Image.Image:
    box = Image.new("RGB", cell, BACKGROUND)
    box.paste(picture, ((cell[0] - picture.width) // 2, (cell[1] - picture.height) // 2))
    return box


def row_pictures(result: Result, categories: Mapping[int, Category], cell: tuple[int, int]
                 ) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(image, segments in the overlay's colours, overlay), each at the size it is shown: the overlay is drawn at
    that size (id map resized by nearest neighbour, boxes measured on it) so labels and legend stay legible."""
    image = load_image(result.image_path, apply_exif=result.apply_exif)
    if not result.png_path.is_file():
        raise PansegError(f"{result.png_path}: panoptic PNG missing")
    id_map = read_panoptic_png(result.png_path)
    if id_map.shape != (image.height, image.width):
        raise PansegError(f"{result.png_path}: PNG is {id_map.shape[1]}x{id_map.shape[0]}, its image "
                          f"{result.image_path} is {image.width}x{image.height}")
    size = fitted_size(image.width, image.height, cell)
    image = image.resize(size, Image.Resampling.LANCZOS)
    rows = (np.arange(size[1]) * id_map.shape[0]) // size[1]  # nearest neighbour, exact for integer ids
    cols = (np.arange(size[0]) * id_map.shape[1]) // size[0]
    id_map = id_map[rows[:, None], cols[None, :]]
    segments_info = [{k: v for k, v in seg.items() if k != "bbox"} for seg in result.segments_info]
    segments = Image.fromarray(colorize_panoptic(id_map, segments_info, categories, distinct_instances=True,
                                                 vivid_stuff=True))
    return image, segments, render_overlay(image, id_map, segments_info, categories)


def page_size(rows: int, cell: tuple[int, int]) -> tuple[int, int]:
    """Width and height of a page of ``rows`` rows."""
    return (len(COLUMNS) * (cell[0] + GAP) + GAP, rows * (CAPTION + cell[1] + GAP) + GAP)


def cell_origin(row: int, column: int, cell: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of a picture's box on its page."""
    return (GAP + column * (cell[0] + GAP), GAP + row * (CAPTION + cell[1] + GAP) + CAPTION)


def render_page(rows: Sequence[Result], categories: Mapping[int, Category],
                cell: tuple[int, int] = DEFAULT_CELL) -> Image.Image:
    page = Image.new("RGB", page_size(len(rows), cell), BACKGROUND)
    draw = ImageDraw.Draw(page)
    font = _font(CAPTION - 6)
    for r, result in enumerate(rows):
        for c, picture in enumerate(row_pictures(result, categories, cell)):
            page.paste(centred(picture, cell), cell_origin(r, c, cell))
        x, y = cell_origin(r, 0, cell)
        draw.text((x, y - CAPTION + 2), result.name, fill=CAPTION_COLOR, font=font)
    return page


def pages(results: Sequence[Result], rows_per_page: int) -> Iterator[Sequence[Result]]:
    for start in range(0, len(results), rows_per_page):
        yield results[start:start + rows_per_page]


def write_contact_sheets(folder: str | os.PathLike, out: str | os.PathLike, rows_per_page: int = DEFAULT_ROWS,
                         cell: tuple[int, int] = DEFAULT_CELL) -> list[Path]:
    """One PNG per page of ``rows_per_page`` images (sheet_001.png, ...) in ``out``; returns their paths."""
    if rows_per_page < 1 or min(cell) < 1:
        raise PansegError(f"contact sheet: rows per page ({rows_per_page}) and cell size {cell} must be positive")
    categories, results = load_results(folder)
    if not results:
        raise PansegError(f"{Path(folder) / PREDICTIONS_FILE}: no finished images to show")
    out = Path(out)
    written = []
    for number, rows in enumerate(pages(results, rows_per_page), start=1):
        page = render_page(rows, categories, cell)
        path = out / PAGE_NAME.format(number)
        atomic_write_with(path, lambda f, page=page: page.save(f, format="PNG"))
        written.append(path)
    return written

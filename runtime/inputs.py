"""Input discovery for ``panseg-rt infer``: which files to run, what each is called in the output, and its size.

Why separate: finding and naming inputs (files, folders, globs, a COCO JSON's image list) and reading their sizes from
the file headers happens before any model is loaded, and a mistake here (a missing file, two inputs that would write
the same PNG) should stop the run before the engine costs anything.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from runtime.contract import IMAGE_EXTENSIONS
from runtime.errors import PansegError
from runtime.jsonfile import read_json
from runtime.outputs import ImageJob, check_output_name
from runtime.preprocess import exif_orientation, load_image, oriented_size

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Failure:
    """An image that could not be processed: the file and a one-line reason."""

    path: str
    message: str

    def __str__(self) -> str:
        return self.message if self.message.startswith(self.path) else f"{self.path}: {self.message}"


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Input files in order, without duplicates.

    A file is taken whatever its extension (asking for it means it); a folder gives its image files (by extension,
    not recursive, hidden files left out, sorted); a glob pattern (``*``, ``?``, ``[``; ``**`` recurses) gives the
    image files it matches, sorted. A missing file or a pattern without matches is an error.
    """
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found.extend(_folder_images(path))
        elif path.exists():
            found.append(path)
        elif _GLOB_CHARS & set(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
            for folder in (m for m in matches if m.is_dir()):
                files.extend(_folder_images(folder))
            if not files:
                raise PansegError(f"{text}: no image file matches this pattern")
            found.extend(files)
        else:
            raise PansegError(f"{text}: no such file or folder")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    if not unique:
        raise PansegError(f"no image files in {', '.join(os.fspath(i) for i in inputs)} "
                          f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return list(unique.values())


def jobs_for_files(paths: Sequence[Path]) -> list[ImageJob]:
    """Without a dataset: image_id is the file stem, the PNG is ``<stem>.png``."""
    return [ImageJob(p, p.stem, f"{p.stem}.png") for p in paths]


def jobs_for_coco(paths: Sequence[Path], coco_json: str | os.PathLike) -> tuple[list[ImageJob], list[Failure]]:
    """Match input files to a COCO (panoptic) JSON's images by file name; ids and PNG names follow the dataset.

    The PNG name is the dataset's panoptic annotation ``file_name`` for that image if the JSON has one, else the
    COCO panoptic naming: the image's name up to its first dot + ``.png``. Inputs the dataset does not list are
    failures.
    """
    source = os.fspath(coco_json)
    data = read_json(coco_json)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise PansegError(f"{source}: expected a COCO JSON object with an 'images' list")
    by_name: dict[str, dict[str, Any]] = {}
    for image in images:
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise PansegError(f"{source}: an entry of 'images' lacks 'id' or 'file_name'")
        name = Path(image["file_name"]).name
        if name in by_name:
            raise PansegError(f"{source}: two images are named {name}; inputs are matched by file name")
        by_name[name] = image
    png_names = {ann["image_id"]: ann["file_name"] for ann in data.get("annotations", [])
                 if isinstance(ann, dict) and isinstance(ann.get("file_name"), str) and "image_id" in ann
                 and str(ann["file_name"]).endswith(".png")}
    jobs, failures = [], []
    for path in paths:
        image = by_name.get(path.name)
        if image is None:
            failures.append(Failure(str(path), f"{path}: not in {source} (inputs are matched by file name)"))
            continue
        png = png_names.get(image["id"], Path(image["file_name"]).name.split(".")[0] + ".png")
        jobs.append(ImageJob(path, image["id"], check_output_name(png, source)))
    return jobs, failures


def check_unique_outputs(jobs: Sequence[ImageJob]) -> None:
    """Two inputs that would write the same PNG (same stem in different folders, same dataset image) are an error."""
    seen: dict[str, Path] = {}
    for job in jobs:
        other = seen.setdefault(job.file_name, job.path)
        if other != job.path:
            raise PansegError(f"{other} and {job.path} would both be written as {job.file_name}; "
                              "rename one or run them into different output folders")



def probe_size(path: Path, apply_exif: bool = True) -> tuple[int, int]:
    """(height, width) of an image as load_image will return it, from the header alone (no pixel decoding)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = exif_orientation(image) if apply_exif else 1
    except Exception:  # noqa: BLE001 - Pillow raises many types; load_image names the problem in one line
        load_image(path, apply_exif=apply_exif)  # raises the PansegError that says what is wrong
        raise PansegError(f"{path}: unreadable image header") from None
    return oriented_size(height, width, orientation)

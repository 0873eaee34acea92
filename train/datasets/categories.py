"""The dataset's own categories (any ids, names, isthing), read once from the annotation files and checked.

detr's convention is kept: a category's id *is* its class index, so the model has ``max id + 1`` classes whatever
the ids are (COCO's sparse 1..90 and stuff up to 200, or 7, 42 and 1000). The training checkpoint stores these
category dicts, the export copies them into the model's metadata, and the runtime names and colours segments with
them. Train and val must list the same categories, and every annotation must use one of them: a mismatch would
otherwise show up only as a wrong PQ, or as an index error deep inside the loss.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runtime.categories import categories_from_json
from runtime.errors import PansegError
from runtime.jsonfile import read_json

ANNOTATION_NAMES = {"coco": "instances_{}2017.json", "coco_panoptic": "panoptic_{}2017.json"}


def annotation_file(root: str | os.PathLike, dataset_file: str, image_set: str) -> Path:
    """detr's layout: ROOT/annotations/instances_train2017.json (coco) or panoptic_train2017.json (coco_panoptic)."""
    return Path(root) / "annotations" / ANNOTATION_NAMES[dataset_file].format(image_set)


def _used_ids(data: Mapping[str, Any], dataset_file: str) -> Iterable[int]:
    for ann in data.get("annotations") or []:
        if dataset_file == "coco_panoptic":
            yield from (seg.get("category_id") for seg in ann.get("segments_info") or [])
        else:
            yield ann.get("category_id")


def read_categories(path: Path, dataset_file: str) -> list[dict[str, Any]]:
    """The 'categories' list of an annotation file, checked (ids, names, isthing, no duplicates) and covering every
    category id its annotations use."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list) or not data["categories"]:
        raise PansegError(f"{path}: no 'categories' list (a COCO annotation file lists its categories)")
    table = categories_from_json(data["categories"], source=str(path))
    unknown = sorted({i for i in _used_ids(data, dataset_file) if i not in table}, key=str)
    if unknown:
        raise PansegError(f"{path}: annotations use category ids {unknown[:5]} that its 'categories' list lacks")
    return [dict(entry) for entry in data["categories"]]


def _describe(entry: Mapping[str, Any]) -> str:
    return f"{entry['id']} {entry.get('name')!r} isthing={int(entry.get('isthing', 1))}"


def check_same_categories(train: list[dict[str, Any]], val: list[dict[str, Any]], train_path: Path,
                          val_path: Path) -> None:
    """Train and val must agree on every category's id, name and isthing (the model learns one table)."""
    key = {str(train_path): {c["id"]: _describe(c) for c in train}, str(val_path): {c["id"]: _describe(c) for c in val}}
    a, b = key.values()
    if a == b:
        return
    only_train = [a[i] for i in sorted(a) if i not in b]
    only_val = [b[i] for i in sorted(b) if i not in a]
    differ = [f"{a[i]} vs {b[i]}" for i in sorted(a) if i in b and a[i] != b[i]]
    problems = [f"{what}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
                for what, items in (("only in train", only_train), ("only in val", only_val),
                                    ("differ (train vs val)", differ)) if items]
    raise PansegError(f"{train_path} and {val_path}: the categories disagree: {'; '.join(problems)}")


def num_classes_for(categories: list[dict[str, Any]], requested: int | None, source: Path) -> int:
    """detr's rule, max id + 1, unless --num_classes asks for more; fewer would leave ids without a class."""
    needed = max(int(c["id"]) for c in categories) + 1
    if min(int(c["id"]) for c in categories) < 0:
        raise PansegError(f"{source}: category ids must be >= 0 (the id is the model's class index)")
    if requested is not None and requested < needed:
        raise PansegError(f"--num_classes {requested} is too small for {source}: its largest category id is "
                          f"{needed - 1}, so the model needs at least {needed} classes")
    return requested if requested is not None else needed

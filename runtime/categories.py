"""Category tables (id, name, isthing, color), as COCO panoptic stores them.

A user's own categories often come from a COCO *detection* file, which has no colours: such a category gets a colour
from its id (:func:`default_color`), the same in every tool that reads the table, instead of black for all, which
made every class look alike in overlays and legends.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import PanopticFormatError
from runtime.jsonfile import read_json


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] = (0, 0, 0)
    supercategory: str = field(default="")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "supercategory": self.supercategory,
            "isthing": int(self.isthing),
            "color": list(self.color),
        }


_GOLDEN = 0.618033988749895  # hue steps of the golden ratio keep consecutive ids far apart on the colour wheel


def default_color(category_id: int) -> tuple[int, int, int]:
    """A vivid colour for a category that has none, a pure function of its id."""
    r, g, b = colorsys.hsv_to_rgb((category_id * _GOLDEN) % 1.0, 0.65, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


def category_from_json(entry: Mapping[str, Any], source: str = "categories") -> Category:
    """One COCO category dict -> Category; a missing or malformed field is an error naming the source."""
    try:
        cat_id = int(entry["id"])
        name = str(entry["name"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PanopticFormatError(f"{source}: category entry {dict(entry)!r} lacks a valid id or name") from exc
    isthing = entry.get("isthing", 1)
    if isthing not in (0, 1, True, False):
        raise PanopticFormatError(f"{source}: category {cat_id} has isthing={isthing!r}, expected 0 or 1")
    color = entry["color"] if "color" in entry else default_color(cat_id)
    if not (isinstance(color, list | tuple) and len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255
                                                                         for c in color)):
        raise PanopticFormatError(f"{source}: category {cat_id} has color {color!r}, expected three ints 0-255")
    return Category(cat_id, name, bool(isthing), tuple(color), str(entry.get("supercategory", "")))


def categories_from_json(entries: Iterable[Mapping[str, Any]], source: str = "categories") -> dict[int, Category]:
    """A list of COCO category dicts -> {id: Category}, refusing duplicate ids."""
    table: dict[int, Category] = {}
    for entry in entries:
        cat = category_from_json(entry, source)
        if cat.id in table:
            raise PanopticFormatError(f"{source}: duplicate category id {cat.id}")
        table[cat.id] = cat
    return table


def load_categories(path: str | os.PathLike) -> dict[int, Category]:
    """Read categories from a JSON file holding either a list or a COCO dict with a "categories" key."""
    path = Path(path)
    data = read_json(path, PanopticFormatError)
    if isinstance(data, dict):
        data = data.get("categories")
    if not isinstance(data, list):
        raise PanopticFormatError(f"{path}: expected a list of categories or a dict with 'categories'")
    return categories_from_json(data, str(path))


def categories_to_json(categories: Mapping[int, Category] | Iterable[Category]) -> list[dict[str, Any]]:
    values = categories.values() if isinstance(categories, Mapping) else categories
    return [c.to_json() for c in sorted(values, key=lambda c: c.id)]

"""The COCO panoptic category table (133 categories), shipped with the runtime.

The released DETR panoptic checkpoints predict 251 logits whose index *is* the COCO panoptic category id, so the
runtime needs this table to name and colour segments without a COCO annotation file at hand. The data is
panopticapi's ``panoptic_coco_categories.json``; it is read through importlib.resources so that it also works
from an installed wheel.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files

from runtime.categories import Category, categories_from_json
from runtime.errors import PanopticFormatError

RESOURCE = "data/coco_panoptic_categories.json"


@lru_cache(maxsize=1)
def _load() -> dict[int, Category]:
    resource = files("runtime").joinpath(RESOURCE)
    try:
        entries = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PanopticFormatError(f"runtime/{RESOURCE}: cannot read the shipped COCO panoptic categories ({exc})") \
            from exc
    return categories_from_json(entries, source=f"runtime/{RESOURCE}")


def coco_panoptic_categories() -> dict[int, Category]:
    """{category id: Category} for the 133 COCO panoptic categories (80 things, 53 stuff); a fresh dict per call."""
    return dict(_load())

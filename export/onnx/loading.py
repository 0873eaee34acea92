"""Checkpoint -> (model in eval mode, its configuration, its category table), for export.

The model and configuration come from :func:`train.checkpoint.load_model_from_checkpoint` (safe unpickling,
configuration inferred from the weights where the file stores none). The categories are what the export adds, in
this order of precedence:

1. ``--categories FILE`` (a COCO categories JSON): the user said so explicitly;
2. the checkpoint's own ``categories`` (our training stores the dataset's COCO category dicts there);
3. for a 250-class model (detr's COCO panoptic releases, whose logit index *is* the COCO panoptic category id): the
   COCO panoptic table shipped with the runtime, whose ``isthing`` is detr's rule (ids <= 90 are things).

Anything else is an error: a deployed model without names and thing/stuff flags cannot be post-processed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from runtime.categories import Category, categories_from_json, load_categories
from runtime.coco_categories import coco_panoptic_categories
from runtime.errors import PansegError
from runtime.filehash import file_sha256
from runtime.preprocess import DEFAULT_MAX_SIZE, DEFAULT_SIZE
from train.checkpoint import load_model_from_checkpoint
from train.models.config import DETRConfig

COCO_PANOPTIC_NUM_CLASSES = 250  # detr's num_classes for COCO panoptic: max category id (200) rounded up, + no-object
COCO_THING_MAX_ID = 90  # detr's is_thing_map rule for COCO panoptic


@dataclass
class LoadedCheckpoint:
    """Everything the export needs from one checkpoint file."""

    path: Path
    sha256: str
    model: nn.Module  # DETR (detection only) or DETRsegm (panoptic), in eval mode
    config: DETRConfig
    categories: dict[int, Category]
    categories_source: str  # "--categories FILE", "checkpoint" or "coco-panoptic (shipped table)"
    resize: tuple[int, int | None] = (DEFAULT_SIZE, DEFAULT_MAX_SIZE)  # (shorter side, max size) it was trained for

    @property
    def panoptic(self) -> bool:
        return self.config.masks


def _coco_table_with_detr_rule() -> dict[int, Category]:
    """The shipped COCO panoptic table, checked against detr's thing rule (a wrong table would silently mis-merge)."""
    table = coco_panoptic_categories()
    disagree = sorted(c.id for c in table.values() if c.isthing != (c.id <= COCO_THING_MAX_ID))
    if disagree:
        raise PansegError(f"shipped COCO panoptic categories disagree with detr's rule (ids <= {COCO_THING_MAX_ID} "
                          f"are things) for ids {disagree[:5]}")
    return table


def resolve_categories(ckpt: Mapping[str, Any], config: DETRConfig, source: Path,
                       categories_file: str | os.PathLike | None = None) -> tuple[dict[int, Category], str]:
    """The category table for a checkpoint (see the module docstring for the precedence) and where it came from."""
    if categories_file is not None:
        table, origin = load_categories(categories_file), f"--categories {categories_file}"
    elif ckpt.get("categories") is not None:
        entries = ckpt["categories"]
        if not isinstance(entries, list | tuple):
            raise PansegError(f"{source}: 'categories' must be a list of COCO category dicts, "
                              f"got {type(entries).__name__}")
        table, origin = categories_from_json(entries, source=f"{source} 'categories'"), "checkpoint"
    elif config.num_classes == COCO_PANOPTIC_NUM_CLASSES:
        table, origin = _coco_table_with_detr_rule(), "coco-panoptic (shipped table)"
    else:
        raise PansegError(f"{source}: no categories: the checkpoint stores none and a {config.num_classes}-class model "
                          "is not detr's COCO panoptic one; pass --categories FILE (a COCO categories JSON)")
    if not table:
        raise PansegError(f"{source}: the category table ({origin}) is empty")
    too_big = sorted(c for c in table if c < 0 or c >= config.num_classes)
    if too_big:
        raise PansegError(f"{source}: category ids {too_big[:5]} ({origin}) are outside the model's classes "
                          f"0..{config.num_classes - 1}; the categories do not belong to this model")
    return table, origin


def load_for_export(path: str | os.PathLike, categories_file: str | os.PathLike | None = None,
                    overrides: Mapping[str, Any] | None = None) -> LoadedCheckpoint:
    """Load a checkpoint (ours or detr's) for export; every problem is a one-line PansegError naming the file."""
    path = Path(path)
    model, config, ckpt = load_model_from_checkpoint(path, overrides)
    categories, origin = resolve_categories(ckpt, config, path, categories_file)
    return LoadedCheckpoint(path=path, sha256=file_sha256(path), model=model, config=config, categories=categories,
                            categories_source=origin, resize=resize_policy(ckpt))


def resize_policy(ckpt: Mapping[str, Any]) -> tuple[int, int | None]:
    """The eval resize the model was trained for: our training stores --image_size/--max_size in 'args' (scaled
    down like its transforms for small models); detr's checkpoints have neither and use 800/1333."""
    args = ckpt.get("args") or {}
    size = args.get("image_size")
    if not isinstance(size, int) or size == DEFAULT_SIZE:
        return DEFAULT_SIZE, DEFAULT_MAX_SIZE
    max_size = args.get("max_size")
    if not isinstance(max_size, int) or max_size == DEFAULT_MAX_SIZE:
        max_size = max(1, round(DEFAULT_MAX_SIZE * size / DEFAULT_SIZE))  # as scaled_transform_options scales it
    return size, max_size

"""The shipped COCO panoptic category table: complete, consistent with detr's thing/stuff rule, and faithful."""

import fnmatch
import json
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

from runtime.categories import Category
from runtime.coco_categories import RESOURCE, coco_panoptic_categories

DETR_NUM_CLASSES = 250  # the released panoptic checkpoints: num_classes 250, class index == category id


@pytest.fixture(scope="module")
def cats() -> dict[int, Category]:
    return coco_panoptic_categories()


def test_counts(cats):
    assert len(cats) == 133
    assert sum(c.isthing for c in cats.values()) == 80
    assert sum(not c.isthing for c in cats.values()) == 53


def test_detr_thing_rule_holds(cats):
    # detr's panoptic post-processing treats class ids <= 90 as things and the rest as stuff.
    for cat in cats.values():
        assert cat.isthing == (cat.id <= 90), cat


def test_ids_fit_the_detr_classifier(cats):
    assert all(1 <= cat_id < DETR_NUM_CLASSES for cat_id in cats)
    assert all(cat.id == cat_id for cat_id, cat in cats.items())


def test_raw_file_has_no_duplicates():
    # The dict would silently hide a duplicated id, so look at the raw list.
    entries = json.loads(files("runtime").joinpath(RESOURCE).read_text(encoding="utf-8"))
    ids = [e["id"] for e in entries]
    names = [e["name"] for e in entries]
    assert len(ids) == len(set(ids)) == 133
    assert len(names) == len(set(names))
    assert set(entries[0]) == {"id", "name", "supercategory", "isthing", "color"}


def test_colours_unique_and_valid(cats):
    colours = [cat.color for cat in cats.values()]
    assert len(set(colours)) == len(colours)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)


@pytest.mark.parametrize(
    "cat_id, name, supercategory, isthing, color",
    [
        # Values as read from cocodataset/panopticapi panoptic_coco_categories.json.
        (1, "person", "person", True, (220, 20, 60)),
        (3, "car", "vehicle", True, (0, 0, 142)),
        (90, "toothbrush", "indoor", True, (191, 162, 208)),
        (92, "banner", "textile", False, (255, 255, 128)),
        (184, "tree-merged", "plant", False, (107, 142, 35)),
        (187, "sky-other-merged", "sky", False, (70, 130, 180)),
        (200, "rug-merged", "textile", False, (250, 141, 255)),
    ],
)
def test_spot_checks(cats, cat_id, name, supercategory, isthing, color):
    assert cats[cat_id] == Category(cat_id, name, isthing, color, supercategory)


def test_things_match_torchvision_coco_names(cats):
    # Independent reference: torchvision's COCO detection label list, indexed by COCO category id ("N/A" = unused).
    detection = pytest.importorskip("torchvision.models.detection")
    names = detection.FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    reference = {i: n for i, n in enumerate(names) if i > 0 and n != "N/A"}
    things = {c.id: c.name for c in cats.values() if c.isthing}
    assert things == reference


def test_returns_a_fresh_dict(cats):
    first = coco_panoptic_categories()
    first.pop(1)
    assert 1 in coco_panoptic_categories()


def test_table_is_shipped_in_the_wheel():
    # pyproject's package-data must cover the file, or an installed runtime would not find it.
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["runtime"]
    assert any(fnmatch.fnmatch(RESOURCE, pattern) for pattern in patterns)

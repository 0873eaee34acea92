"""The synthetic dataset: documented layout, determinism, and annotations that agree with the pixels.

References are independent of the generator: pycocotools' COCO.annToMask for the instances JSON, the panoptic PNGs
read back from disk, matplotlib's RGB -> HSV for colours, brute-force numpy for areas and boxes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv
from PIL import Image
from pycocotools.coco import COCO
from scipy.ndimage import binary_erosion

from runtime.panoptic_format import read_panoptic_png, validate_dataset
from runtime.subcommands import run_subcommand
from train.prepare.__main__ import SUBCOMMANDS
from train.prepare.synthetic import (
    PREVIEW_GAP,
    PREVIEW_MARGIN,
    categories,
    generate_dataset,
    generate_sample,
    render_samples,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 64

# pycocotools calls numpy 2 the old way; not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SPLITS = {"train": 6, "val": 3}


def generate(out: Path, seed: int = 0, hard: bool = False, train: int = SPLITS["train"]) -> Path:
    generate_dataset(out, train=train, val=SPLITS["val"], size=SIZE, seed=seed, hard=hard)
    return out


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_ds(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("default") / "ds")


@pytest.fixture(scope="module")
def hard_ds(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("hard") / "ds", hard=True, train=12)


def instances(ds: Path, split: str) -> COCO:
    return COCO(str(ds / "annotations" / f"instances_{split}2017.json"))


def panoptic(ds: Path, split: str) -> dict:
    return json.loads((ds / "annotations" / f"panoptic_{split}2017.json").read_text())


def category_table(ds: Path) -> dict[int, dict]:
    return {c["id"]: c for c in json.loads((ds / "categories.json").read_text())}


# --------------------------------------------------------------------------------------------------------------------
# Command line and layout


def test_cli_creates_detr_layout(tmp_path):
    out = tmp_path / "synthetic"
    proc = subprocess.run(
        [sys.executable, "-m", "train.prepare", "synthetic", "-o", str(out), "--train", "3", "--val", "2",
         "--size", str(SIZE), "--seed", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    expected = {"categories.json"}
    expected |= {f"annotations/{kind}_{split}2017.json" for kind in ("instances", "panoptic") for split in SPLITS}
    for split, n in (("train", 3), ("val", 2)):
        expected |= {f"{split}2017/{i:012d}.jpg" for i in range(1, n + 1)}
        expected |= {f"panoptic_{split}2017/{i:012d}.png" for i in range(1, n + 1)}
    assert set(all_files(out)) == expected  # nothing else, in particular no temporary files or folders left
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["annotations", "categories.json", "panoptic_train2017", "panoptic_val2017", "train2017", "val2017"])
    for split in SPLITS:
        pan = panoptic(out, split)
        # detr's CocoPanoptic zips images (sorted by id) with annotations and opens file_name .png -> .jpg
        images = sorted(pan["images"], key=lambda im: im["id"])
        for img, ann in zip(images, pan["annotations"], strict=True):
            assert img["id"] == ann["image_id"]
            assert img["file_name"] == ann["file_name"].replace(".png", ".jpg")
            with Image.open(out / f"{split}2017" / img["file_name"]) as im:
                assert im.format == "JPEG" and im.size == (img["width"], img["height"])
                assert min(im.size) == SIZE and max(im.size) <= 1.375 * SIZE + 1


def test_cli_rerun_replaces_previous_dataset(tmp_path):
    out = tmp_path / "ds"
    generate(out, train=8)
    generate(out, train=2)  # fewer images: the old ones must not linger next to the new JSON
    assert len(list((out / "train2017").iterdir())) == 2
    assert len(list((out / "panoptic_train2017").iterdir())) == 2
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("argv, message", [
    (["--size", "8"], "--size"),
    (["--train", "0"], "--train"),
])
def test_bad_arguments_give_one_line_error(tmp_path, capsys, argv, message):
    # argparse types check the numbers, as in every panseg command: a one-line usage error, exit 2
    with pytest.raises(SystemExit) as info:
        run_subcommand("python -m train.prepare", "", SUBCOMMANDS, ["synthetic", "-o", str(tmp_path / "x"), *argv])
    code = info.value.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_out_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = run_subcommand("python -m train.prepare", "", SUBCOMMANDS,
                          ["synthetic", "-o", str(tmp_path / "file"), "--train", "1", "--val", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "file" in err and "not a directory" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "file").read_text() == "x"


def test_categories_are_small_ids_things_first(default_ds):
    cats = json.loads((default_ds / "categories.json").read_text())
    ids = [c["id"] for c in cats]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and min(ids) >= 1 and max(ids) == len(ids)
    things = [c["isthing"] for c in cats]
    assert things == sorted(things, reverse=True) and 0 < sum(things) < len(things)
    for split in SPLITS:
        assert panoptic(default_ds, split)["categories"] == cats


# --------------------------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path, default_ds):
    again = all_files(generate(tmp_path / "again"))
    first = all_files(default_ds)
    assert again == first
    other = all_files(generate(tmp_path / "other", seed=1))
    assert set(other) == set(first)
    for name in first:
        if name.endswith((".jpg", ".png")) or name.startswith("annotations/"):
            assert other[name] != first[name], name


def test_val_does_not_depend_on_train_count(tmp_path, default_ds):
    fewer = all_files(generate(tmp_path / "fewer", train=2))
    first = all_files(default_ds)
    for name in first:
        if "val2017" in name:
            assert fewer[name] == first[name], name


# --------------------------------------------------------------------------------------------------------------------
# Annotations agree with each other and with the pixels


@pytest.mark.parametrize("variant", ["default_ds", "hard_ds"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_panoptic_dataset_is_valid_with_areas(request, variant, split):
    ds = request.getfixturevalue(variant)
    n = validate_dataset(ds / "annotations" / f"panoptic_{split}2017.json", ds / f"panoptic_{split}2017",
                         check_area=True)
    assert n == len(panoptic(ds, split)["images"]) > 0


@pytest.mark.parametrize("variant", ["default_ds", "hard_ds"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_instance_masks_equal_panoptic_segments(request, variant, split):
    ds = request.getfixturevalue(variant)
    coco = instances(ds, split)
    pan = {a["image_id"]: a for a in panoptic(ds, split)["annotations"]}
    void_pixels = 0
    for image_id in coco.imgs:
        id_map = read_panoptic_png(ds / f"panoptic_{split}2017" / pan[image_id]["file_name"])
        segments = {s["id"]: s for s in pan[image_id]["segments_info"]}
        union = np.zeros(id_map.shape, dtype=np.int64)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(segments)
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            union += mask
            seg_ids = np.unique(id_map[mask])
            assert seg_ids.size == 1, f"annotation {ann['id']} covers several segments"
            seg_id = int(seg_ids[0])
            assert np.array_equal(id_map == seg_id, mask)
            assert segments[seg_id]["category_id"] == ann["category_id"]
            assert segments[seg_id]["iscrowd"] == ann["iscrowd"]
            ys, xs = np.nonzero(mask)
            assert ann["area"] == ys.size == segments[seg_id]["area"]
            bbox = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == bbox == segments[seg_id]["bbox"]
        assert union.max() <= 1  # the converter's no-overlap rule
        assert np.array_equal(union == 0, id_map == 0)
        void_pixels += int((union == 0).sum())
    if variant == "default_ds":
        assert void_pixels == 0  # every pixel belongs to exactly one segment


def test_polygons_for_whole_objects_rle_for_occluded_and_stuff(default_ds):
    kinds = {"polygon": 0, "rle": 0}
    for split in SPLITS:
        coco = instances(default_ds, split)
        cats = coco.cats
        for ann in coco.dataset["annotations"]:
            polygon = isinstance(ann["segmentation"], list)
            kinds["polygon" if polygon else "rle"] += 1
            if polygon:
                assert cats[ann["category_id"]]["isthing"] == 1
            else:
                assert isinstance(ann["segmentation"]["counts"], str)  # compressed RLE
    assert kinds["polygon"] > 0 and kinds["rle"] > 0
    # Some thing must be occluded (RLE) in this small sample too, or the occlusion path goes untested.
    coco = instances(default_ds, "train")
    assert any(not isinstance(a["segmentation"], list) and coco.cats[a["category_id"]]["isthing"]
               for a in coco.dataset["annotations"])


@pytest.mark.parametrize("variant", ["default_ds", "hard_ds"])
def test_no_tiny_segments(request, variant):
    """Objects hidden down to a sliver are dropped (default) or left VOID (hard), never annotated."""
    ds = request.getfixturevalue(variant)
    min_area = 40 * (SIZE / 128) ** 2
    for split in SPLITS:
        coco = instances(ds, split)
        areas = [a["area"] for a in coco.dataset["annotations"] if coco.cats[a["category_id"]]["isthing"]]
        assert min(areas) >= min_area


def test_default_covers_every_pixel_once_over_many_samples():
    """In memory, over more images than the fixtures hold: no VOID, no overlap, no sliver of a hidden object."""
    from pycocotools import mask as mask_utils

    min_area = 40 * (SIZE / 128) ** 2
    isthing = {c.id: c.isthing for c in categories()}
    for index in range(400):  # an object is hidden down to a sliver in about 1 image in 100
        sample = generate_sample(0, "train", index, size=SIZE)
        coverage = np.zeros((sample.height, sample.width), dtype=np.int64)
        for ann in sample.annotations:
            segm = ann["segmentation"]
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, sample.height, sample.width)) if isinstance(
                segm, list) else segm
            mask = mask_utils.decode(rle)
            assert mask.sum() == ann["area"] and (not isthing[ann["category_id"]] or ann["area"] >= min_area)
            coverage += mask
        assert coverage.min() == coverage.max() == 1, index


def test_hard_variant_has_crowds_and_small_objects(hard_ds, default_ds):
    coco = instances(hard_ds, "train")
    anns = coco.dataset["annotations"]
    crowds = [a for a in anns if a["iscrowd"]]
    assert crowds and all(isinstance(a["segmentation"], dict) for a in crowds)
    things_per_image = lambda c: np.mean(  # noqa: E731
        [sum(c.cats[a["category_id"]]["isthing"] for a in c.imgToAnns[i]) for i in c.imgs])
    assert things_per_image(coco) > things_per_image(instances(default_ds, "train"))


# --------------------------------------------------------------------------------------------------------------------
# The class shows in the image


def hue_distance(a: np.ndarray, b: float) -> np.ndarray:
    d = np.abs(a - b) % 1.0
    return np.minimum(d, 1.0 - d)


def test_thing_pixels_have_their_class_colour_family(default_ds):
    cats = category_table(default_ds)
    checked = 0
    for split in SPLITS:
        coco = instances(default_ds, split)
        for image_id, img in coco.imgs.items():
            with Image.open(default_ds / f"{split}2017" / img["file_name"]) as im:
                hsv = rgb_to_hsv(np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
                # one pixel in from the edge: JPEG blurs colours across a boundary by about a pixel
                inner = binary_erosion(coco.annToMask(ann).astype(bool))
                if not inner.any():
                    continue
                h, s = hsv[..., 0][inner], hsv[..., 1][inner]
                if cats[ann["category_id"]]["isthing"]:
                    class_hue = rgb_to_hsv(np.array(cats[ann["category_id"]]["color"]) / 255.0)[0]
                    # classes are 60 degrees apart: within 25 degrees means nearer this class than any other
                    assert hue_distance(h, class_hue).max() < 25 / 360, (split, ann["id"])
                    assert s.min() > 0.55, (split, ann["id"])
                    checked += 1
                else:
                    assert np.percentile(s, 99) < 0.5, (split, ann["id"])  # background is never that saturated
    assert checked >= 10


def test_preview_shows_image_and_segmentation(tmp_path, default_ds):
    out = tmp_path / "preview.png"
    render_samples(default_ds, out, "val", count=3, zoom=2, columns=2)
    pan = panoptic(default_ds, "val")
    first = min(pan["images"], key=lambda im: im["id"])
    with Image.open(default_ds / "val2017" / first["file_name"]) as im:
        image = np.asarray(im.convert("RGB"))
    with Image.open(out) as im:
        canvas = np.asarray(im.convert("RGB"))
    h, w = image.shape[:2]
    y, x = PREVIEW_MARGIN, PREVIEW_MARGIN
    assert np.array_equal(canvas[y:y + 2 * h:2, x:x + 2 * w:2], image)  # the real image, zoomed 2x
    x += 2 * w + PREVIEW_GAP
    right = canvas[y:y + 2 * h:2, x:x + 2 * w:2]
    ann = next(a for a in pan["annotations"] if a["image_id"] == first["id"])
    id_map = read_panoptic_png(default_ds / "panoptic_val2017" / ann["file_name"])
    assert not np.array_equal(right, image)
    # the same partition: away from the drawn borders, the pixels of one segment share one colour
    for seg_id in np.unique(id_map):
        inner = binary_erosion(id_map == seg_id)
        if inner.any():
            assert len(np.unique(right[inner], axis=0)) == 1
    assert canvas.shape[0] > 2 * (2 * h)  # 3 pairs in 2 columns: two rows

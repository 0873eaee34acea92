"""train/datasets: COCO / COCO panoptic targets and detr's transforms, checked against independent references.

References: pycocotools' annToMask, masks written by hand, numpy box computations, a separate implementation of
detr's resize rule with exact fractions, and batches built directly.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from runtime.errors import PanopticFormatError, PansegError
from runtime.panoptic_format import write_panoptic_png
from train.datasets import CocoDetection, CocoPanoptic, build_dataset, collate_fn, pad_images
from train.datasets.cache import CachedItems
from train.datasets.collate import Collate
from train.datasets.transforms import (
    DETR_CROP,
    DETR_CROP_RESIZE,
    DETR_EVAL_SIZE,
    DETR_MAX_SIZE,
    DETR_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    RandomSizeCrop,
    ToTensor,
    build_transforms,
    crop,
    hflip,
    resize,
    resized_size,
    scaled_transform_options,
)

# pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; harmless and not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# ---------------------------------------------------------------------------------------------------------------
# tiny datasets


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE, built by hand: column-major run lengths starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


W1, H1 = 40, 30
RLE_MASK = np.zeros((H1, W1), dtype=np.uint8)
RLE_MASK[18:27, 3:12] = 1
RLE_MASK[20:22, 12:15] = 1
STR_RLE_MASK = np.zeros((H1, W1), dtype=np.uint8)
STR_RLE_MASK[2:9, 25:37] = 1


def instances_json() -> dict:
    crowd = coco_mask.encode(np.asfortranarray(np.pad(np.ones((6, 6), np.uint8), ((10, 14), (22, 12)))))
    str_rle = coco_mask.encode(np.asfortranarray(STR_RLE_MASK))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 150.0, "bbox": [5, 5, 15, 10],
         "segmentation": [[5, 5, 20, 5, 20, 15, 5, 15]]},
        {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0, "area": float(RLE_MASK.sum()),
         "bbox": [3, 18, 12, 9], "segmentation": uncompressed_rle(RLE_MASK)},
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 36.0, "bbox": [22, 10, 6, 6],
         "segmentation": {"size": crowd["size"], "counts": crowd["counts"].decode()}},
        # extends past the right and bottom edges: clipped to the image; two polygons
        {"id": 4, "image_id": 1, "category_id": 12, "iscrowd": 0, "area": 80.0, "bbox": [30, 20, 20, 20],
         "segmentation": [[30, 20, 39, 20, 39, 25, 30, 25], [33, 26, 38, 26, 38, 29, 33, 29]]},
        # degenerate (zero width): filtered out, as detr does
        {"id": 5, "image_id": 1, "category_id": 4, "iscrowd": 0, "area": 0.0, "bbox": [10, 10, 0, 5],
         "segmentation": [[10, 10, 10, 10, 10, 15, 10, 15]]},
        {"id": 6, "image_id": 1, "category_id": 90, "iscrowd": 0, "area": float(STR_RLE_MASK.sum()),
         "bbox": [25, 2, 12, 7], "segmentation": {"size": str_rle["size"], "counts": str_rle["counts"].decode()}},
    ]  # fmt: skip
    images = [
        {"id": 2, "file_name": "b.jpg", "width": 24, "height": 36},
        {"id": 1, "file_name": "a.jpg", "width": W1, "height": H1},
    ]
    categories = [{"id": i, "name": f"c{i}"} for i in (1, 3, 4, 7, 12, 90)]
    return {"images": images, "annotations": anns, "categories": categories}


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir()
        noise_image(W1, H1, 1).save(root / f"{split}2017" / "a.jpg")
        noise_image(24, 36, 2).save(root / f"{split}2017" / "b.jpg")
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(instances_json()))
    return root


# Panoptic: two images; ids above 255 exercise all three RGB channels; image 7 has a crowd segment and VOID pixels.
def panoptic_id_maps() -> dict[int, np.ndarray]:
    a = np.zeros((26, 34), dtype=np.uint32)
    a[:, :] = 70000  # "stuff" background
    a[3:10, 4:15] = 5
    a[12:20, 18:30] = 256 * 3 + 5
    a[21:24, 2:9] = 0  # VOID
    a[0:2, 30:34] = 123456  # crowd
    b = np.full((20, 16), 9, dtype=np.uint32)
    b[5:15, 2:6] = 300
    return {7: a, 3: b}


PANOPTIC_SEGMENTS = {
    7: [
        {"id": 5, "category_id": 1, "iscrowd": 0},
        {"id": 256 * 3 + 5, "category_id": 18, "iscrowd": 0},
        {"id": 70000, "category_id": 184, "iscrowd": 0},
        {"id": 123456, "category_id": 1, "iscrowd": 1},
    ],
    3: [{"id": 9, "category_id": 200, "iscrowd": 0}, {"id": 300, "category_id": 44, "iscrowd": 0}],
}


def write_panoptic(root: Path, coco_root: Path, split: str, segments=PANOPTIC_SEGMENTS, maps=None) -> None:
    maps = panoptic_id_maps() if maps is None else maps
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"panoptic_{split}2017").mkdir(exist_ok=True)
    (coco_root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for image_id in (7, 3):  # deliberately not sorted: the dataset orders by image id
        id_map = maps[image_id]
        name = f"{image_id:012d}"
        write_panoptic_png(root / f"panoptic_{split}2017" / f"{name}.png", id_map)
        noise_image(id_map.shape[1], id_map.shape[0], image_id).save(coco_root / f"{split}2017" / f"{name}.jpg")
        images.append({"id": image_id, "file_name": f"{name}.jpg", "width": id_map.shape[1], "height": id_map.shape[0]})
        segs = [dict(s, area=int((id_map == s["id"]).sum())) for s in segments[image_id]]
        anns.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segs})
    data = {"images": images, "annotations": anns, "categories": []}
    (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(data))


@pytest.fixture
def panoptic_root(tmp_path: Path) -> tuple[Path, Path]:
    coco_root, pan_root = tmp_path / "coco", tmp_path / "coco_panoptic"
    for split in ("train", "val"):
        write_panoptic(pan_root, coco_root, split)
    return coco_root, pan_root


# ---------------------------------------------------------------------------------------------------------------
# references


def edge_boxes(masks: np.ndarray) -> np.ndarray:
    """xyxy boxes on pixel edges (x1 = last column + 1): the convention in which flip and crop are exact."""
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(out, dtype=np.float32).reshape(-1, 4)


def inclusive_boxes(masks: np.ndarray) -> np.ndarray:
    """xyxy boxes of first/last pixel indices: detr's masks_to_boxes convention."""
    return edge_boxes(masks) - np.array([0, 0, 1, 1], dtype=np.float32)


def reference_size(w: int, h: int, size: int, max_size: int | None) -> tuple[int, int]:
    """detr's get_size_with_aspect_ratio restated with exact fractions: (h, w) after resizing."""
    short, long = min(w, h), max(w, h)
    if max_size is not None and Fraction(long, short) * size > max_size:
        size = round(Fraction(max_size * short, long))
    if size == short:
        return h, w
    other = size * long // short
    return (other, size) if w < h else (size, other)


def reference_nearest(masks: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's legacy 'nearest': output pixel i reads input pixel floor(i * in / out)."""
    in_h, in_w = masks.shape[-2:]
    rows = np.minimum(np.arange(out_h) * in_h // out_h, in_h - 1)
    cols = np.minimum(np.arange(out_w) * in_w // out_w, in_w - 1)
    return masks[:, rows][:, :, cols]


def rect_target(w: int, h: int, rects: list[tuple[int, int, int, int]]) -> dict[str, torch.Tensor]:
    """A target whose masks are filled rectangles (x0, y0, x1, y1 on pixel edges) and whose boxes are those edges."""
    masks = np.zeros((len(rects), h, w), dtype=bool)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        masks[k, y0:y1, x0:x1] = True
    return {
        "boxes": torch.tensor(rects, dtype=torch.float32).reshape(-1, 4),
        "masks": torch.from_numpy(masks),
        "labels": torch.arange(len(rects), dtype=torch.int64) + 10,
        "area": torch.from_numpy(masks.sum((1, 2)).astype(np.float32)),
        "iscrowd": torch.zeros(len(rects), dtype=torch.int64),
        "size": torch.tensor([h, w]),
        "orig_size": torch.tensor([h, w]),
    }


# ---------------------------------------------------------------------------------------------------------------
# COCO detection


def test_coco_targets_match_pycocotools(coco_root: Path) -> None:
    ann_file = coco_root / "annotations" / "instances_train2017.json"
    ds = CocoDetection(coco_root / "train2017", ann_file, return_masks=True)
    reference = COCO(str(ann_file))
    assert len(ds) == 2 and ds.ids == [1, 2]

    image, target = ds[0]
    assert image.size == (W1, H1)
    kept = [1, 2, 4, 6]  # 3 is crowd, 5 is degenerate
    anns = reference.loadAnns(kept)
    assert target["labels"].tolist() == [a["category_id"] for a in anns]
    assert target["labels"].dtype == torch.int64
    for k, ann in enumerate(anns):
        np.testing.assert_array_equal(target["masks"][k].numpy(), reference.annToMask(ann).astype(bool))
    np.testing.assert_array_equal(target["masks"][1].numpy(), RLE_MASK.astype(bool))
    np.testing.assert_array_equal(target["masks"][3].numpy(), STR_RLE_MASK.astype(bool))

    expected = []
    for ann in anns:
        x, y, bw, bh = ann["bbox"]
        expected.append([min(max(x, 0), W1), min(max(y, 0), H1), min(x + bw, W1), min(y + bh, H1)])
    np.testing.assert_array_equal(target["boxes"].numpy(), np.array(expected, dtype=np.float32))
    assert target["boxes"][2].tolist() == [30, 20, 40, 30]  # clipped
    np.testing.assert_array_equal(target["area"].numpy(), [a["area"] for a in anns])
    assert target["iscrowd"].tolist() == [0, 0, 0, 0]
    assert target["image_id"].tolist() == [1]
    assert target["size"].tolist() == target["orig_size"].tolist() == [H1, W1]


def test_coco_image_without_annotations_and_without_masks(coco_root: Path) -> None:
    ds = CocoDetection(coco_root / "val2017", coco_root / "annotations" / "instances_val2017.json")
    image, target = ds[1]
    assert image.size == (24, 36)
    assert "masks" not in target
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"].tolist() == [2]


def test_build_dataset_val_resizes_and_normalizes(coco_root: Path) -> None:
    ds = build_dataset("val", "coco", coco_root, masks=True, eval_size=24, max_size=40)
    raw = CocoDetection(coco_root / "val2017", coco_root / "annotations" / "instances_val2017.json", return_masks=True)
    image, target = ds[0]
    _, raw_target = raw[0]
    h, w = reference_size(W1, H1, 24, 40)
    assert tuple(image.shape) == (3, h, w)
    assert target["size"].tolist() == [h, w] and target["orig_size"].tolist() == [H1, W1]
    assert target["masks"].shape == (4, h, w)
    # normalized cxcywh back to pixels equals the original boxes scaled by the resize ratios
    cx, cy, bw, bh = (target["boxes"] * torch.tensor([w, h, w, h])).unbind(1)
    back = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    scale = torch.tensor([w / W1, h / H1, w / W1, h / H1])
    torch.testing.assert_close(back, raw_target["boxes"] * scale, atol=1e-4, rtol=0)


def test_missing_files_name_the_path(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(PansegError, match="nowhere"):
        build_dataset("train", "coco", tmp_path / "nowhere")
    (coco_root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(PansegError, match="instances_val2017.json"):
        build_dataset("val", "coco", coco_root)
    with pytest.raises(PansegError, match="coco_panoptic_path"):
        build_dataset("train", "coco_panoptic", coco_root)
    with pytest.raises(PansegError, match="panoptic_train2017.json"):
        build_dataset("train", "coco_panoptic", coco_root, tmp_path)
    with pytest.raises(PansegError, match="test"):
        build_dataset("test", "coco", coco_root)
    ds = build_dataset("train", "coco", coco_root)
    (coco_root / "train2017" / "a.jpg").unlink()
    with pytest.raises(PansegError, match=r"a\.jpg"):
        ds[0]
    bad = coco_root / "annotations" / "instances_train2017.json"
    bad.write_text("{not json")
    with pytest.raises(PansegError, match="instances_train2017.json"):
        build_dataset("train", "coco", coco_root)


# ---------------------------------------------------------------------------------------------------------------
# COCO panoptic


def test_panoptic_targets_equal_id_map(panoptic_root: tuple[Path, Path]) -> None:
    coco_root, pan_root = panoptic_root
    ds = CocoPanoptic(
        coco_root / "train2017", pan_root / "panoptic_train2017", pan_root / "annotations" / "panoptic_train2017.json"
    )
    maps = panoptic_id_maps()
    assert len(ds) == 2
    for idx, image_id in enumerate((3, 7)):  # sorted by image id
        image, target = ds[idx]
        id_map, segs = maps[image_id], PANOPTIC_SEGMENTS[image_id]
        assert image.size == (id_map.shape[1], id_map.shape[0])
        assert target["image_id"].tolist() == [image_id]
        expected_masks = np.stack([id_map == s["id"] for s in segs])
        np.testing.assert_array_equal(target["masks"].numpy(), expected_masks)
        assert target["labels"].tolist() == [s["category_id"] for s in segs]
        assert target["iscrowd"].tolist() == [s["iscrowd"] for s in segs]
        np.testing.assert_array_equal(target["area"].numpy(), expected_masks.sum((1, 2)))
        np.testing.assert_array_equal(target["boxes"].numpy(), inclusive_boxes(expected_masks))
        assert target["size"].tolist() == list(id_map.shape)


def test_panoptic_bad_annotations_are_reported(tmp_path: Path) -> None:
    coco_root, pan_root = tmp_path / "coco", tmp_path / "pan"
    segments = {7: PANOPTIC_SEGMENTS[7] + [{"id": 4242, "category_id": 1, "iscrowd": 0}], 3: PANOPTIC_SEGMENTS[3]}
    write_panoptic(pan_root, coco_root, "val", segments=segments)
    ds = build_dataset("val", "coco_panoptic", coco_root, pan_root, masks=True)
    with pytest.raises(PanopticFormatError, match=r"000000000007\.png.*4242"):
        ds[1]
    # PNG and image of different sizes
    Image.new("RGB", (5, 5)).save(coco_root / "val2017" / "000000000003.jpg")
    with pytest.raises(PanopticFormatError, match=r"000000000003\.png"):
        ds[0]


def test_panoptic_train_pipeline_keeps_targets_consistent(panoptic_root: tuple[Path, Path]) -> None:
    coco_root, pan_root = panoptic_root
    options = {"scales": [16, 20, 24], "max_size": 40, "crop": (8, 20), "crop_resize": [18, 22], "eval_size": 24}
    ds = build_dataset("train", "coco_panoptic", coco_root, pan_root, masks=True, **options)
    shapes = set()
    for seed in range(12):
        random.seed(seed)
        torch.manual_seed(seed)
        image, target = ds[seed % 2]
        h, w = image.shape[-2:]
        shapes.add((h, w))
        assert target["size"].tolist() == [h, w]
        n = len(target["labels"])
        assert target["masks"].shape == (n, h, w) and target["boxes"].shape == (n, 4)
        assert len(target["area"]) == len(target["iscrowd"]) == n
        assert bool((target["boxes"] >= 0).all() and (target["boxes"] <= 1).all())
        assert min(h, w) in options["scales"] or max(h, w) <= options["max_size"] + 1
    assert len(shapes) > 1  # the seeds really drive the augmentation


# ---------------------------------------------------------------------------------------------------------------
# transforms


def test_hflip_flips_image_masks_and_boxes_consistently() -> None:
    w, h = 23, 17
    image = noise_image(w, h, 5)
    target = rect_target(w, h, [(0, 0, 5, 4), (3, 6, 23, 9), (10, 2, 11, 17)])
    flipped, out = hflip(image, target)
    np.testing.assert_array_equal(np.asarray(flipped), np.asarray(image)[:, ::-1])
    np.testing.assert_array_equal(out["masks"].numpy(), target["masks"].numpy()[:, :, ::-1])
    np.testing.assert_array_equal(out["boxes"].numpy(), edge_boxes(out["masks"].numpy()))
    assert out["labels"].tolist() == target["labels"].tolist()
    # detr's inclusive (masks_to_boxes) boxes: the flipped box is one pixel right of the flipped mask's box
    incl = torch.from_numpy(inclusive_boxes(target["masks"].numpy()))
    _, out_incl = hflip(image, dict(target, boxes=incl))
    np.testing.assert_array_equal(
        out_incl["boxes"].numpy() - np.array([1, 0, 1, 0]), inclusive_boxes(out["masks"].numpy())
    )


@pytest.mark.parametrize(
    "w,h", [(40, 30), (30, 40), (33, 33), (17, 90), (640, 480), (480, 640), (1000, 301), (500, 375), (427, 640)]
)
@pytest.mark.parametrize("max_size", [None, 41, 1333])
def test_resized_size_matches_detr_rule(w: int, h: int, max_size: int | None) -> None:
    for size in (8, 16, 24, 30, 33, 128, 480, 800):
        assert resized_size((w, h), size, max_size) == reference_size(w, h, size, max_size), (w, h, size, max_size)


def test_default_sizes_match_detr_coco() -> None:
    h, w = resized_size((640, 480), 800, 1333)
    assert (h, w) == (800, 1066)
    assert resized_size((1333, 300), 800, 1333) == (300, 1333)
    assert scaled_transform_options(800) == {
        "scales": list(DETR_SCALES), "max_size": DETR_MAX_SIZE, "crop": DETR_CROP,
        "crop_resize": list(DETR_CROP_RESIZE), "eval_size": DETR_EVAL_SIZE,
    }  # fmt: skip
    small = scaled_transform_options(128)
    assert max(small["scales"]) == 128 and small["eval_size"] == 128
    assert all(abs(a * 800 / 128 - b) <= 3.2 for a, b in zip(small["scales"], DETR_SCALES, strict=True))


@pytest.mark.parametrize("size,max_size", [(24, None), (13, None), (50, 60), (9, 12)])
def test_resize_scales_image_masks_boxes_and_area(size: int, max_size: int | None) -> None:
    w, h = 23, 17
    image = noise_image(w, h, 6)
    rng = np.random.default_rng(size)
    masks = rng.random((3, h, w)) < 0.4
    target = rect_target(w, h, [(1, 2, 9, 12), (0, 0, 23, 17), (5, 5, 6, 6)])
    target["masks"] = torch.from_numpy(masks)
    resized, out = resize(image, target, size, max_size)
    eh, ew = reference_size(w, h, size, max_size)
    assert resized.size == (ew, eh) and out["size"].tolist() == [eh, ew]
    assert out["masks"].dtype == torch.bool
    np.testing.assert_array_equal(out["masks"].numpy(), reference_nearest(masks, eh, ew))
    rw, rh = ew / w, eh / h
    np.testing.assert_allclose(out["boxes"].numpy(), target["boxes"].numpy() * [rw, rh, rw, rh], rtol=1e-6)
    np.testing.assert_allclose(out["area"].numpy(), target["area"].numpy() * rw * rh, rtol=1e-6)
    assert out["orig_size"].tolist() == [h, w]


@pytest.mark.parametrize("region", [(0, 0, 17, 23), (2, 3, 10, 12), (8, 12, 9, 11), (0, 15, 17, 8)])
def test_crop_keeps_boxes_consistent_with_masks(region: tuple[int, int, int, int]) -> None:
    w, h = 23, 17
    image = noise_image(w, h, 7)
    target = rect_target(w, h, [(0, 0, 5, 4), (3, 6, 23, 9), (10, 2, 11, 17), (14, 10, 20, 16), (16, 0, 23, 3)])
    cropped, out = crop(image, target, region)
    top, left, ch, cw = region
    np.testing.assert_array_equal(np.asarray(cropped), np.asarray(image)[top : top + ch, left : left + cw])
    sliced = target["masks"].numpy()[:, top : top + ch, left : left + cw]
    survivors = sliced.reshape(len(sliced), -1).any(1)
    assert out["labels"].tolist() == target["labels"][torch.from_numpy(survivors)].tolist()
    np.testing.assert_array_equal(out["masks"].numpy(), sliced[survivors])
    np.testing.assert_array_equal(out["boxes"].numpy(), edge_boxes(sliced[survivors]))
    np.testing.assert_array_equal(out["area"].numpy(), sliced[survivors].sum((1, 2)))
    assert out["size"].tolist() == [ch, cw]


def test_random_size_crop_respects_bounds_and_small_images() -> None:
    image = noise_image(40, 30, 8)
    target = rect_target(40, 30, [(0, 0, 40, 30)])
    random.seed(0)
    torch.manual_seed(0)
    for _ in range(20):
        cropped, out = RandomSizeCrop(10, 25)(image, target)
        assert 10 <= cropped.width <= 25 and 10 <= cropped.height <= 25
        assert out["boxes"].tolist() == [[0, 0, cropped.width, cropped.height]]
    cropped, _ = RandomSizeCrop(384, 600)(image, target)  # detr's sizes on a tiny image: kept whole
    assert cropped.size == image.size


def test_normalize_image_and_cxcywh_round_trip() -> None:
    w, h = 23, 17
    image = noise_image(w, h, 9)
    target = {"boxes": torch.tensor([[0, 0, 5, 4], [3.5, 6, 23, 9.25]]), "labels": torch.tensor([1, 2])}
    tensor, out = Compose([ToTensor(), Normalize()])(image, target)
    expected = (np.asarray(image, dtype=np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(tensor.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    cx, cy, bw, bh = out["boxes"].numpy().T
    assert (out["boxes"] <= 1).all() and (out["boxes"] >= 0).all()
    back = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
    np.testing.assert_allclose(back, target["boxes"].numpy(), atol=1e-5)


def test_train_transforms_are_deterministic_under_seeds() -> None:
    image = noise_image(40, 30, 10)
    target = rect_target(40, 30, [(2, 2, 20, 20), (25, 5, 38, 28)])
    transforms = build_transforms("train", scales=[16, 20, 24, 28], max_size=48, crop=(10, 25), crop_resize=[20, 26])

    def run(seed: int):
        random.seed(seed)
        torch.manual_seed(seed)
        return transforms(image, target)

    shapes = set()
    for seed in range(8):
        (img_a, tgt_a), (img_b, tgt_b) = run(seed), run(seed)
        torch.testing.assert_close(img_a, img_b, rtol=0, atol=0)
        assert tgt_a.keys() == tgt_b.keys()
        for key in tgt_a:
            torch.testing.assert_close(tgt_a[key], tgt_b[key], rtol=0, atol=0)
        shapes.add(tuple(img_a.shape))
    assert len(shapes) > 1


def test_train_transforms_flip_about_half_the_time() -> None:
    image = noise_image(40, 30, 11)  # short side 30 = the only scale: the resize leaves pixels untouched
    transforms = build_transforms("train", scales=[30], max_size=None, crop=None)
    plain, _ = Compose([ToTensor(), Normalize()])(image, None)
    random.seed(0)
    flips = 0
    for _ in range(40):
        out, _ = transforms(image, None)
        if torch.equal(out, plain.flip(-1)):
            flips += 1
        else:
            torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert 8 <= flips <= 32


# ---------------------------------------------------------------------------------------------------------------
# collate


@pytest.mark.parametrize("divisibility", [0, 8])
def test_collate_pads_bottom_right_with_mask(divisibility: int) -> None:
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=gen) for h, w in [(5, 9), (11, 4), (7, 7)]]
    targets = [{"labels": torch.tensor([i])} for i in range(3)]
    collate = Collate(divisibility) if divisibility else collate_fn
    batch, mask, out_targets = collate(list(zip(images, targets, strict=True)))
    H, W = (11, 9) if divisibility == 0 else (16, 16)
    expected = np.zeros((3, 3, H, W), dtype=np.float32)
    expected_mask = np.ones((3, H, W), dtype=bool)
    for b, img in enumerate(images):
        _, h, w = img.shape
        expected[b, :, :h, :w] = img.numpy()
        expected_mask[b, :h, :w] = False
    np.testing.assert_array_equal(batch.numpy(), expected)
    np.testing.assert_array_equal(mask.numpy(), expected_mask)
    assert [t["labels"].item() for t in out_targets] == [0, 1, 2]
    with pytest.raises(ValueError):
        pad_images([])


def test_dataloader_batches_a_dataset(coco_root: Path) -> None:
    ds = build_dataset("val", "coco", coco_root, eval_size=20, max_size=40)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_fn)
    images, mask, targets = next(iter(loader))
    sizes = [t["size"].tolist() for t in targets]
    assert images.shape == (2, 3, max(s[0] for s in sizes), max(s[1] for s in sizes))
    for b, (h, w) in enumerate(sizes):
        assert not mask[b, :h, :w].any() and int(mask[b].sum()) == images.shape[2] * images.shape[3] - h * w


def test_cached_items_equal_fresh_items_with_fresh_augmentations(panoptic_root: tuple[Path, Path]) -> None:
    coco_root, pan_root = panoptic_root
    options = {"scales": [20, 24, 28], "max_size": 40, "crop": (8, 16), "crop_resize": [20, 24]}
    fresh = build_dataset("train", "coco_panoptic", coco_root, pan_root, masks=True, **options)
    cached = CachedItems(build_dataset("train", "coco_panoptic", coco_root, pan_root, masks=True, **options))
    assert len(cached) == len(fresh)
    seen_sizes = set()
    for epoch in range(4):  # the first pass fills the cache, later passes must give the same as decoding anew
        for idx in range(len(fresh)):
            torch.manual_seed(epoch * 100 + idx)
            random.seed(epoch * 100 + idx)
            want_image, want = fresh[idx]
            torch.manual_seed(epoch * 100 + idx)
            random.seed(epoch * 100 + idx)
            got_image, got = cached[idx]
            assert torch.equal(got_image, want_image)
            assert set(got) == set(want)
            for key in want:
                assert torch.equal(got[key], want[key]), key
            seen_sizes.add(tuple(got["size"].tolist()))
    assert len(seen_sizes) > 1  # the augmentations ran after the cache: sizes vary between passes
    assert len(cached._items) == len(fresh)

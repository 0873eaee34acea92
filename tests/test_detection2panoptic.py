"""The COCO detection -> panoptic converter against pycocotools' annToMask and panopticapi's converter rules."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from runtime.categories import categories_from_json
from runtime.errors import PansegError
from runtime.panoptic_format import id2rgb, read_panoptic_png, validate_annotation, validate_dataset
from runtime.subcommands import run_subcommand
from train.prepare.__main__ import SUBCOMMANDS
from train.prepare.detection2panoptic import convert_detection_to_panoptic

PERSON, BLACK_THING, SKYLIKE_THING, SKY, BLACK_STUFF = 1, 2, 3, 10, 11
CATEGORIES = [
    {"id": PERSON, "name": "person", "isthing": 1, "color": [220, 20, 60], "supercategory": "person"},
    {"id": BLACK_THING, "name": "black-thing", "isthing": 1, "color": [0, 0, 0], "supercategory": "x"},
    {"id": SKYLIKE_THING, "name": "sky-coloured-thing", "isthing": 1, "color": [70, 130, 180], "supercategory": "x"},
    {"id": SKY, "name": "sky", "isthing": 0, "color": [70, 130, 180], "supercategory": "sky"},
    {"id": BLACK_STUFF, "name": "black-stuff", "isthing": 0, "color": [0, 0, 0], "supercategory": "x"},
]


def rect(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[rows, cols] = 1
    return m


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with a run of zeros, written out by hand (independent of pycocotools)."""
    counts, current, run = [], 0, 0
    for v in mask.flatten(order="F").tolist():
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def ann(ann_id: int, image_id: int, cat: int, segm, area: float, bbox: list, iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": segm, "area": area,
            "bbox": bbox, "iscrowd": iscrowd}


def detection_dataset() -> dict:
    h, w = 20, 30
    crowd = rect(h, w, slice(15, 20), slice(0, 10))
    crowd[16:19:2, 2:8:3] = 0  # holes, so the crowd RLE is not a plain box
    anns = [
        # areas/bboxes are deliberately not the mask's: the converter must copy the detection JSON's values.
        ann(101, 1, PERSON, [[1, 1, 9, 1, 9, 7, 1, 7]], 47.5, [1, 1, 8, 6]),
        ann(102, 1, PERSON, compressed_rle(rect(h, w, slice(0, 6), slice(12, 18))), 36.0, [12, 0, 6, 6]),
        ann(103, 1, BLACK_THING, uncompressed_rle(rect(h, w, slice(10, 14), slice(0, 5))), 20, [0, 10, 5, 4]),
        ann(104, 1, PERSON, uncompressed_rle(crowd), int(crowd.sum()), [0, 15, 10, 5], iscrowd=1),
        # before the sky: the sky's colour is reserved for it all the same
        ann(105, 1, SKYLIKE_THING, [[12, 9, 17, 9, 17, 12, 12, 12], [20, 9, 25, 9, 22, 12]], 30.0, [12, 9, 13, 3]),
        ann(106, 1, SKY, [[20, 0, 29, 0, 29, 6, 20, 6]], 54.25, [20, 0, 9, 6]),
        ann(107, 1, SKY, compressed_rle(rect(h, w, slice(15, 20), slice(20, 30))), 50.0, [20, 15, 10, 5]),
        ann(201, 2, BLACK_STUFF, uncompressed_rle(rect(8, 6, slice(0, 4), slice(0, 6))), 24.0, [0, 0, 6, 4]),
        ann(202, 2, PERSON, compressed_rle(rect(8, 6, slice(5, 8), slice(0, 3))), 9.0, [0, 5, 3, 3]),
    ]
    images = [
        {"id": 1, "file_name": "a.jpg", "height": h, "width": w},
        {"id": 2, "file_name": "b.x.jpeg", "height": 8, "width": 6},
        {"id": 3, "file_name": "c.jpg", "height": 4, "width": 5},
    ]
    return {"info": {"description": "tiny"}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person"}]}


def write_inputs(folder: Path, detection: dict, categories: list = CATEGORIES) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    det, cats = folder / "instances.json", folder / "categories.json"
    det.write_text(json.dumps(detection))
    cats.write_text(json.dumps(categories))
    return det, cats


def convert(folder: Path, det: Path, cats: Path, seed: int = 0, workers: int = 1) -> tuple[dict, Path, Path]:
    out_json, pngs = folder / "out" / "panoptic.json", folder / "out" / "panoptic"
    result = convert_detection_to_panoptic(det, out_json, pngs, cats, seed=seed, workers=workers)
    return result, out_json, pngs


def expected_segments(detection: dict, image_id: int) -> list[list[dict]]:
    """panopticapi's rule, regrouped: one segment per thing annotation, one per stuff category (first position)."""
    stuff = {c["id"] for c in CATEGORIES if not c["isthing"]}
    groups: list[list[dict]] = []
    by_stuff: dict[int, list[dict]] = {}
    for a in detection["annotations"]:
        if a["image_id"] != image_id:
            continue
        if a["category_id"] in stuff and a["category_id"] in by_stuff:
            by_stuff[a["category_id"]].append(a)
            continue
        groups.append([a])
        if a["category_id"] in stuff:
            by_stuff[a["category_id"]] = groups[-1]
    return groups


@pytest.mark.parametrize("trailing", ["", "/"], ids=["plain", "trailing-slash"])
def test_cli_names_the_folder_with_one_slash(tmp_path, capsys, trailing):
    det, cats = write_inputs(tmp_path, detection_dataset())
    out_json, pngs = tmp_path / "out.json", tmp_path / "pngs"
    argv = ["detection2panoptic", "--input-json", str(det), "-o", str(out_json),
            "--segmentations-folder", f"{pngs}{trailing}", "--categories-json", str(cats)]
    capsys.readouterr()
    assert run_subcommand("prepare", "", {"detection2panoptic": SUBCOMMANDS["detection2panoptic"]}, argv) == 0
    n_segments = sum(len(a["segments_info"]) for a in json.loads(out_json.read_text())["annotations"])
    assert capsys.readouterr().out == f"wrote 3 images, {n_segments} segments: {out_json}, {pngs}/\n"


def near(color, base, dist: int = 30) -> bool:
    return all(abs(int(c) - int(b)) <= dist for c, b in zip(color, base, strict=True))


def test_cli_output_matches_pycocotools_masks_and_panopticapi_rules(tmp_path, capsys):
    detection = detection_dataset()
    det, cats = write_inputs(tmp_path, detection)
    out_json, pngs = tmp_path / "out.json", tmp_path / "pngs"
    argv = ["detection2panoptic", "--input-json", str(det), "-o", str(out_json),
            "--segmentations-folder", str(pngs), "--categories-json", str(cats)]
    assert run_subcommand("prepare", "", {"detection2panoptic": SUBCOMMANDS["detection2panoptic"]}, argv) == 0
    panoptic = json.loads(out_json.read_text())
    assert validate_dataset(out_json, pngs) == 3

    assert panoptic["images"] == detection["images"]
    assert panoptic["info"] == detection["info"]
    assert [c["id"] for c in panoptic["categories"]] == sorted(c["id"] for c in CATEGORIES)
    assert [a["image_id"] for a in panoptic["annotations"]] == [1, 2, 3]
    assert [a["file_name"] for a in panoptic["annotations"]] == ["a.png", "b.png", "c.png"]

    coco = COCO(str(det))
    categories = categories_from_json(CATEGORIES)
    colors = {c["id"]: tuple(c["color"]) for c in CATEGORIES}
    for record, image in zip(panoptic["annotations"], detection["images"], strict=True):
        id_map = read_panoptic_png(pngs / record["file_name"])
        validate_annotation(record, id_map, categories, (image["height"], image["width"]))  # ids unique, non-0
        groups = expected_segments(detection, image["id"])
        assert len(record["segments_info"]) == len(groups)
        for seg, group in zip(record["segments_info"], groups, strict=True):
            want = np.zeros(id_map.shape, dtype=bool)
            for a in group:
                want |= coco.annToMask(coco.anns[a["id"]]).astype(bool)
            np.testing.assert_array_equal(id_map == seg["id"], want)
            assert seg["category_id"] == group[0]["category_id"]
            assert seg["area"] == pytest.approx(sum(a["area"] for a in group))
            x0 = min(a["bbox"][0] for a in group)
            y0 = min(a["bbox"][1] for a in group)
            x1 = max(a["bbox"][0] + a["bbox"][2] for a in group)
            y1 = max(a["bbox"][1] + a["bbox"][3] for a in group)
            assert seg["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
            assert seg["iscrowd"] == (group[0]["iscrowd"] if len(group) == 1 else 0)
            assert "segmentation" not in seg and "image_id" not in seg
        if not groups:
            assert not id_map.any()

    # Colours (panopticapi's IdGenerator, minus its black / shared-colour ids).
    seg1 = {s["category_id"]: [] for s in panoptic["annotations"][0]["segments_info"]}
    for s in panoptic["annotations"][0]["segments_info"]:
        seg1[s["category_id"]].append(tuple(id2rgb(s["id"])))
    assert seg1[PERSON][0] == colors[PERSON]  # first instance: the category colour
    assert all(near(c, colors[PERSON]) and c != colors[PERSON] for c in seg1[PERSON][1:])
    assert seg1[SKY] == [colors[SKY]]  # two stuff annotations, one segment, the category colour
    assert seg1[SKYLIKE_THING][0] != colors[SKY] and near(seg1[SKYLIKE_THING][0], colors[SKY])
    assert seg1[BLACK_THING][0] != (0, 0, 0) and near(seg1[BLACK_THING][0], (0, 0, 0))
    seg2 = {s["category_id"]: tuple(id2rgb(s["id"])) for s in panoptic["annotations"][1]["segments_info"]}
    assert seg2[BLACK_STUFF] != (0, 0, 0) and near(seg2[BLACK_STUFF], (0, 0, 0))
    assert seg2[PERSON] == colors[PERSON]  # taken colours are tracked per image


def test_black_category_colour_never_gives_id_0(tmp_path):
    masks = [rect(6, 6, slice(0, 2), slice(0, 6)), rect(6, 6, slice(3, 6), slice(0, 6))]
    anns = [ann(i, 5, BLACK_THING, compressed_rle(m), int(m.sum()), [0, 0, 1, 1]) for i, m in enumerate(masks)]
    detection = {"images": [{"id": 5, "file_name": "k.jpg", "height": 6, "width": 6}], "annotations": anns}
    det, cats = write_inputs(tmp_path, detection, [c for c in CATEGORIES if c["id"] == BLACK_THING])
    result, _, pngs = convert(tmp_path, det, cats)
    record = result["annotations"][0]
    id_map = read_panoptic_png(pngs / "k.png")
    validate_annotation(record, id_map, categories_from_json(CATEGORIES))
    ids = [s["id"] for s in record["segments_info"]]
    assert len(set(ids)) == 2 and 0 not in ids
    assert all(near(id2rgb(i), (0, 0, 0)) for i in ids)
    assert (id_map[2] == 0).all() and (id_map != 0).sum() == sum(int(m.sum()) for m in masks)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_for_any_worker_count_and_seed_matters(tmp_path):
    det, cats = write_inputs(tmp_path, detection_dataset())
    runs = {}
    for name, seed, workers in [("a", 0, 1), ("b", 0, 1), ("c", 0, 2), ("d", 1, 1)]:
        convert(tmp_path / name, det, cats, seed=seed, workers=workers)
        runs[name] = tree_bytes(tmp_path / name / "out")
    assert set(runs["a"]) == {"panoptic.json", "panoptic/a.png", "panoptic/b.png", "panoptic/c.png"}
    assert runs["a"] == runs["b"]
    assert runs["a"] == runs["c"]
    assert runs["a"]["panoptic.json"] != runs["d"]["panoptic.json"]  # random colours depend on the seed


def test_overlapping_masks_raise_naming_the_image_and_write_no_json(tmp_path):
    h, w = 6, 6
    masks = [rect(h, w, slice(0, 3), slice(0, 3)), rect(h, w, slice(1, 4), slice(1, 5)),
             rect(h, w, slice(2, 3), slice(2, 6))]
    n_overlap = int((sum(m.astype(int) for m in masks) > 1).sum())
    detection = {
        "images": [{"id": 7, "file_name": "x.jpg", "height": h, "width": w}],
        "annotations": [ann(i, 7, PERSON, compressed_rle(m), int(m.sum()), [0, 0, 1, 1]) for i, m in enumerate(masks)],
    }
    det, cats = write_inputs(tmp_path, detection)
    with pytest.raises(PansegError, match=rf"^{det}: segments of image 7 \(x\.jpg\) overlap at {n_overlap} pixels$"):
        convert(tmp_path, det, cats)
    assert not (tmp_path / "out" / "panoptic.json").exists()


def test_unknown_category_raises(tmp_path):
    detection = detection_dataset()
    detection["annotations"][3]["category_id"] = 99
    det, cats = write_inputs(tmp_path, detection)
    with pytest.raises(PansegError, match=r"annotation 104 of image 1 has category_id 99"):
        convert(tmp_path, det, cats)
    assert not (tmp_path / "out" / "panoptic.json").exists()


def test_numpy_values_in_an_in_memory_dataset_do_not_crash(tmp_path):
    h, w = np.int64(5), np.int64(7)
    m = rect(int(h), int(w), slice(1, 4), slice(2, 6))
    rle = mask_utils.encode(np.asfortranarray(m))  # counts as bytes, size as a list
    detection = {
        "images": [{"id": np.int64(4), "file_name": "n.jpg", "height": h, "width": w}],
        "annotations": [
            {"id": np.int32(1), "image_id": np.int64(4), "category_id": np.int64(PERSON), "segmentation": rle,
             "area": m.sum(), "bbox": np.array([2, 1, 4, 3]), "iscrowd": np.int8(0)},
            {"id": 2, "image_id": 4, "category_id": SKY, "segmentation": [np.array([0.0, 0, 6, 0, 6, 0.5, 0, 0.5])],
             "area": np.float32(3.5), "bbox": [0, 0, 6, 0.5], "iscrowd": 0},
        ],
    }
    categories = [dict(c, id=np.int64(c["id"]), color=np.array(c["color"])) for c in CATEGORIES]
    out_json, pngs = tmp_path / "p.json", tmp_path / "p"
    result = convert_detection_to_panoptic(detection, out_json, pngs, categories)
    assert json.loads(out_json.read_text()) == result
    segs = result["annotations"][0]["segments_info"]
    assert [s["area"] for s in segs] == [int(m.sum()), 3.5]
    assert segs[0]["bbox"] == [2, 1, 4, 3]
    id_map = read_panoptic_png(pngs / "n.png")
    np.testing.assert_array_equal(id_map == segs[0]["id"], m.astype(bool))


def test_empty_masks_are_skipped_with_a_warning(tmp_path, caplog):
    m = rect(4, 4, slice(0, 2), slice(0, 2))
    detection = {
        "images": [{"id": 1, "file_name": "e.jpg", "height": 4, "width": 4}],
        "annotations": [ann(1, 1, PERSON, [], 0, [0, 0, 0, 0]),
                        ann(2, 1, PERSON, [[1, 1, 3, 3]], 0, [1, 1, 2, 2]),  # two points: pycocotools crashes
                        ann(3, 1, PERSON, compressed_rle(m), 4, [0, 0, 2, 2])],
    }
    det, cats = write_inputs(tmp_path, detection)
    with caplog.at_level(logging.WARNING):
        result, _, pngs = convert(tmp_path, det, cats)
    record = result["annotations"][0]
    assert [s["area"] for s in record["segments_info"]] == [4]
    validate_annotation(record, read_panoptic_png(pngs / "e.png"), categories_from_json(CATEGORIES))
    assert "skipped 2 annotations" in caplog.text


def test_two_images_mapping_to_one_png_name_raise(tmp_path):
    detection = {"images": [{"id": 1, "file_name": "d.1.jpg", "height": 2, "width": 2},
                            {"id": 2, "file_name": "d.2.jpg", "height": 2, "width": 2}], "annotations": []}
    det, cats = write_inputs(tmp_path, detection)
    with pytest.raises(PansegError, match=r"images 1 and 2 would both be written to d\.png"):
        convert(tmp_path, det, cats)


def test_cli_bad_input_exits_1_with_one_line_and_no_partial_json(tmp_path, capsys):
    detection = detection_dataset()
    detection["annotations"][1]["segmentation"] = compressed_rle(rect(20, 30, slice(0, 8), slice(0, 18)))  # overlaps
    det, cats = write_inputs(tmp_path, detection)
    out_dir = tmp_path / "out"
    argv = ["detection2panoptic", "--input-json", str(det), "-o", str(out_dir / "pan.json"),
            "--categories-json", str(cats), "--workers", "2"]
    capsys.readouterr()
    assert run_subcommand("prepare", "", {"detection2panoptic": SUBCOMMANDS["detection2panoptic"]}, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segments of image 1 (a.jpg) overlap" in err[0] and str(det) in err[0]
    assert not (out_dir / "pan.json").exists()
    assert not [p for p in out_dir.rglob("*") if p.name.endswith(".tmp")]

"""Panoptic format: id <-> RGB encoding, PNG round trips, segment statistics and validation errors."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from runtime.categories import Category, categories_from_json, load_categories
from runtime.errors import PanopticFormatError
from runtime.panoptic_format import (
    id2rgb,
    read_panoptic_png,
    rgb2id,
    segment_stats,
    validate_annotation,
    validate_dataset,
    write_panoptic_png,
)

CATS = {1: Category(1, "circle", True, (220, 20, 60)), 7: Category(7, "sky", False, (70, 130, 180))}


@given(st.integers(min_value=0, max_value=256**3 - 1))
def test_id_rgb_round_trip_scalar(seg_id):
    r, g, b = id2rgb(seg_id)
    assert r + 256 * g + 256 * 256 * b == seg_id  # the COCO panoptic formula, written independently
    assert rgb2id((r, g, b)) == seg_id


def test_id_rgb_round_trip_array_and_png(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256**3, size=(17, 23), dtype=np.uint32)
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (17, 23, 3)
    r, g, b = (rgb[..., k].astype(np.int64) for k in range(3))
    expected = r + 256 * g + 65536 * b
    assert np.array_equal(expected, ids)
    write_panoptic_png(tmp_path / "a.png", ids)
    assert np.array_equal(read_panoptic_png(tmp_path / "a.png"), ids)
    assert list(tmp_path.iterdir()) == [tmp_path / "a.png"]  # no temporary file left behind


def test_id_out_of_range_is_refused():
    with pytest.raises(ValueError):
        id2rgb(256**3)
    with pytest.raises(ValueError):
        id2rgb(np.array([[256**3]], dtype=np.uint32))


def test_segment_stats_matches_brute_force():
    rng = np.random.default_rng(1)
    ids = rng.choice(np.array([0, 3, 9, 1000], dtype=np.uint32), size=(31, 19))
    stats = segment_stats(ids)
    assert set(stats) == {3, 9, 1000}
    for seg_id, s in stats.items():
        ys, xs = np.nonzero(ids == seg_id)
        assert s["area"] == len(ys)
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def _annotation(segments):
    return {"image_id": 5, "file_name": "x.png", "segments_info": segments}


def _id_map():
    m = np.zeros((4, 6), dtype=np.uint32)
    m[:2] = 11
    m[2:, :3] = 12
    return m  # id 0 (VOID) remains in the bottom-right corner


def test_valid_annotation_passes_with_area_check():
    segs = [{"id": 11, "category_id": 7, "area": 12}, {"id": 12, "category_id": 1, "area": 6}]
    validate_annotation(_annotation(segs), _id_map(), CATS, image_size=(4, 6), check_area=True)


@pytest.mark.parametrize(
    "segments, size, message",
    [
        ([{"id": 11, "category_id": 7}], (4, 6), "in the PNG but not in the JSON"),
        ([{"id": 11, "category_id": 7}, {"id": 12, "category_id": 1}, {"id": 13, "category_id": 1}], (4, 6),
         "in the JSON but not in the PNG"),
        ([{"id": 11, "category_id": 7}, {"id": 11, "category_id": 7}, {"id": 12, "category_id": 1}], (4, 6),
         "duplicate segment id 11"),
        ([{"id": 11, "category_id": 99}, {"id": 12, "category_id": 1}], (4, 6), "unknown category_id 99"),
        ([{"id": 11, "category_id": 7}, {"id": 12, "category_id": 1}], (5, 6), "PNG is 6x4, image is 6x5"),
        ([{"id": 0, "category_id": 7}], (4, 6), "reserved for VOID"),
        ([{"id": 11, "category_id": 7, "area": 3}, {"id": 12, "category_id": 1}], (4, 6), "has area 3"),
    ],
)
def test_validation_errors(segments, size, message):
    with pytest.raises(PanopticFormatError, match=message):
        validate_annotation(_annotation(segments), _id_map(), CATS, image_size=size, check_area=True)


def test_validate_dataset_missing_and_bad_png(tmp_path):
    data = {
        "images": [{"id": 5, "file_name": "x.jpg", "height": 4, "width": 6}],
        "annotations": [_annotation([{"id": 11, "category_id": 7}, {"id": 12, "category_id": 1}])],
        "categories": [c.to_json() for c in CATS.values()],
    }
    (tmp_path / "pan.json").write_text(json.dumps(data))
    with pytest.raises(PanopticFormatError, match="panoptic PNG missing"):
        validate_dataset(tmp_path / "pan.json", tmp_path)
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(PanopticFormatError, match="not a readable PNG"):
        validate_dataset(tmp_path / "pan.json", tmp_path)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(PanopticFormatError, match="must be RGB"):
        validate_dataset(tmp_path / "pan.json", tmp_path)
    write_panoptic_png(tmp_path / "x.png", _id_map())
    assert validate_dataset(tmp_path / "pan.json", tmp_path) == 1


def test_category_tables(tmp_path):
    path = tmp_path / "cats.json"
    path.write_text(json.dumps({"categories": [c.to_json() for c in CATS.values()]}))
    assert load_categories(path) == CATS
    with pytest.raises(PanopticFormatError, match="duplicate category id 1"):
        categories_from_json([CATS[1].to_json(), CATS[1].to_json()])
    with pytest.raises(PanopticFormatError, match="color"):
        categories_from_json([{"id": 2, "name": "x", "isthing": 1, "color": [300, 0, 0]}])
    path.write_text("{broken")
    with pytest.raises(PanopticFormatError, match="not valid JSON"):
        load_categories(path)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    from runtime.atomic import atomic_write_bytes

    atomic_write_bytes(tmp_path / "f.bin", b"x")
    old = os.umask(0o022)
    os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~old

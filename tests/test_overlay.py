"""Overlay pictures: exact alpha blending, untouched VOID, boxes at the bbox, labels, and the plain colour map."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from runtime.categories import Category
from runtime.errors import PansegError
from runtime.overlay import colorize_panoptic, interior_point, render_overlay, segment_colors

H, W = 120, 160
SKY = Category(1, "sky", False, (70, 130, 180))
PERSON = Category(2, "person", True, (220, 20, 60))
CATEGORIES = {1: SKY, 2: PERSON}
ALPHA = 0.4


def scene():
    """A random photo; stuff 'sky' in the top-left quarter, a disc-shaped 'person' whose bbox corners are VOID."""
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    ids = np.zeros((H, W), np.uint32)
    ids[:60, :80] = 5
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 85) ** 2 + (xx - 120) ** 2 <= 15**2
    ids[disc] = 7
    rows, cols = np.nonzero(disc)
    bbox = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
    segments = [
        {"id": 5, "category_id": 1, "isthing": False},
        {"id": 7, "category_id": 2, "isthing": True, "bbox": bbox, "score": 0.97},
    ]
    return photo, ids, segments, bbox


def expected_blend(pixel, color, alpha=ALPHA):
    return tuple(round(float(p) * (1 - alpha) + float(c) * alpha) for p, c in zip(pixel, color, strict=True))


def test_segment_pixels_are_the_exact_alpha_blend():
    photo, ids, segments, _ = scene()
    out = np.asarray(render_overlay(Image.fromarray(photo), ids, segments, CATEGORIES, alpha=ALPHA))
    # Blocks inside each segment, away from outlines (segment borders) and labels (sky centre, above the box).
    blocks = {SKY.color: (slice(3, 15), slice(3, 25)), PERSON.color: (slice(80, 91), slice(112, 119))}
    for color, (rs, cs) in blocks.items():
        for r in range(rs.start, rs.stop):
            for c in range(cs.start, cs.stop):
                assert tuple(out[r, c]) == expected_blend(photo[r, c], color), (r, c)


def test_void_pixels_are_unchanged_and_size_is_kept():
    photo, ids, segments, _ = scene()
    result = render_overlay(Image.fromarray(photo), ids, segments, CATEGORIES, alpha=ALPHA)
    assert result.size == (W, H) and result.mode == "RGB"
    out = np.asarray(result)
    np.testing.assert_array_equal(out[100:, :90], photo[100:, :90])  # VOID, far from any box or label
    assert not np.array_equal(out[:60, :80], photo[:60, :80])


def test_box_is_drawn_on_the_bbox_and_outlines_on_the_boundary():
    photo, ids, segments, (x, y, w, h) = scene()
    out = np.asarray(render_overlay(Image.fromarray(photo), ids, segments, CATEGORIES, alpha=ALPHA))
    assert ids[y + h - 1, x] == 0 and ids[y + h - 1, x + w - 1] == 0  # the bottom corners are VOID...
    assert tuple(out[y + h - 1, x]) == PERSON.color  # ...yet carry the box
    assert tuple(out[y + h - 1, x + w - 1]) == PERSON.color
    assert tuple(out[y + h // 2, x + w - 1]) == PERSON.color  # right edge
    assert tuple(out[y + h + 2, x]) == tuple(photo[y + h + 2, x])  # just outside the box: untouched
    # The sky/VOID boundary is outlined in the sky colour on the sky side only.
    assert tuple(out[30, 79]) == SKY.color and tuple(out[30, 80]) == tuple(photo[30, 80])


def test_labels_are_drawn_for_things_above_the_box_and_for_stuff_inside():
    photo, ids, segments, (x, y, w, h) = scene()
    out = np.asarray(render_overlay(Image.fromarray(photo), ids, segments, CATEGORIES, alpha=ALPHA))
    above = out[max(y - 14, 0):y, x:x + 30]
    assert (above == PERSON.color).all(axis=-1).sum() > 30  # the opaque label background
    r, c = interior_point(ids == 5)
    around = out[max(r - 8, 0):r + 8, max(c - 15, 0):c + 15]
    assert (around == SKY.color).all(axis=-1).sum() > 30
    assert (around > 200).all(axis=-1).any()  # light text on the dark-ish sky label


def test_touching_instances_get_different_colours():
    ids = np.zeros((20, 20), np.uint32)
    ids[:, :10], ids[:, 10:] = 1, 2
    segments = [{"id": 1, "category_id": 2, "isthing": True}, {"id": 2, "category_id": 2, "isthing": True}]
    colors = segment_colors(segments, CATEGORIES)
    assert colors[1] == PERSON.color and colors[2] != PERSON.color
    assert max(abs(a - b) for a, b in zip(colors[2], PERSON.color, strict=True)) <= 60  # still recognisably red
    out = np.asarray(render_overlay(Image.new("RGB", (20, 20), (128, 128, 128)), ids, segments, CATEGORIES))
    assert tuple(out[10, 5]) == expected_blend((128, 128, 128), colors[1], 0.5)
    assert tuple(out[10, 15]) == expected_blend((128, 128, 128), colors[2], 0.5)
    assert segment_colors(segments, CATEGORIES) == colors  # repeatable


def test_colorize_gives_category_colours_and_black_void():
    _, ids, segments, _ = scene()
    ids[0, 0] = 99  # an id without segments_info counts as VOID
    out = colorize_panoptic(ids, segments, CATEGORIES)
    by_id = {s["id"]: CATEGORIES[s["category_id"]].color for s in segments}
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    for r in range(0, H, 3):
        for c in range(0, W, 3):
            assert tuple(out[r, c]) == by_id.get(int(ids[r, c]), (0, 0, 0)), (r, c)


def test_interior_point_is_as_deep_as_any_pixel():
    mask = np.zeros((40, 50), bool)
    mask[5:35, 5:15] = mask[25:35, 5:45] = mask[5:35, 35:45] = True  # a U: its centroid lies outside
    r, c = interior_point(mask)
    depth = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="taxicab")[1:-1, 1:-1]
    assert mask[r, c] and depth[r, c] == depth.max()
    assert interior_point(np.zeros((4, 4), bool)) is None


def test_bad_input_is_a_clear_error():
    photo, ids, segments, _ = scene()
    image = Image.fromarray(photo)
    with pytest.raises(PansegError, match="does not match"):
        render_overlay(image, ids[:-1], segments, CATEGORIES)
    with pytest.raises(PansegError, match="category_id 9"):
        render_overlay(image, ids, [{"id": 5, "category_id": 9}], CATEGORIES)
    with pytest.raises(PansegError, match="alpha"):
        render_overlay(image, ids, segments, CATEGORIES, alpha=1.5)

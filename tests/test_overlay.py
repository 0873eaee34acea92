"""Overlay pictures: exact alpha blending, untouched VOID, boxes at the bbox, labels, instance colours, the legend,
and the plain colour map."""

import colorsys
import itertools

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from runtime.categories import Category
from runtime.errors import PansegError
from runtime.overlay import (
    colorize_panoptic,
    instance_colors,
    interior_point,
    label_font_size,
    legend_entries,
    render_overlay,
    segment_colors,
    vivid_stuff_color,
)

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
    assert np.linalg.norm(np.subtract(colors[2], PERSON.color)) <= 101  # still recognisably red
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


# ---------------------------------------------------------------- instance colours, stuff colours, legend, text size

WALL = Category(8, "wall", False, (166, 149, 130))  # the synthetic set's wall: a pale grey-brown
PAVEMENT = Category(9, "pavement", False, (96, 96, 96))
CAT = Category(3, "cat", True, (250, 170, 30))
MORE = {**CATEGORIES, 3: CAT, 8: WALL, 9: PAVEMENT}


def test_instances_of_one_category_get_distinct_colours_near_the_category_colour():
    segments = [{"id": 10 + k, "category_id": 2, "isthing": True} for k in range(6)]
    colors = [segment_colors(segments, CATEGORIES)[s["id"]] for s in segments]
    assert colors[0] == PERSON.color
    assert len(set(colors)) == 6
    distances = [np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(colors, 2)]
    assert min(distances) >= 40  # apart enough to tell overlapping instances apart
    assert all(np.linalg.norm(np.subtract(c, PERSON.color)) <= 101 for c in colors)  # a jitter, not a new hue


def test_instance_colours_depend_only_on_category_and_instance_index():
    people = [{"id": 10 + k, "category_id": 2, "isthing": True} for k in range(3)]
    alone = segment_colors(people, CATEGORIES)
    renumbered = [{**s, "id": 500 - s["id"]} for s in people]
    mixed = [renumbered[0], {"id": 1, "category_id": 3, "isthing": True}, {"id": 2, "category_id": 1},
             renumbered[1], renumbered[2]]
    again = segment_colors(mixed, MORE)
    assert [again[s["id"]] for s in renumbered] == [alone[s["id"]] for s in people]
    assert instance_colors(PERSON.color, 2, 5)[:3] == instance_colors(PERSON.color, 2, 3)
    assert instance_colors(PERSON.color, 2, 3) != instance_colors(PERSON.color, 3, 3)


def test_stuff_is_drawn_saturated_with_its_hue_and_greys_stay_grey():
    h0, s0, _ = colorsys.rgb_to_hsv(*(c / 255 for c in WALL.color))
    h1, s1, v1 = colorsys.rgb_to_hsv(*(c / 255 for c in vivid_stuff_color(WALL.color)))
    assert s0 < 0.25 and s1 >= 0.59 and abs(h1 - h0) < 0.01 and 0.34 <= v1 <= 0.91
    assert vivid_stuff_color(SKY.color) == SKY.color  # already vivid
    assert vivid_stuff_color(PAVEMENT.color) == PAVEMENT.color
    photo = np.full((60, 80, 3), 128, np.uint8)
    ids = np.full((60, 80), 4, np.uint32)
    out = np.asarray(render_overlay(Image.fromarray(photo), ids, [{"id": 4, "category_id": 8}], MORE, alpha=ALPHA,
                                    labels=False, legend=False))
    assert tuple(out[30, 40]) == expected_blend((128, 128, 128), vivid_stuff_color(WALL.color))


def test_legend_lists_exactly_the_classes_present():
    photo, ids, segments, _ = scene()
    ids[100:110, 10:30] = 9
    segments = [*segments, {"id": 9, "category_id": 8}]  # wall; 'cat' and 'pavement' are known but absent
    assert legend_entries(segments, MORE) == [("person", PERSON.color), ("sky", SKY.color),
                                              ("wall", vivid_stuff_color(WALL.color))]
    image = Image.fromarray(photo)
    with_legend = np.asarray(render_overlay(image, ids, segments, MORE, alpha=ALPHA))
    without = np.asarray(render_overlay(image, ids, segments, MORE, alpha=ALPHA, legend=False))
    rows, cols = np.nonzero((with_legend != without).any(axis=-1))
    assert rows.size and rows.max() < H // 3 and cols.min() > W // 2  # one panel, top right: no thing there
    panel = with_legend[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    for _, color in legend_entries(segments, MORE):
        assert (panel == color).all(axis=-1).sum() >= 16  # its swatch
    for absent in (CAT.color, PAVEMENT.color):
        assert not (panel == absent).all(axis=-1).any()


def _scaled_scene(factor: int):
    photo, ids, segments, bbox = scene()
    big = [{**s, "bbox": [v * factor for v in s["bbox"]]} if "bbox" in s else s for s in segments]
    return (Image.fromarray(np.kron(photo, np.ones((factor, factor, 1), np.uint8))),
            np.kron(ids, np.ones((factor, factor), np.uint32)), big)


def _text_share(image, ids, segments) -> float:
    """Share of the picture under labels and the legend: what differs from the same overlay without them."""
    full = np.asarray(render_overlay(image, ids, segments, CATEGORIES))
    bare = np.asarray(render_overlay(image, ids, segments, CATEGORIES, labels=False, legend=False))
    return float((full != bare).any(axis=-1).mean())


def test_text_scales_with_the_picture():
    assert label_font_size(171, 128) == 7 and label_font_size(640, 480) == 14
    assert label_font_size(1920, 1440) == 3 * label_font_size(640, 480)
    shares = [_text_share(*_scaled_scene(f)) for f in (4, 12)]
    assert 0.005 < shares[0] < 0.15 and abs(shares[1] / shares[0] - 1) < 0.35  # same share of a 3x larger picture


def test_labels_and_legend_leave_a_thumbnail_visible():
    rng = np.random.default_rng(5)
    photo = rng.integers(0, 256, (128, 171, 3), dtype=np.uint8)
    ids = np.zeros((128, 171), np.uint32)
    ids[:50] = 1
    ids[50:] = 2
    yy, xx = np.mgrid[:128, :171]
    segments = [{"id": 1, "category_id": 8}, {"id": 2, "category_id": 1}]
    for k, (r, c) in enumerate([(40, 40), (50, 60), (90, 110), (95, 135)]):  # four overlapping people
        ids[(yy - r) ** 2 + (xx - c) ** 2 <= 18**2] = 10 + k
        segments.append({"id": 10 + k, "category_id": 2, "score": 0.9})
    full = np.asarray(render_overlay(Image.fromarray(photo), ids, segments, MORE))
    bare = np.asarray(render_overlay(Image.fromarray(photo), ids, segments, MORE, labels=False, legend=False))
    assert (full != bare).any(axis=-1).mean() < 0.2

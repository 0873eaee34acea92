"""Panoptic and box post-processing: numpy runtime and torch version against a literal transcription of detr.

Comparisons between different float32 implementations (numpy vs torch) can only disagree where two upsampled mask
logits (or a class score and the threshold) are within rounding of each other; such generated cases are rejected
with ``assume`` instead of loosening any comparison. The torch version in detr_compat mode runs the same operations
as detr and is compared with no such rejection.
"""

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks.detr_reference import decode_png, post_process_boxes, post_process_panoptic
from benchmarks.torch_postprocess import PostProcess, PostProcessPanoptic
from runtime.categories import Category
from runtime.errors import PansegError
from runtime.panoptic_format import id2rgb, rgb2id, segment_stats, validate_annotation
from runtime.postprocess import (
    is_thing_map,
    nearest_taps,
    postprocess_boxes,
    postprocess_panoptic,
    softmax,
)
from runtime.upsample import bilinear_taps

CATEGORIES = {
    0: Category(0, "person", True),
    1: Category(1, "car", True),
    2: Category(2, "dog", True),
    3: Category(3, "sky", False),
    4: Category(4, "grass", False),
    5: Category(5, "road", False),
}
IS_THING = is_thing_map(CATEGORIES)
NUM_CLASSES = 6  # logits have NUM_CLASSES + 1 entries, the last one "no object"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@dataclass
class Case:
    logits: np.ndarray  # B x Q x (C+1) float32
    masks: np.ndarray  # B x Q x hm x wm float32, stride 4 of the padded batch
    processed: list  # per image (h, w)
    targets: list  # per image (H, W)
    threshold: float

    def torch_outputs(self):
        b, q = self.logits.shape[:2]
        return {
            "pred_logits": torch.from_numpy(self.logits),
            "pred_masks": torch.from_numpy(self.masks),
            "pred_boxes": torch.full((b, q, 4), 0.5),
        }


@st.composite
def cases(draw, max_images=1, max_side=28):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_images = draw(st.integers(1, max_images))
    n_queries = draw(st.integers(1, 7))
    kept = draw(st.sampled_from(["random", "random", "none", "all"]))
    dup_stuff, tie_masks, tiny = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())

    processed = [tuple(int(v) for v in rng.integers(1, max_side + 1, 2)) for _ in range(n_images)]
    targets = [tuple(int(v) for v in rng.integers(1, max_side + 12, 2)) for _ in range(n_images)]
    hm = -(-max(h for h, _ in processed) // 4)
    wm = -(-max(w for _, w in processed) // 4)

    logits = rng.normal(0, 1, (n_images, n_queries, NUM_CLASSES + 1))
    classes = rng.integers(0, NUM_CLASSES + 1, (n_images, n_queries))
    boost = rng.uniform(0, 10, (n_images, n_queries))
    if dup_stuff:  # several queries of one stuff category
        classes[:, : n_queries // 2 + 1] = 4
    if kept == "none":
        classes[:] = NUM_CLASSES
    elif kept == "all":
        classes = np.minimum(classes, NUM_CLASSES - 1)
        boost[:] = 14
    np.put_along_axis(logits, classes[..., None], np.take_along_axis(logits, classes[..., None], -1) + boost[..., None],
                      -1)
    threshold = float(rng.uniform(0.2, 0.95))

    masks = rng.normal(0, 3, (n_images, n_queries, hm, wm))
    if tie_masks and n_queries >= 2:  # exact ties over part of the image: the lower query index must win there
        masks[:, 1, : hm // 2 + 1] = masks[:, 0, : hm // 2 + 1]
    if tiny:  # one query that wins only around one cell: a few pixels, often <= 4 at the original size
        q = int(rng.integers(0, n_queries))
        masks[:, q] = -20
        masks[:, q, int(rng.integers(0, hm)), int(rng.integers(0, wm))] = 20
    return Case(logits.astype(np.float32), masks.astype(np.float32), processed, targets, threshold)


def near_tie(case: Case, crop: bool) -> bool:
    """True when float rounding could decide a class, the threshold, or a pixel's owner (see module docstring)."""
    for b, (h, w) in enumerate(case.processed):
        probs = softmax(case.logits[b])
        top2 = np.sort(probs, -1)[:, -2:]
        if np.any(top2[:, 1] - top2[:, 0] < 1e-6) or np.any(np.abs(top2[:, 1] - case.threshold) < 1e-6):
            return True
        keep = (probs.argmax(-1) != NUM_CLASSES) & (probs.max(-1) > case.threshold)
        masks = case.masks[b][keep]
        if masks.shape[0] < 2:
            continue
        if crop:
            masks = masks[:, : -(-h // 4), : -(-w // 4)]
        up = F.interpolate(torch.from_numpy(masks)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        gaps = np.diff(np.sort(up.double().numpy(), axis=0), axis=0)
        margin = 1e-6 * (1.0 + np.abs(masks).max())  # a few float32 ulps of the largest input
        if np.any((gaps > 0) & (gaps < margin)):
            return True
    return False


def run_reference(case: Case):
    preds = post_process_panoptic(case.torch_outputs(), case.processed, case.targets, IS_THING, case.threshold)
    return [(decode_png(p["png_string"]), p["segments_info"]) for p in preds]


def detr_view(result, first_id=1):
    """Our result in detr's numbering: ids from 0, and a map of zeros when there is no segment."""
    segments = [(s["id"] - first_id, s["category_id"], s["isthing"], s["area"]) for s in result.segments_info]
    id_map = result.id_map.astype(np.int64) - first_id if segments else np.zeros(result.id_map.shape, np.int64)
    return id_map, segments


def reference_view(ref):
    id_map, segments = ref
    return id_map, [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in segments]


def assert_same(ours_view, ref_view):
    assert ours_view[1] == ref_view[1]
    assert np.array_equal(ours_view[0], ref_view[0])


def assert_results_equal(a, b):
    assert np.array_equal(a.id_map, b.id_map) and a.id_map.dtype == b.id_map.dtype == np.uint32
    assert len(a.segments_info) == len(b.segments_info)
    for sa, sb in zip(a.segments_info, b.segments_info, strict=True):
        assert {k: v for k, v in sa.items() if k != "score"} == {k: v for k, v in sb.items() if k != "score"}
        assert sa["score"] == pytest.approx(sb["score"], abs=1e-6)


# ---------------------------------------------------------------- equal to detr


@given(cases(max_images=1))
@SETTINGS
def test_single_image_equals_detr_apart_from_ids(case):
    assume(not near_tie(case, crop=False))
    ref = run_reference(case)[0]
    ours = postprocess_panoptic(case.logits, case.masks, case.processed, case.targets, IS_THING, case.threshold)[0]
    assert_same(detr_view(ours), reference_view(ref))
    if ours.segments_info:  # the documented id fix: exactly detr's ids + 1, and 0 (VOID) never used by a segment
        assert np.array_equal(ours.id_map, ref[0] + 1)


@given(cases(max_images=3))
@SETTINGS
def test_detr_compat_equals_detr_on_padded_batches(case):
    assume(not near_tie(case, crop=False))
    refs = run_reference(case)
    ours = postprocess_panoptic(case.logits, case.masks, case.processed, case.targets, IS_THING, case.threshold,
                                detr_compat=True)
    for result, ref in zip(ours, refs, strict=True):
        assert_same(detr_view(result, first_id=0), reference_view(ref))


@given(cases(max_images=3))
@SETTINGS
def test_torch_detr_compat_is_detr_exactly(case):
    refs = run_reference(case)
    module = PostProcessPanoptic(IS_THING, case.threshold, detr_compat=True)
    ours = module(case.torch_outputs(), case.processed, case.targets)
    for result, ref in zip(ours, refs, strict=True):
        assert_same(detr_view(result, first_id=0), reference_view(ref))


@given(cases(max_images=3), st.booleans())
@SETTINGS
def test_numpy_equals_torch(case, merge_stuff):
    assume(not near_tie(case, crop=True))
    ours = postprocess_panoptic(case.logits, case.masks, case.processed, case.targets, IS_THING, case.threshold,
                                merge_stuff=merge_stuff)
    module = PostProcessPanoptic(IS_THING, case.threshold, merge_stuff=merge_stuff)
    theirs = module(case.torch_outputs(), case.processed, [torch.tensor(t) for t in case.targets])
    for a, b in zip(ours, theirs, strict=True):
        assert_results_equal(a, b)


@given(cases(max_images=3), st.booleans())
@SETTINGS
def test_padding_does_not_change_an_images_result(case, merge_stuff):
    """The crop fix: an image in a padded batch gets what it gets alone, with the masks of its own region."""
    batch = postprocess_panoptic(case.logits, case.masks, case.processed, case.targets, IS_THING, case.threshold,
                                 merge_stuff=merge_stuff)
    for b, (h, w) in enumerate(case.processed):
        own = case.masks[b : b + 1, :, : -(-h // 4), : -(-w // 4)]
        alone = postprocess_panoptic(case.logits[b : b + 1], own, [(h, w)], [case.targets[b]], IS_THING,
                                     case.threshold, merge_stuff=merge_stuff)[0]
        assert_results_equal(batch[b], alone)


# ---------------------------------------------------------------- invariants


def check_invariants(case: Case, results, merge_stuff: bool):
    for b, result in enumerate(results):
        id_map, segments = result.id_map, result.segments_info
        assert id_map.dtype == np.uint32 and id_map.shape == tuple(case.targets[b])
        ids = [s["id"] for s in segments]
        assert ids == list(range(1, len(segments) + 1))
        # detr gives every pixel to some kept query: no VOID unless there is no segment at all
        assert bool((id_map > 0).all()) if segments else bool((id_map == 0).all())
        stats = segment_stats(id_map)
        assert set(stats) == set(ids)
        validate_annotation({"image_id": b, "file_name": "x.png", "segments_info": segments}, id_map, CATEGORIES,
                            check_area=True)
        probs = softmax(case.logits[b])
        kept = (probs.argmax(-1) != NUM_CLASSES) & (probs.max(-1) > case.threshold)
        kept_pairs = [(int(probs[q].argmax()), float(probs[q].max())) for q in np.flatnonzero(kept)]
        for s in segments:
            assert s["area"] == stats[s["id"]]["area"] > 4
            assert s["bbox"] == stats[s["id"]]["bbox"]
            assert s["isthing"] == CATEGORIES[s["category_id"]].isthing
            assert s["score"] > case.threshold
            # the segment is one kept query's (its class and probability); merged stuff takes the best member's
            assert any(c == s["category_id"] and abs(p - s["score"]) < 1e-9 for c, p in kept_pairs)
        # holds for detr too: the first pass always drops stuff duplicates (their area is 0), and passes only drop
        stuff = Counter(s["category_id"] for s in segments if not s["isthing"])
        assert all(n == 1 for n in stuff.values())
        if not merge_stuff:  # segments appear in query order: their scores are a subsequence of the kept ones
            it = iter(kept_pairs)
            assert all(any(pair == (s["category_id"], pytest.approx(s["score"])) for pair in it) for s in segments)


@given(cases(max_images=3), st.booleans())
@SETTINGS
def test_invariants(case, merge_stuff):
    results = postprocess_panoptic(case.logits, case.masks, case.processed, case.targets, IS_THING, case.threshold,
                                   merge_stuff=merge_stuff)
    check_invariants(case, results, merge_stuff)


@given(cases(max_images=1))
@SETTINGS
def test_detr_itself_keeps_at_most_one_segment_per_stuff_category(case):
    for _, segments in run_reference(case):
        stuff = Counter(s["category_id"] for s in segments if not s["isthing"])
        assert all(n == 1 for n in stuff.values())
        assert all(s["area"] > 4 for s in segments)


# ---------------------------------------------------------------- constructed cases


def one_hot_logits(classes, strength=12.0):
    """1 x Q x (C+1) logits whose argmax is ``classes[q]`` with probability close to 1."""
    logits = np.zeros((1, len(classes), NUM_CLASSES + 1), np.float32)
    for q, c in enumerate(classes):
        logits[0, q, c] = strength
    return logits


def test_padded_batch_fix_on_a_case():
    # Batch of a 32x32 and a 16x16 image: masks at stride 4 of the padded 32x32, i.e. 8x8. The small image owns the
    # top-left 4x4 cells. Query 0 (sky) wins its left half, query 1 (person) its right half and all the padding.
    logits = np.concatenate([one_hot_logits([3, 0]), one_hot_logits([3, 0])])
    masks = np.zeros((2, 2, 8, 8), np.float32)
    masks[:, 0] = -5
    masks[:, 0, :, :2] = 5
    masks[:, 1] = -masks[:, 0]
    sizes = [(32, 32), (16, 16)]
    ours = postprocess_panoptic(logits, masks, sizes, sizes, IS_THING)[1]
    expected = np.zeros((16, 16), np.uint32)
    expected[:, :8] = 1  # the bilinear boundary between cells 1 and 2 falls between pixels 7 and 8
    expected[:, 8:] = 2
    assert np.array_equal(ours.id_map, expected)
    assert [s["area"] for s in ours.segments_info] == [128, 128]

    outputs = {"pred_logits": torch.from_numpy(logits), "pred_masks": torch.from_numpy(masks),
               "pred_boxes": torch.zeros(2, 2, 4)}
    detr_map, detr_segments = reference_view(
        [(decode_png(p["png_string"]), p["segments_info"]) for p in post_process_panoptic(
            outputs, sizes, sizes, IS_THING, 0.85)][1])
    assert detr_segments[0][3] == 64  # detr squeezes the padded 8x8 grid into 16x16: the sky shrinks to a quarter
    compat = postprocess_panoptic(logits, masks, sizes, sizes, IS_THING, detr_compat=True)[1]
    assert_same(detr_view(compat, first_id=0), (detr_map, detr_segments))
    # and detr on the image alone (no padding) agrees with our padded-batch result
    alone = {"pred_logits": outputs["pred_logits"][1:], "pred_masks": outputs["pred_masks"][1:, :, :4, :4],
             "pred_boxes": torch.zeros(1, 2, 4)}
    single = post_process_panoptic(alone, sizes[1:], sizes[1:], IS_THING, 0.85)[0]
    assert np.array_equal(decode_png(single["png_string"]) + 1, ours.id_map)


def full_resolution_case(mask_columns, classes, shape, target):
    """Masks given at the processed resolution (mask_stride=1, so bilinear is the identity) for exact control."""
    h, w = shape
    masks = np.zeros((1, len(classes), h, w), np.float32)
    for q, values in enumerate(mask_columns):
        masks[0, q] = np.asarray(values, np.float32)
    return one_hot_logits(classes), masks, [shape], [target]


def run_both(logits, masks, sizes, targets, **kwargs):
    ours = postprocess_panoptic(logits, masks, sizes, targets, IS_THING, mask_stride=1, **kwargs)[0]
    outputs = {"pred_logits": torch.from_numpy(logits), "pred_masks": torch.from_numpy(masks),
               "pred_boxes": torch.zeros(logits.shape[0], logits.shape[1], 4)}
    ref = post_process_panoptic(outputs, sizes, targets, IS_THING, 0.85)[0]
    return ours, (decode_png(ref["png_string"]), ref["segments_info"])


def test_duplicate_stuff_dropped_like_detr_or_merged():
    # 6 x 9 image, three column bands. q0 and q1 are both sky (stuff), q2 is a person; in the middle band q1 is best
    # and q2 second. detr: q1's pixels first go to q0, then q1 (area 0) is dropped and the middle band is recomputed
    # without q1 -> it goes to q2. merge_stuff: sky = left + middle bands.
    bands = np.repeat(np.arange(3), 3)[None, :].repeat(6, 0)
    q0 = np.where(bands == 0, 10, 0)
    q1 = np.where(bands == 1, 10, 0)
    q2 = np.select([bands == 1, bands == 2], [5, 10], 0)
    case = full_resolution_case([q0, q1, q2], [3, 3, 0], (6, 9), (6, 9))
    ours, ref = run_both(*case)
    assert_same(detr_view(ours), reference_view(ref))
    assert [(s["category_id"], s["area"]) for s in ours.segments_info] == [(3, 18), (0, 36)]
    merged = postprocess_panoptic(*case, IS_THING, mask_stride=1, merge_stuff=True)[0]
    assert [(s["category_id"], s["area"]) for s in merged.segments_info] == [(3, 36), (0, 18)]
    assert np.array_equal(merged.id_map, np.where(bands < 2, 1, 2))
    assert merged.segments_info[0]["bbox"] == [0, 0, 6, 6]


@pytest.mark.parametrize(
    "target,block_rows,kept",
    [
        ((16, 16), 2, True),  # 2x2 block = 4 processed pixels, but 16 original pixels: kept
        ((8, 8), 2, False),  # 4 pixels: dropped (area <= 4)
        ((8, 8), 3, True),  # 6 pixels: kept
        ((4, 4), 3, False),  # 6 processed pixels, but NEAREST down to 4x4 samples only one of them: dropped
    ],
)
def test_small_segments_are_judged_at_the_original_size(target, block_rows, kept):
    thing = np.zeros((8, 8))
    thing[2 : 2 + block_rows, 2:4] = 10
    case = full_resolution_case([thing, np.full((8, 8), 1.0)], [0, 4], (8, 8), target)
    ours, ref = run_both(*case)
    assert_same(detr_view(ours), reference_view(ref))
    categories = [s["category_id"] for s in ours.segments_info]
    assert categories == ([0, 4] if kept else [4])
    if not kept:  # the dropped segment's pixels went to the remaining query
        assert ours.segments_info[0]["area"] == target[0] * target[1]


def test_nothing_kept_gives_an_all_void_map_like_detr():
    logits = np.zeros((1, 3, NUM_CLASSES + 1), np.float32)
    logits[..., NUM_CLASSES] = 10  # every query says "no object"
    masks = np.random.default_rng(0).normal(size=(1, 3, 3, 4)).astype(np.float32)
    case = Case(logits, masks, [(10, 13)], [(7, 5)], 0.85)
    ours = postprocess_panoptic(logits, masks, case.processed, case.targets, IS_THING)[0]
    assert ours.segments_info == [] and ours.id_map.shape == (7, 5) and not ours.id_map.any()
    id_map, segments = run_reference(case)[0]
    assert segments == [] and id_map.shape == (7, 5) and not id_map.any()
    torch_result = PostProcessPanoptic(IS_THING)(case.torch_outputs(), case.processed, case.targets)[0]
    assert_results_equal(torch_result, ours)


def test_softmax_rounding_ties_follow_detr_only_in_torch_compat_mode():
    # Two person queries whose logits differ by one float32 ulp everywhere: detr's softmax over queries rounds both to
    # 0.5, so its argmax takes the first; the logits themselves say the second. Only one of them can survive.
    low = np.float32(0.01)
    high = np.nextafter(low, np.float32(1))
    masks = np.stack([np.full((4, 4), low), np.full((4, 4), high)])[None].astype(np.float32)
    logits = one_hot_logits([0, 1])
    outputs = {"pred_logits": torch.from_numpy(logits), "pred_masks": torch.from_numpy(masks),
               "pred_boxes": torch.zeros(1, 2, 4)}
    ref = post_process_panoptic(outputs, [(4, 4)], None, IS_THING, 0.85)[0]
    assert [s["category_id"] for s in ref["segments_info"]] == [0]  # detr: the first query wins the rounding tie
    compat = PostProcessPanoptic(IS_THING, detr_compat=True)(outputs, [(4, 4)])[0]
    assert_same(detr_view(compat, first_id=0), reference_view((decode_png(ref["png_string"]), ref["segments_info"])))
    ours = postprocess_panoptic(logits, masks, [(4, 4)], None, IS_THING, mask_stride=1)[0]
    default_torch = PostProcessPanoptic(IS_THING, mask_stride=1)(outputs, [(4, 4)])[0]
    assert [s["category_id"] for s in ours.segments_info] == [1]  # by the logits, the second query is higher
    assert_results_equal(ours, default_torch)


def test_errors_are_clear():
    logits = one_hot_logits([3])
    masks = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(PansegError, match="too small"):
        postprocess_panoptic(logits, masks, [(12, 8)], None, IS_THING)  # needs 3 x 2 cells at stride 4
    with pytest.raises(PansegError, match=r"class ids \[3\] are not in the category table"):
        postprocess_panoptic(logits, masks, [(8, 8)], None, {0: True})
    with pytest.raises(ValueError, match="batch sizes differ"):
        postprocess_panoptic(logits, masks, [(8, 8), (8, 8)], None, IS_THING)


# ---------------------------------------------------------------- building blocks and boxes


@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 90), st.integers(1, 90))
@settings(max_examples=60, deadline=None)
def test_nearest_taps_reproduce_pil_nearest_resize_of_an_id_image(h, w, out_h, out_w):
    ids = np.random.default_rng(h * 1000 + w).integers(0, 2**24, (h, w)).astype(np.uint32)
    resized = Image.fromarray(id2rgb(ids)).resize((out_w, out_h), Image.NEAREST)
    assert np.array_equal(rgb2id(np.asarray(resized)), ids[nearest_taps(h, out_h)][:, nearest_taps(w, out_w)])


@given(st.integers(1, 30), st.integers(1, 90))
@settings(max_examples=60, deadline=None)
def test_bilinear_taps_match_f_interpolate(n_in, n_out):
    x = np.random.default_rng(n_in * 100 + n_out).normal(size=(1, 1, 1, n_in)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=(1, n_out), mode="bilinear", align_corners=False)[0, 0, 0].numpy()
    i0, i1, w0, w1 = bilinear_taps(n_in, n_out)
    np.testing.assert_allclose(x[0, 0, 0, i0] * w0 + x[0, 0, 0, i1] * w1, ref, rtol=0, atol=1e-5)


def test_boxes_equal_detr_postprocess():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, (3, 7, NUM_CLASSES + 1)).astype(np.float32)
    boxes = rng.uniform(0.05, 0.95, (3, 7, 4)).astype(np.float32)
    sizes = torch.tensor([[480, 640], [333, 500], [1, 1]])
    ref = post_process_boxes({"pred_logits": torch.from_numpy(logits), "pred_boxes": torch.from_numpy(boxes)}, sizes)
    ours = postprocess_boxes(logits, boxes, sizes.tolist())
    module = PostProcess()({"pred_logits": torch.from_numpy(logits), "pred_boxes": torch.from_numpy(boxes)}, sizes)
    for r, o, m in zip(ref, ours, module, strict=True):
        np.testing.assert_allclose(o["scores"], r["scores"].numpy(), atol=1e-6)
        assert np.array_equal(o["labels"], r["labels"].numpy()) and torch.equal(m["labels"], r["labels"])
        np.testing.assert_allclose(o["boxes"], r["boxes"].numpy(), rtol=1e-6, atol=1e-4)
        assert torch.equal(m["boxes"], r["boxes"]) and torch.equal(m["scores"], r["scores"])
    # no-object is never a label, and boxes are in pixels of the target size
    assert all(int(o["labels"].max()) < NUM_CLASSES for o in ours)
    cx, cy, w, h = boxes[0, 0]
    np.testing.assert_allclose(ours[0]["boxes"][0], [(cx - w / 2) * 640, (cy - h / 2) * 480, (cx + w / 2) * 640,
                                                     (cy + h / 2) * 480], rtol=1e-5)

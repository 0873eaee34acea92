"""The banded, queries-last, threaded argmax of runtime/upsample.py against a brute-force reference.

The reference upsamples every query to the whole processed image in the documented arithmetic order (horizontal pass,
then vertical, one float32 rounding per operation) and takes numpy's argmax over the query axis, with no banding, no
layout change and no threads: the fast path must give the same owner at every pixel, bit for bit, however the work
is split. The reference's values are also checked against torch's F.interpolate (to float rounding), and the argmax
against torch's wherever the best two queries are apart by more than rounding.
"""

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import upsample
from runtime.categories import Category
from runtime.postprocess import is_thing_map, nearest_taps, panoptic_segmentation
from runtime.upsample import SampledBilinear, bilinear_taps

IS_THING = is_thing_map([Category(0, "person", True), Category(1, "car", True), Category(2, "sky", False),
                         Category(3, "grass", False)])


def brute_force_values(masks: np.ndarray, processed: tuple[int, int]) -> np.ndarray:
    """K x H x W bilinear upsampling of the whole image, horizontal pass first, none of the fast path's tricks."""
    k, h, w = masks.shape
    y0, y1, wy0, wy1 = bilinear_taps(h, processed[0])
    x0, x1, wx0, wx1 = bilinear_taps(w, processed[1])
    horizontal = np.empty((k, h, processed[1]), np.float32)
    for c in range(processed[1]):
        horizontal[:, :, c] = masks[:, :, x0[c]] * wx0[c] + masks[:, :, x1[c]] * wx1[c]
    out = np.empty((k, processed[0], processed[1]), np.float32)
    for r in range(processed[0]):
        out[:, r] = horizontal[:, y0[r]] * wy0[r] + horizontal[:, y1[r]] * wy1[r]
    return out


def sampled(n_processed: int, n_target: int) -> np.ndarray:
    return np.unique(nearest_taps(n_processed, n_target))


def random_masks(rng: np.random.Generator, k: int, h: int, w: int, ties: bool) -> np.ndarray:
    masks = rng.normal(0, 3, (k, h, w)).astype(np.float32)
    if ties and k > 1:
        masks[-1] = masks[0]  # exact ties everywhere between the first and last query: the first must win
        masks[1 % k, : h // 2] = masks[0, : h // 2]
        # Near ties: one ulp away from query 0, so which one wins depends on the exact rounding of every operation.
        masks[k // 2] = np.nextafter(masks[0], np.where(rng.random((h, w)) < 0.5, -np.inf, np.inf)).astype(np.float32)
    return masks


@st.composite
def problems(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.integers(1, 9))
    processed = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    mask_h, mask_w = -(-processed[0] // 4), -(-processed[1] // 4)
    target = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))  # smaller and larger than processed
    masks = random_masks(rng, k, mask_h, mask_w, draw(st.booleans()))
    # Band sizes from "one value" (one row per step, two source rows per band) up to "everything at once".
    source_elements = draw(st.sampled_from([1, 7, 100, 1 << 20]))
    output_elements = draw(st.sampled_from([1, 13, 1 << 20]))
    threads = draw(st.sampled_from([1, 2, 3]))
    return masks, processed, target, source_elements, output_elements, threads


@given(problems())
@settings(max_examples=80, deadline=None)
def test_fast_argmax_equals_brute_force_bit_for_bit(problem):
    masks, processed, target, source_elements, output_elements, threads = problem
    rows, cols = sampled(processed[0], target[0]), sampled(processed[1], target[1])
    reference = brute_force_values(masks, processed)[:, rows][:, :, cols].argmax(axis=0)
    fast = SampledBilinear(masks, processed, rows, cols, source_elements, output_elements)
    with mock.patch.object(upsample, "MIN_ELEMENTS_PER_THREAD", 1):  # threads even on these small problems
        assert np.array_equal(fast.argmax(threads), reference)


@given(problems())
@settings(max_examples=60, deadline=None)
def test_fast_values_equal_brute_force_bit_for_bit(problem):
    """Stronger than the argmax: every value, so any change in the order or rounding of an operation shows."""
    masks, processed, target, source_elements, output_elements, _ = problem
    rows, cols = sampled(processed[0], target[0]), sampled(processed[1], target[1])
    reference = brute_force_values(masks, processed)[:, rows][:, :, cols]
    fast = SampledBilinear(masks, processed, rows, cols, source_elements, output_elements).values()
    assert np.array_equal(fast, reference.transpose(1, 2, 0))


@given(problems(), st.data())
@settings(max_examples=60, deadline=None)
def test_argmax_at_pixels_equals_brute_force(problem, data):
    masks, processed, target, *_ = problem
    rows, cols = sampled(processed[0], target[0]), sampled(processed[1], target[1])
    values = brute_force_values(masks, processed)[:, rows][:, :, cols]
    queries = np.flatnonzero(np.array(data.draw(st.lists(st.booleans(), min_size=masks.shape[0],
                                                              max_size=masks.shape[0]).filter(any))))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    r = rng.integers(0, rows.size, 50)
    c = rng.integers(0, cols.size, 50)
    expected = values[queries][:, r, c].argmax(axis=0)
    fast = SampledBilinear(masks, processed, rows, cols)
    # both ways of re-deciding pixels (gathered values, or the banded argmax over their rows) and the automatic choice
    for whole_rows in (False, True, None):
        assert np.array_equal(fast.argmax_at(r, c, queries, chunk=7, whole_rows=whole_rows), expected), whole_rows


def test_brute_force_reference_is_torch_bilinear_up_to_rounding():
    rng = np.random.default_rng(3)
    masks = rng.normal(0, 3, (5, 9, 13)).astype(np.float32)
    ours = brute_force_values(masks, (33, 50))
    ref = F.interpolate(torch.from_numpy(masks)[None], size=(33, 50), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-5)
    top2 = np.sort(ours, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4  # where rounding cannot reorder the best two queries
    assert clear.mean() > 0.9
    assert np.array_equal(ours.argmax(0)[clear], ref.argmax(0).numpy()[clear])


def test_real_sized_problem_with_many_bands_and_threads(monkeypatch):
    """A photo-like shape (mask grid 50 x 75 -> processed 200 x 300 -> original 130 x 190), many bands, 2 threads."""
    monkeypatch.setattr(upsample, "MIN_ELEMENTS_PER_THREAD", 1)
    rng = np.random.default_rng(11)
    smooth = rng.normal(0, 1, (24, 13, 19)).astype(np.float32)
    masks = np.stack([np.kron(s, np.ones((4, 4), np.float32))[:50, :75] for s in smooth])
    masks += rng.normal(0, 0.5, masks.shape).astype(np.float32)
    rows, cols = sampled(200, 130), sampled(300, 190)
    reference = brute_force_values(masks, (200, 300))[:, rows][:, :, cols].argmax(axis=0)
    fast = SampledBilinear(masks, (200, 300), rows, cols, source_elements=24 * 190 * 3, output_elements=24 * 190 * 2)
    assert len(upsample._bands(fast._y0, fast._y1, 24 * 190, *fast._sizes)) > 10
    assert np.array_equal(fast.argmax(2), reference)
    assert np.array_equal(fast.argmax(1), reference)


@pytest.mark.parametrize("merge_stuff", [False, True])
def test_panoptic_result_does_not_depend_on_bands_or_threads(monkeypatch, merge_stuff):
    rng = np.random.default_rng(5)
    masks = rng.normal(0, 2, (12, 20, 30)).astype(np.float32)
    masks[3] -= 4  # a query that loses almost everywhere, so the small-segment loop re-decides its pixels
    labels = rng.integers(0, 4, 12)
    scores = rng.uniform(0.9, 1.0, 12)
    args = (masks, scores, labels, (80, 120), (61, 97), IS_THING)
    default = panoptic_segmentation(*args, merge_stuff=merge_stuff, threads=1)
    monkeypatch.setattr(upsample, "SOURCE_ELEMENTS", 1)
    monkeypatch.setattr(upsample, "OUTPUT_ELEMENTS", 1)
    monkeypatch.setattr(upsample, "MIN_ELEMENTS_PER_THREAD", 1)
    split = panoptic_segmentation(*args, merge_stuff=merge_stuff, threads=3)
    assert np.array_equal(split.id_map, default.id_map)
    assert split.segments_info == default.segments_info
    assert 2 <= len(default.segments_info) < masks.shape[0]  # some queries were dropped and their pixels re-decided


def test_bad_arguments_are_refused():
    masks = np.zeros((0, 4, 4), np.float32)
    with pytest.raises(ValueError, match="no queries"):
        SampledBilinear(masks, (16, 16), np.arange(16), np.arange(16))
    with pytest.raises(ValueError, match="sorted"):
        SampledBilinear(np.zeros((2, 4, 4), np.float32), (16, 16), np.array([3, 1]), np.arange(16))

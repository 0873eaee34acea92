"""runtime.mask_argmax: the bounded, lazy argmax equals a brute-force dense upsample-then-argmax, ties and all."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from runtime.mask_argmax import UpsampledArgmax, bilinear_taps


def dense_owner(masks, processed, rows, cols, queries):
    """Brute force: upsample every query to the full processed size (separable, float32), then argmax."""
    m = masks[queries]
    y0, y1, wy0, wy1 = bilinear_taps(m.shape[1], processed[0])
    x0, x1, wx0, wx1 = bilinear_taps(m.shape[2], processed[1])
    hz = m[:, :, x0] * wx0 + m[:, :, x1] * wx1
    full = hz[:, y0] * wy0[:, None] + hz[:, y1] * wy1[:, None]
    return queries[full[:, rows][:, :, cols].argmax(0)]


def smooth_masks(rng, k, h, w, sigma=3.0):
    noise = rng.standard_normal((k, h, w))
    return np.stack([gaussian_filter(n, sigma=sigma) * 10 for n in noise]).astype(np.float32)


def grid(processed, target, rng):
    rows = np.unique(rng.integers(0, processed[0], target[0]))
    cols = np.unique(rng.integers(0, processed[1], target[1]))
    return rows, cols


CASES = {
    "smooth": lambda rng: smooth_masks(rng, 7, 13, 17),
    # integer logits: many exact ties, which must go to the lowest query
    "ties": lambda rng: rng.integers(-2, 3, (6, 13, 17)).astype(np.float32),
    # duplicated queries: equal everywhere
    "duplicates": lambda rng: np.repeat(smooth_masks(rng, 3, 13, 17), 2, axis=0),
    "constant": lambda rng: np.zeros((4, 13, 17), np.float32),
    "large": lambda rng: smooth_masks(rng, 5, 13, 17) * np.float32(1e25),
    "nan": lambda rng: np.where(rng.random((5, 13, 17)) < 0.05, np.nan, smooth_masks(rng, 5, 13, 17)).astype(
        np.float32),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", range(3))
def test_owners_equal_dense_argmax(case, seed):
    rng = np.random.default_rng(seed)
    masks = CASES[case](rng)
    processed = (4 * masks.shape[1] - int(rng.integers(0, 4)), 4 * masks.shape[2] - int(rng.integers(0, 4)))
    rows, cols = grid(processed, (int(rng.integers(20, 70)), int(rng.integers(20, 70))), rng)
    up = UpsampledArgmax(masks, processed, rows, cols)
    everyone = np.arange(masks.shape[0])
    np.testing.assert_array_equal(up.owners(everyone), dense_owner(masks, processed, rows, cols, everyone))

    # a subset of queries at a subset of pixels, as after dropping small segments
    subset = np.flatnonzero(rng.random(masks.shape[0]) < 0.6)
    if subset.size == 0:
        subset = everyone[-1:]
    r, c = np.nonzero(rng.random((rows.size, cols.size)) < 0.3)
    expected = dense_owner(masks, processed, rows, cols, subset)[r, c]
    np.testing.assert_array_equal(up.owners(subset, r, c), expected)


def test_values_match_dense_upsampling_bit_for_bit():
    rng = np.random.default_rng(5)
    masks = smooth_masks(rng, 3, 11, 9)
    processed, rows, cols = (41, 35), np.arange(41), np.arange(35)
    up = UpsampledArgmax(masks, processed, rows, cols)
    y0, y1, wy0, wy1 = bilinear_taps(11, 41)
    x0, x1, wx0, wx1 = bilinear_taps(9, 35)
    hz = masks[:, :, x0] * wx0 + masks[:, :, x1] * wx1
    full = hz[:, y0] * wy0[:, None] + hz[:, y1] * wy1[:, None]
    q, r, c = np.indices(full.shape).reshape(3, -1)
    np.testing.assert_array_equal(up.values(q, r, c), full.ravel())


def test_smooth_masks_decide_most_cells_without_evaluation(monkeypatch):
    """The point of the bounds: on blob-like masks few (query, pixel) values are computed, not all K x pixels."""
    rng = np.random.default_rng(0)
    masks = smooth_masks(rng, 10, 50, 67, sigma=6.0)
    rows, cols = np.arange(200), np.arange(268)
    up = UpsampledArgmax(masks, (200, 268), rows, cols)
    evaluated = []
    original = up.values
    monkeypatch.setattr(up, "values", lambda q, r, c: evaluated.append(np.size(r)) or original(q, r, c))
    owner = up.owners(np.arange(10))
    np.testing.assert_array_equal(owner, dense_owner(masks, (200, 268), rows, cols, np.arange(10)))
    assert sum(evaluated) < 0.1 * 10 * owner.size

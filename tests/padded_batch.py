"""Shared test helper: a random batch padded the way detr's NestedTensor pads, as the exported graphs take it."""

import numpy as np


def random_padded_batch(shapes: list[tuple[int, int]], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random normalized images of the given sizes, zero-padded at the bottom/right, and the padding mask."""
    rng = np.random.default_rng(seed)
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    images = np.zeros((len(shapes), 3, h, w), np.float32)
    mask = np.ones((len(shapes), h, w), bool)
    for k, (ih, iw) in enumerate(shapes):
        images[k, :, :ih, :iw] = rng.standard_normal((3, ih, iw))
        mask[k, :ih, :iw] = False
    return images, mask

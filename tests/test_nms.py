"""Box NMS among things before the merge (off by default): the greedy rule against a brute-force version, and the
post-processing with NMS equal to the post-processing of the same outputs with the dropped queries removed."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from benchmarks.torch_postprocess import PostProcessPanoptic
from runtime.postprocess import (
    box_cxcywh_to_xyxy,
    pairwise_iou,
    postprocess_panoptic,
    select_queries,
    suppress_duplicate_things,
)

IS_THING = {0: True, 1: True, 2: False, 3: False}
NO_OBJECT = 4


def brute_force_nms(scores, labels, boxes_cxcywh, is_thing, iou_threshold):
    """Scalar loops: visit queries by (score desc, index asc); a thing survives unless an earlier survivor of its
    category overlaps it by more than the threshold."""
    def iou(a, b):
        ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
        bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
        inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
        union = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0) + max(0.0, bx1 - bx0) * max(0.0, by1 - by0) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    survivors = []
    for i in order:
        if is_thing[labels[i]] and any(labels[j] == labels[i] and is_thing[labels[j]]
                                       and iou(boxes_cxcywh[j], boxes_cxcywh[i]) > iou_threshold for j in survivors):
            continue
        survivors.append(i)
    return np.isin(np.arange(len(scores)), survivors)


box = st.tuples(st.floats(0.1, 0.9), st.floats(0.1, 0.9), st.floats(0.01, 0.6), st.floats(0.01, 0.6))


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 3), box), min_size=0, max_size=12),
       st.sampled_from([0.1, 0.3, 0.5, 0.7]))
@settings(max_examples=200, deadline=None)
def test_nms_equals_brute_force(queries, iou_threshold):
    scores = np.array([s / 20 for s, _, _ in queries], dtype=np.float64)  # ties happen: the lower index wins
    labels = np.array([c for _, c, _ in queries], dtype=np.int64)
    boxes = np.array([b for _, _, b in queries], dtype=np.float64).reshape(-1, 4)
    got = suppress_duplicate_things(scores, labels, boxes, IS_THING, iou_threshold)
    assert np.array_equal(got, brute_force_nms(scores, labels, boxes, IS_THING, iou_threshold))
    assert got[~np.array([IS_THING[c] for c in labels], dtype=bool)].all()  # stuff always survives


def test_pairwise_iou_equals_torchvision():
    rng = np.random.default_rng(0)
    boxes = box_cxcywh_to_xyxy(np.concatenate([rng.uniform(0.2, 0.8, (20, 2)), rng.uniform(0.0, 0.5, (20, 2))], 1))
    expected = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    np.testing.assert_allclose(pairwise_iou(boxes), expected, rtol=1e-12, atol=1e-12)


def duplicate_case(seed: int = 0):
    """Eight queries on one 4x6 mask grid: two thing pairs that duplicate each other (same class, overlapping
    boxes, different scores), a lone thing, two stuff queries of one class, one query below the threshold."""
    rng = np.random.default_rng(seed)
    labels = [0, 0, 1, 1, 0, 2, 2, 3]
    strength = [6.0, 5.0, 7.0, 6.5, 6.0, 6.0, 5.5, 0.5]
    logits = rng.normal(0, 0.1, (8, 5)).astype(np.float32)
    for q, (c, s) in enumerate(zip(labels, strength, strict=True)):
        logits[q, c] = s
    boxes = np.array([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.22], [0.7, 0.6, 0.3, 0.3], [0.72, 0.62, 0.3, 0.28],
                      [0.7, 0.2, 0.1, 0.1], [0.5, 0.5, 1.0, 1.0], [0.5, 0.8, 1.0, 0.4], [0.5, 0.5, 0.2, 0.2]],
                     dtype=np.float32)
    masks = rng.normal(0, 2, (8, 6, 9)).astype(np.float32)
    return logits, masks, boxes


def test_postprocess_with_nms_equals_postprocess_without_the_dropped_queries():
    logits, masks, boxes = duplicate_case()
    keep_all, _, _ = select_queries(logits, 0.85)
    keep_nms, _, _ = select_queries(logits, 0.85, boxes, IS_THING, 0.5)
    dropped = np.setdiff1d(keep_all, keep_nms)
    assert dropped.tolist() == [1, 3]  # the weaker query of each duplicated pair; stuff and the lone thing stay
    removed = logits.copy()
    removed[dropped] = 0.0
    removed[dropped, NO_OBJECT] = 10.0  # the same outputs with the dropped queries turned into "no object"
    sizes, targets = [(24, 36)], [(30, 45)]
    with_nms = postprocess_panoptic(logits[None], masks[None], sizes, targets, IS_THING, pred_boxes=boxes[None],
                                    nms_iou=0.5)[0]
    without = postprocess_panoptic(removed[None], masks[None], sizes, targets, IS_THING)[0]
    assert np.array_equal(with_nms.id_map, without.id_map)
    assert with_nms.segments_info == without.segments_info
    plain = postprocess_panoptic(logits[None], masks[None], sizes, targets, IS_THING)[0]
    assert len(plain.segments_info) > len(with_nms.segments_info)  # NMS changed the result

    # the PyTorch port drops the same queries (it calls the same rule), with the same effect on its own output
    port = PostProcessPanoptic(IS_THING, 0.85, nms_iou=0.5)
    outputs = {"pred_logits": torch.from_numpy(logits[None]), "pred_masks": torch.from_numpy(masks[None]),
               "pred_boxes": torch.from_numpy(boxes[None])}
    got = port(outputs, sizes, targets)[0]
    ref = PostProcessPanoptic(IS_THING, 0.85)({**outputs, "pred_logits": torch.from_numpy(removed[None])},
                                              sizes, targets)[0]
    assert np.array_equal(got.id_map, ref.id_map) and got.segments_info == ref.segments_info

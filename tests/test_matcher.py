"""Box ops against torchvision, and the Hungarian matcher against brute-force enumeration of assignments."""

import itertools

import pytest
import torch
import torchvision.ops as tvops

from runtime.errors import PansegError
from train.models.matcher import HungarianMatcher
from train.util import box_ops


def random_xyxy(generator: torch.Generator, n: int, dtype=torch.float64) -> torch.Tensor:
    """Valid corner boxes in [0, 1]^2, some overlapping, some not."""
    a = torch.rand(n, 2, generator=generator, dtype=dtype)
    b = torch.rand(n, 2, generator=generator, dtype=dtype)
    return torch.cat([torch.minimum(a, b), torch.maximum(a, b) + 0.01], dim=1)


def random_cxcywh(generator: torch.Generator, n: int, dtype=torch.float64) -> torch.Tensor:
    centers = torch.rand(n, 2, generator=generator, dtype=dtype)
    sizes = 0.05 + 0.5 * torch.rand(n, 2, generator=generator, dtype=dtype)
    return torch.cat([centers, sizes], dim=1)


# ---------------------------------------------------------------- box ops


def test_box_iou_and_giou_match_torchvision():
    g = torch.Generator().manual_seed(0)
    for n, m in [(1, 1), (3, 5), (7, 2), (0, 4)]:
        b1, b2 = random_xyxy(g, n), random_xyxy(g, m)
        iou, union = box_ops.box_iou(b1, b2)
        torch.testing.assert_close(iou, tvops.box_iou(b1, b2))
        expected_union = tvops.box_area(b1)[:, None] + tvops.box_area(b2)[None, :] - iou * union
        torch.testing.assert_close(union, expected_union)
        torch.testing.assert_close(box_ops.generalized_box_iou(b1, b2), tvops.generalized_box_iou(b1, b2))


def test_giou_batched_equals_per_item():
    g = torch.Generator().manual_seed(1)
    b1 = torch.stack([random_xyxy(g, 4) for _ in range(3)])
    b2 = torch.stack([random_xyxy(g, 5) for _ in range(3)])
    batched = box_ops.generalized_box_iou(b1, b2)
    assert batched.shape == (3, 4, 5)
    for i in range(3):
        torch.testing.assert_close(batched[i], tvops.generalized_box_iou(b1[i], b2[i]))


def test_giou_identical_is_one_and_far_apart_is_negative():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    giou = box_ops.generalized_box_iou(boxes, boxes)
    # Disjoint unit boxes whose enclosing box is 3x3: GIoU = 0 - (9 - 2) / 9.
    torch.testing.assert_close(giou, torch.tensor([[1.0, -7 / 9], [-7 / 9, 1.0]]))


@pytest.mark.parametrize("bad, match", [([[0.5, 0.5, 0.4, 0.6]], "x1 < x0"), ([[0.0, 0.0, float("nan"), 1.0]], "NaN")])
def test_giou_rejects_invalid_boxes(bad, match):
    with pytest.raises(PansegError, match=match):
        box_ops.generalized_box_iou(torch.tensor(bad), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_box_format_round_trip_and_torchvision():
    g = torch.Generator().manual_seed(2)
    cxcywh = random_cxcywh(g, 6)
    xyxy = box_ops.box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy, tvops.box_convert(cxcywh, "cxcywh", "xyxy"))
    torch.testing.assert_close(box_ops.box_xyxy_to_cxcywh(xyxy), cxcywh)


def test_masks_to_boxes_matches_torchvision():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(5, 9, 7, generator=g) > 0.8
    masks[1] = False  # empty mask
    masks[2] = False
    masks[2, 4, 3] = True  # single pixel
    torch.testing.assert_close(box_ops.masks_to_boxes(masks), tvops.masks_to_boxes(masks).float())
    assert box_ops.masks_to_boxes(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)


# ---------------------------------------------------------------- matcher


def reference_cost(logits, boxes, labels, tgt_boxes, w_class, w_bbox, w_giou):
    """The matching cost written out element by element, with torchvision's GIoU."""
    prob = logits.softmax(-1)
    q, n = len(boxes), len(labels)
    cost = torch.empty(q, n, dtype=boxes.dtype)
    for i in range(q):
        for j in range(n):
            l1 = (boxes[i] - tgt_boxes[j]).abs().sum()
            giou = tvops.generalized_box_iou(
                tvops.box_convert(boxes[i : i + 1], "cxcywh", "xyxy"),
                tvops.box_convert(tgt_boxes[j : j + 1], "cxcywh", "xyxy"),
            )[0, 0]
            cost[i, j] = -w_class * prob[i, labels[j]] + w_bbox * l1 - w_giou * giou
    return cost


def brute_force_min_cost(cost: torch.Tensor) -> float:
    """Minimum total cost over every injective assignment of the smaller side into the larger one."""
    q, n = cost.shape
    if n == 0 or q == 0:
        return 0.0
    if n <= q:
        return min(sum(cost[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(q), n))
    return min(sum(cost[i, p[i]].item() for i in range(q)) for p in itertools.permutations(range(n), q))


def random_case(g, batch, num_queries, num_classes, sizes):
    outputs = {
        "pred_logits": torch.randn(batch, num_queries, num_classes + 1, generator=g, dtype=torch.float64) * 2,
        "pred_boxes": torch.stack([random_cxcywh(g, num_queries) for _ in range(batch)]),
    }
    targets = [
        {"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": random_cxcywh(g, n)} for n in sizes
    ]
    return outputs, targets


@pytest.mark.parametrize("weights", [(1, 5, 2), (2, 1, 0), (0, 0, 3)])
def test_matcher_equals_brute_force(weights):
    g = torch.Generator().manual_seed(sum(weights))
    matcher = HungarianMatcher(*weights)
    cases = 0
    for _ in range(12):
        num_queries = int(torch.randint(1, 6, (1,), generator=g))
        # Include empty targets, N == Q and N < Q (and N > Q, which linear_sum_assignment also supports).
        sizes = [0, num_queries] + [int(torch.randint(0, num_queries + 2, (1,), generator=g)) for _ in range(2)]
        outputs, targets = random_case(g, len(sizes), num_queries, num_classes=3, sizes=sizes)
        indices = matcher(outputs, targets)
        assert len(indices) == len(targets)
        for b, ((rows, cols), t) in enumerate(zip(indices, targets, strict=True)):
            assert rows.dtype == torch.int64 and cols.dtype == torch.int64
            n = len(t["labels"])
            assert len(rows) == len(cols) == min(num_queries, n)
            assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
            cost = reference_cost(
                outputs["pred_logits"][b], outputs["pred_boxes"][b], t["labels"], t["boxes"], *weights
            )
            matched_cost = cost[rows, cols].sum().item() if len(rows) else 0.0
            assert matched_cost == pytest.approx(brute_force_min_cost(cost), abs=1e-9)
            cases += 1
    assert cases == 48


def test_matcher_empty_targets_everywhere():
    g = torch.Generator().manual_seed(5)
    outputs, targets = random_case(g, 2, 4, 3, sizes=[0, 0])
    indices = HungarianMatcher()(outputs, targets)
    for rows, cols in indices:
        assert rows.shape == (0,) and cols.shape == (0,)
        assert rows.dtype == torch.int64 and cols.dtype == torch.int64


def test_matcher_finds_obvious_permutation():
    # Targets are the predictions in reverse order, with confident matching classes: the answer is the reversal.
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.3, 0.1, 0.3]])
    logits = torch.full((1, 3, 4), -5.0)
    logits[0, torch.arange(3), torch.tensor([0, 1, 2])] = 5.0
    targets = [{"labels": torch.tensor([2, 1, 0]), "boxes": boxes.flip(0)}]
    rows, cols = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes[None]}, targets)[0]
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 2, 1: 1, 2: 0}


def test_matcher_rejects_bad_configuration_and_batch_mismatch():
    with pytest.raises(PansegError, match="all 0"):
        HungarianMatcher(0, 0, 0)
    g = torch.Generator().manual_seed(6)
    outputs, targets = random_case(g, 2, 3, 2, sizes=[1, 1])
    with pytest.raises(PansegError, match="1 target dicts for a batch of 2"):
        HungarianMatcher()(outputs, targets[:1])


def test_matcher_reports_diverged_predictions():
    g = torch.Generator().manual_seed(7)
    outputs, targets = random_case(g, 1, 3, 2, sizes=[2])
    outputs["pred_logits"][0, 1, 0] = float("nan")
    with pytest.raises(PansegError, match="NaN"):
        HungarianMatcher()(outputs, targets)

"""SetCriterion against losses computed independently on a hand-built case whose matching is obvious."""

import math

import pytest
import torch
import torchvision.ops as tvops

from runtime.errors import PansegError
from train.models import criterion as criterion_module
from train.models.criterion import SetCriterion, build_criterion, dice_loss, sigmoid_focal_loss
from train.models.matcher import HungarianMatcher

NUM_CLASSES = 2  # classes 0 and 1; index 2 is "no object"
EOS = 0.1
HI, LO = 4.0, -2.0

# Targets: image 0 has labels [1, 0], image 1 has labels [0, 1]; boxes in normalized cxcywh.
T0 = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.70, 0.30, 0.3, 0.2]])
T1 = torch.tensor([[0.30, 0.70, 0.2, 0.4], [0.60, 0.60, 0.2, 0.2]])
FAR = torch.tensor([0.90, 0.90, 0.05, 0.05])
# The construction below fixes the matching: (image, query) -> target index.
EXPECTED_MATCH = {(0, 0): 1, (0, 2): 0, (1, 0): 1, (1, 1): 0}


def class_logits(argmax: int) -> list[float]:
    row = [LO] * (NUM_CLASSES + 1)
    row[argmax] = HI
    return row


def hand_built(requires_grad: bool = True):
    """Matched predictions sit close to their targets; unmatched ones are far away.

    Image 0: q0 ~ target 1 (class 0, right), q1 far (says class 1: a false positive), q2 ~ target 0 (class 1, right).
    Image 1: every query says "no object"; q0 ~ target 1 and q1 ~ target 0 by box only (both wrong classes).
    """
    jitter = torch.tensor([0.01, -0.02, 0.02, 0.01])
    boxes = torch.stack(
        [
            torch.stack([T0[1] + jitter, FAR, T0[0] - jitter]),
            torch.stack([T1[1] - jitter, T1[0] + jitter, FAR]),
        ]
    )
    logits = torch.tensor(
        [[class_logits(0), class_logits(1), class_logits(1)], [class_logits(2), class_logits(2), class_logits(2)]]
    )
    logits[1, 1, 2] = HI - 1.0  # less confident: different values per query
    targets = [
        {"labels": torch.tensor([1, 0]), "boxes": T0.clone()},
        {"labels": torch.tensor([0, 1]), "boxes": T1.clone()},
    ]
    outputs = {"pred_logits": logits.requires_grad_(requires_grad), "pred_boxes": boxes.requires_grad_(requires_grad)}
    return outputs, targets


def make_criterion(losses=("labels", "boxes", "cardinality"), **kwargs) -> SetCriterion:
    return SetCriterion(NUM_CLASSES, HungarianMatcher(), weight_dict={}, eos_coef=EOS, losses=losses, **kwargs)


def manual_weighted_ce(logits: torch.Tensor, match: dict, targets) -> float:
    """Weighted cross-entropy from a hand-written log-softmax: sum(w_t * -log p_t) / sum(w_t) over all queries."""
    total, weight_sum = 0.0, 0.0
    for b in range(logits.shape[0]):
        for q in range(logits.shape[1]):
            row = [float(v) for v in logits[b, q]]
            log_norm = math.log(sum(math.exp(v) for v in row))
            target = int(targets[b]["labels"][match[(b, q)]]) if (b, q) in match else NUM_CLASSES
            weight = EOS if target == NUM_CLASSES else 1.0
            total += -weight * (row[target] - log_norm)
            weight_sum += weight
    return total / weight_sum


def matched_pairs(outputs, targets, match):
    pred = torch.stack([outputs["pred_boxes"][b, q] for (b, q) in sorted(match)]).detach()
    tgt = torch.stack([targets[b]["boxes"][match[(b, q)]] for (b, q) in sorted(match)])
    return pred, tgt


def test_matching_premise_holds():
    outputs, targets = hand_built(requires_grad=False)
    indices = HungarianMatcher()(outputs, targets)
    found = {(b, int(q)): int(t) for b, (qs, ts) in enumerate(indices) for q, t in zip(qs, ts, strict=True)}
    assert found == EXPECTED_MATCH


def test_losses_equal_independent_computation():
    outputs, targets = hand_built()
    losses = make_criterion()(outputs, targets)
    num_boxes = 4

    assert losses["loss_ce"].item() == pytest.approx(
        manual_weighted_ce(outputs["pred_logits"].detach(), EXPECTED_MATCH, targets), rel=1e-5
    )
    pred, tgt = matched_pairs(outputs, targets, EXPECTED_MATCH)
    expected_l1 = sum(abs(float(p) - float(t)) for p, t in zip(pred.flatten(), tgt.flatten(), strict=True))
    assert losses["loss_bbox"].item() == pytest.approx(expected_l1 / num_boxes, rel=1e-5)
    giou = tvops.generalized_box_iou(
        tvops.box_convert(pred, "cxcywh", "xyxy"), tvops.box_convert(tgt, "cxcywh", "xyxy")
    )
    assert losses["loss_giou"].item() == pytest.approx((1 - giou.diagonal()).sum().item() / num_boxes, rel=1e-5)
    # Image 0's two matched queries have the right class, image 1's two say "no object": half are wrong.
    assert losses["class_error"].item() == pytest.approx(50.0)
    # Image 0 predicts 3 objects for 2 targets, image 1 predicts 0 for 2: mean(|3-2|, |0-2|).
    assert losses["cardinality_error"].item() == pytest.approx(1.5)
    assert not losses["cardinality_error"].requires_grad


def test_gradients_reach_matched_boxes_only_and_all_logits():
    outputs, targets = hand_built()
    losses = make_criterion()(outputs, targets)
    (losses["loss_ce"] + losses["loss_bbox"] + losses["loss_giou"]).backward()
    assert torch.all(outputs["pred_logits"].grad.abs().sum(-1) > 0)  # unmatched queries learn "no object"
    box_grad = outputs["pred_boxes"].grad.abs().sum(-1)
    for b in range(2):
        for q in range(3):
            assert (box_grad[b, q] > 0) == ((b, q) in EXPECTED_MATCH)


def test_aux_losses_use_their_own_matching_and_suffixes():
    outputs, targets = hand_built()
    aux0, _ = hand_built()
    aux1, _ = hand_built()
    # Layer 1 sees the queries in another order, so its matching differs from the final layer's.
    perm = torch.tensor([2, 0, 1])
    aux1 = {k: v.detach()[:, perm].requires_grad_(True) for k, v in aux1.items()}
    outputs["aux_outputs"] = [aux0, aux1]
    criterion = make_criterion()
    losses = criterion(outputs, targets)

    final_keys = {"loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"}
    aux_keys = {"loss_ce", "loss_bbox", "loss_giou", "cardinality_error"}  # class_error is logged for the last layer
    assert set(losses) == final_keys | {f"{k}_{i}" for k in aux_keys for i in (0, 1)}
    for i, aux in enumerate((aux0, aux1)):
        alone = criterion(aux, targets)
        for k in aux_keys:
            assert losses[f"{k}_{i}"].item() == pytest.approx(alone[k].item(), rel=1e-6)
    permuted_match = {(b, int((perm == q).nonzero())): t for (b, q), t in EXPECTED_MATCH.items()}
    assert losses["loss_ce_1"].item() == pytest.approx(
        manual_weighted_ce(aux1["pred_logits"].detach(), permuted_match, targets), rel=1e-5
    )
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    assert aux1["pred_boxes"].grad.abs().sum() > 0 and aux0["pred_logits"].grad.abs().sum() > 0


# ---------------------------------------------------------------- masks


def manual_bilinear(image: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear resize with half-pixel centres (align_corners=False), written out pixel by pixel."""
    in_h, in_w = image.shape

    def source(i, out_size, in_size):
        pos = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        lo = min(int(math.floor(pos)), in_size - 1)
        return lo, min(lo + 1, in_size - 1), pos - lo

    out = torch.empty(out_h, out_w, dtype=image.dtype)
    for y in range(out_h):
        y0, y1, fy = source(y, out_h, in_h)
        for x in range(out_w):
            x0, x1, fx = source(x, out_w, in_w)
            top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
            bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


def manual_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    return torch.stack(
        [1 - (2 * (p[i] * targets[i]).sum() + 1) / (p[i].sum() + targets[i].sum() + 1) for i in range(len(p))]
    )


def test_focal_loss_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(3, 20, generator=g) > 0.6).double()
    for alpha, gamma in [(0.25, 2), (0.5, 1), (-1, 0)]:
        per_pixel = tvops.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
        expected = per_pixel.mean(1).sum() / 2.5
        torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 2.5, alpha=alpha, gamma=gamma), expected)


def test_dice_loss_matches_formula():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    targets = (torch.rand(4, 5, 6, generator=g) > 0.5).double()
    targets[0] = 0  # empty target: the +1 smoothing keeps it finite
    expected = manual_dice(logits.flatten(1), targets.flatten(1)).sum() / 3
    torch.testing.assert_close(dice_loss(logits, targets, 3), expected)


def test_mask_losses_on_padded_targets_with_gradient():
    outputs, targets = hand_built()
    g = torch.Generator().manual_seed(2)
    pred_masks = torch.randn(2, 3, 2, 3, generator=g).requires_grad_(True)
    outputs["pred_masks"] = pred_masks
    # Images of different sizes (4x6 and 5x4): targets are zero-padded bottom/right to 5x6.
    sizes = [(4, 6), (5, 4)]
    for t, (h, w) in zip(targets, sizes, strict=True):
        t["masks"] = torch.rand(2, h, w, generator=g) > 0.5
    outputs["aux_outputs"] = [hand_built()[0]]
    losses = make_criterion(losses=("labels", "boxes", "masks"))(outputs, targets)
    assert "loss_mask_0" not in losses and "loss_dice_0" not in losses and "loss_ce_0" in losses

    logits, padded = [], []
    for (b, q), t_idx in sorted(EXPECTED_MATCH.items()):
        logits.append(manual_bilinear(pred_masks[b, q].detach(), 5, 6).flatten())
        target = torch.zeros(5, 6)
        h, w = sizes[b]
        target[:h, :w] = targets[b]["masks"][t_idx].float()
        padded.append(target.flatten())
    logits, padded = torch.stack(logits), torch.stack(padded)
    expected_focal = tvops.sigmoid_focal_loss(logits, padded, reduction="none").mean(1).sum() / 4
    expected_dice = manual_dice(logits, padded).sum() / 4
    assert losses["loss_mask"].item() == pytest.approx(expected_focal.item(), rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(expected_dice.item(), rel=1e-5)

    (losses["loss_mask"] + losses["loss_dice"]).backward()
    grad = pred_masks.grad.abs().flatten(2).sum(-1)
    for b in range(2):
        for q in range(3):
            assert (grad[b, q] > 0) == ((b, q) in EXPECTED_MATCH)


def test_masks_loss_without_pred_masks_is_a_clear_error():
    outputs, targets = hand_built()
    with pytest.raises(PansegError, match="pred_masks"):
        make_criterion(losses=("masks",))(outputs, targets)


# ---------------------------------------------------------------- edge cases and configuration


def test_no_targets_at_all_gives_finite_no_object_loss():
    outputs, _ = hand_built()
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)} for _ in range(2)]
    losses = make_criterion()(outputs, empty)
    logits = outputs["pred_logits"].detach()
    expected_ce = (-(logits.log_softmax(-1)[..., NUM_CLASSES])).mean()  # equal weights EOS cancel in the mean
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-5)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    assert losses["cardinality_error"].item() == pytest.approx(1.5)  # 3 and 0 predicted objects, 0 targets


def test_num_boxes_is_averaged_across_workers(monkeypatch):
    outputs, targets = hand_built()
    single = make_criterion()(outputs, targets)
    # Pretend another worker saw 8 boxes: the normalizer becomes (4 + 8) / 2 = 6 instead of 4.
    monkeypatch.setattr(criterion_module, "_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: tensor.add_(8))
    shared = make_criterion()(outputs, targets)
    assert shared["loss_bbox"].item() == pytest.approx(single["loss_bbox"].item() * 4 / 6, rel=1e-6)
    assert shared["loss_ce"].item() == pytest.approx(single["loss_ce"].item(), rel=1e-6)  # CE is a weighted mean


def test_extra_loss_is_added_by_name():
    seen = {}

    def loss_count(outputs, targets, indices, num_boxes):
        seen["num_boxes"] = num_boxes
        seen["matched"] = sum(len(q) for q, _ in indices)
        return {"loss_count": outputs["pred_boxes"].sum() * 0 + len(indices)}

    outputs, targets = hand_built()
    losses = make_criterion(losses=("boxes", "count"), extra_losses={"count": loss_count})(outputs, targets)
    assert losses["loss_count"].item() == 2 and seen == {"num_boxes": 4, "matched": 4}


def test_bad_configuration_and_labels_are_clear_errors():
    with pytest.raises(PansegError, match="unknown loss"):
        make_criterion(losses=("labels", "lables"))
    outputs, targets = hand_built()
    targets[1]["labels"] = torch.tensor([0, 2])
    with pytest.raises(PansegError, match=r"target 1 has label\(s\) outside \[0, 2\)"):
        make_criterion()(outputs, targets)
    outputs, targets = hand_built()
    criterion = SetCriterion(5, HungarianMatcher(), {}, losses=("labels",))
    with pytest.raises(PansegError, match="pred_logits has 3 classes, expected num_classes \\+ 1 = 6"):
        criterion(outputs, targets)


@pytest.mark.parametrize("masks", [False, True])
def test_build_criterion_weights_cover_exactly_the_returned_losses(masks):
    criterion, weight_dict = build_criterion(NUM_CLASSES, masks=masks, aux_loss=True, dec_layers=3)
    assert criterion.weight_dict is weight_dict
    assert criterion.empty_weight.tolist() == pytest.approx([1.0, 1.0, EOS])
    expected = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
    assert {k: weight_dict[k] for k in expected} == expected
    assert weight_dict["loss_bbox_1"] == 5 and weight_dict["loss_giou_0"] == 2
    if masks:
        assert weight_dict["loss_mask"] == 1 and weight_dict["loss_dice"] == 1

    outputs, targets = hand_built()
    outputs["aux_outputs"] = [hand_built()[0] for _ in range(2)]
    if masks:
        outputs["pred_masks"] = torch.zeros(2, 3, 2, 2, requires_grad=True)
        for t in targets:
            t["masks"] = torch.ones(2, 4, 4, dtype=torch.bool)
    losses = criterion(outputs, targets)
    assert set(weight_dict) == {k for k in losses if k.startswith("loss_")}

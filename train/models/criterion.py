"""DETR's set criterion: Hungarian-match predictions to targets, then supervise the matched pairs.

Losses are looked up by name (detr's "labels", "boxes", "cardinality", "masks"), so a new term is one more
entry in ``extra_losses`` rather than a change here. Each returns a dict of named scalars; the training loop
weights them with ``weight_dict`` (from :func:`build_criterion`).
"""

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runtime.errors import PansegError
from train.models.matcher import HungarianMatcher, MatchIndices
from train.util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

Outputs = dict[str, Tensor | list[dict[str, Tensor]]]
Targets = list[dict[str, Tensor]]
# (outputs, targets, indices, num_boxes) -> {loss name: scalar tensor}
LossFn = Callable[[Outputs, Targets, MatchIndices, float], dict[str, Tensor]]

DEFAULT_LOSSES = ("labels", "boxes", "cardinality")
# Computing masks for every decoder layer is too costly; detr supervises them on the last layer only.
SKIPPED_FOR_AUX = frozenset({"masks"})


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2
) -> Tensor:
    """RetinaNet focal loss (https://arxiv.org/abs/1708.02002): mean over pixels, summed over masks, / num_boxes.

    logits and targets are [num_masks, num_pixels]; the (1 - p_t)^gamma factor down-weights the many easy pixels.
    """
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


def dice_loss(logits: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    """Soft dice loss 1 - (2|P∩T| + 1) / (|P| + |T| + 1) per mask, summed, / num_boxes.

    An IoU-like term that does not depend on the mask's size, complementing the per-pixel focal loss.
    """
    prob = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (prob * targets).sum(1) + 1
    denominator = prob.sum(1) + targets.sum(1) + 1
    return (1 - numerator / denominator).sum() / num_boxes


def pad_masks_to_common_size(masks: list[Tensor]) -> Tensor:
    """Zero-pad [N_i, H_i, W_i] masks at the bottom/right to the largest H and W and concatenate to [sum N_i, H, W].

    The same padding detr's nested_tensor_from_tensor_list applies to a batch of images of different sizes, so
    mask pixels stay aligned with the padded image the model saw.
    """
    height = max(m.shape[-2] for m in masks)
    width = max(m.shape[-1] for m in masks)
    padded = [F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in masks]
    return torch.cat(padded)


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _average_num_boxes(targets: Targets, device: torch.device) -> float:
    """Mean number of target boxes per worker (at least 1), so every worker normalizes by the same constant."""
    num_boxes = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world_size = _world_size()
    if world_size > 1:
        torch.distributed.all_reduce(num_boxes)
    return torch.clamp(num_boxes / world_size, min=1).item()


def _matched_query_index(indices: MatchIndices) -> tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched prediction, for advanced indexing into [B, Q, ...]."""
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query = torch.cat([src for src, _ in indices])
    return batch, query


class SetCriterion(nn.Module):
    """Sum of named DETR losses computed on a Hungarian matching, repeated for each auxiliary decoder output."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float = 0.1,
        losses: Iterable[str] = DEFAULT_LOSSES,
        extra_losses: Mapping[str, LossFn] | None = None,
    ):
        """num_classes excludes "no object", which is class index num_classes (the last logit).

        extra_losses adds named loss functions (same signature as the built-in ones) that ``losses`` can select.
        """
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.loss_fns: dict[str, LossFn] = {
            "labels": self.loss_labels,
            "cardinality": self.loss_cardinality,
            "boxes": self.loss_boxes,
            "masks": self.loss_masks,
            **(extra_losses or {}),
        }
        self.losses = list(losses)
        unknown = [name for name in self.losses if name not in self.loss_fns]
        if unknown:
            raise PansegError(f"SetCriterion: unknown loss(es) {unknown}; known: {sorted(self.loss_fns)}")
        # "no object" is by far the most frequent class; down-weight it so it does not swamp the real classes.
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(
        self, outputs: Outputs, targets: Targets, indices: MatchIndices, num_boxes: float, log: bool = True
    ) -> dict[str, Tensor]:
        """Weighted cross-entropy over all queries (unmatched ones target "no object"); logs class_error."""
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes + 1:
            raise PansegError(
                f"SetCriterion: pred_logits has {logits.shape[-1]} classes, expected num_classes + 1 = "
                f"{self.num_classes + 1} (the last one is 'no object')"
            )
        matched = _matched_query_index(indices)
        matched_labels = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices, strict=True)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[matched] = matched_labels.to(logits.device)
        losses = {
            "loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))
        }
        if log:
            losses["class_error"] = _top1_error_percent(logits[matched].detach(), matched_labels)
        return losses

    @torch.no_grad()
    def loss_cardinality(
        self, outputs: Outputs, targets: Targets, indices: MatchIndices, num_boxes: float
    ) -> dict[str, Tensor]:
        """Mean absolute difference between the number of non-"no object" predictions and of targets (logging only)."""
        logits = outputs["pred_logits"]
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
        expected = torch.as_tensor([float(len(t["labels"])) for t in targets], device=logits.device)
        return {"cardinality_error": F.l1_loss(predicted, expected)}

    def loss_boxes(
        self, outputs: Outputs, targets: Targets, indices: MatchIndices, num_boxes: float
    ) -> dict[str, Tensor]:
        """L1 on normalized cxcywh and 1 - GIoU of the matched pairs, each summed and divided by num_boxes."""
        pred = outputs["pred_boxes"][_matched_query_index(indices)]
        target = torch.cat([t["boxes"][tgt] for t, (_, tgt) in zip(targets, indices, strict=True)]).to(pred)
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)))
        return {
            "loss_bbox": F.l1_loss(pred, target, reduction="none").sum() / num_boxes,
            "loss_giou": (1 - giou).sum() / num_boxes,
        }

    def loss_masks(
        self, outputs: Outputs, targets: Targets, indices: MatchIndices, num_boxes: float
    ) -> dict[str, Tensor]:
        """Focal + dice on matched masks; predictions are upsampled bilinearly to the padded target size."""
        if "pred_masks" not in outputs:
            raise PansegError("SetCriterion: the 'masks' loss needs outputs['pred_masks'] (build the model with masks)")
        pred = outputs["pred_masks"][_matched_query_index(indices)]  # [M, h, w]
        target = pad_masks_to_common_size(
            [t["masks"][tgt].to(pred) for t, (_, tgt) in zip(targets, indices, strict=True)]
        )  # [M, H, W]
        pred = F.interpolate(pred[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        pred, target = pred.flatten(1), target.flatten(1)
        return {
            "loss_mask": sigmoid_focal_loss(pred, target, num_boxes),
            "loss_dice": dice_loss(pred, target, num_boxes),
        }

    def add_loss(self, name: str, fn: LossFn, weights: Mapping[str, float]) -> None:
        """Select one more named loss (e.g. a training-only helper) with the weights of the terms it returns."""
        self.loss_fns[name] = fn
        self.losses.append(name)
        self.weight_dict.update(weights)

    def _check_labels(self, targets: Targets) -> None:
        for i, t in enumerate(targets):
            labels = t["labels"]
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise PansegError(
                    f"SetCriterion: target {i} has label(s) outside [0, {self.num_classes}): "
                    f"{sorted(set(labels.tolist()))}; num_classes must be larger than the largest category id"
                )

    def _losses_for(self, outputs: Outputs, targets: Targets, num_boxes: float, aux: bool) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        losses: dict[str, Tensor] = {}
        for name in self.losses:
            if aux and name in SKIPPED_FOR_AUX:
                continue
            kwargs = {"log": False} if aux and name == "labels" else {}
            losses.update(self.loss_fns[name](outputs, targets, indices, num_boxes, **kwargs))
        return losses

    def forward(self, outputs: Outputs, targets: Targets) -> dict[str, Tensor]:
        """All requested losses for the final output, plus ``<name>_<i>`` for each outputs["aux_outputs"][i]."""
        self._check_labels(targets)
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        num_boxes = _average_num_boxes(targets, outputs["pred_logits"].device)
        losses = self._losses_for(final, targets, num_boxes, aux=False)
        for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._losses_for(aux_outputs, targets, num_boxes, aux=True)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses


@torch.no_grad()
def _top1_error_percent(logits: Tensor, labels: Tensor) -> Tensor:
    """100 - top-1 accuracy in percent; 100 when nothing was matched, as in detr's util.misc.accuracy."""
    if labels.numel() == 0:
        return torch.full((), 100.0, device=logits.device)
    correct = (logits.argmax(-1) == labels.to(logits.device)).float().mean()
    return 100.0 * (1 - correct)


def build_criterion(
    num_classes: int,
    masks: bool,
    aux_loss: bool,
    dec_layers: int,
    bbox_loss_coef: float = 5,
    giou_loss_coef: float = 2,
    mask_loss_coef: float = 1,
    dice_loss_coef: float = 1,
    eos_coef: float = 0.1,
    *,
    set_cost_class: float = 1,
    set_cost_bbox: float = 5,
    set_cost_giou: float = 2,
) -> tuple[SetCriterion, dict[str, float]]:
    """DETR's criterion and loss weights, as detr's models/detr.py build() sets them up.

    Auxiliary weights (``<name>_<i>`` for i < dec_layers - 1) copy the final-layer ones, except the mask terms,
    which are never computed for auxiliary outputs; so every key of weight_dict is a key the criterion returns.
    """
    weight_dict: dict[str, float] = {"loss_ce": 1, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    if masks:
        weight_dict["loss_mask"] = mask_loss_coef
        weight_dict["loss_dice"] = dice_loss_coef
    if aux_loss:
        per_layer = {k: v for k, v in weight_dict.items() if k not in ("loss_mask", "loss_dice")}
        for i in range(dec_layers - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in per_layer.items()})
    losses = [*DEFAULT_LOSSES, "masks"] if masks else list(DEFAULT_LOSSES)
    matcher = HungarianMatcher(cost_class=set_cost_class, cost_bbox=set_cost_bbox, cost_giou=set_cost_giou)
    criterion = SetCriterion(num_classes, matcher, weight_dict=weight_dict, eos_coef=eos_coef, losses=losses)
    return criterion, weight_dict

"""One-to-one (Hungarian) matching between DETR's query predictions and the ground-truth objects of each image.

DETR predicts a fixed set of Q boxes and trains on a bipartite matching: every ground-truth object is assigned
to exactly one query (the one with the lowest matching cost), and the remaining queries learn "no object".
"""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from runtime.errors import PansegError
from train.util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

MatchIndices = list[tuple[Tensor, Tensor]]


class HungarianMatcher(nn.Module):
    """Minimum-cost assignment of queries to targets, solved per image with scipy's linear_sum_assignment.

    cost[q, t] = -cost_class * p_q(label_t) + cost_bbox * L1(box_q, box_t) - cost_giou * GIoU(box_q, box_t),
    with boxes in normalized cxcywh. The class term uses the probability rather than its log, as DETR does: it is
    bounded, which keeps it on the same scale as the box terms.
    """

    def __init__(self, cost_class: float = 1, cost_bbox: float = 5, cost_giou: float = 2):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise PansegError("HungarianMatcher: cost_class, cost_bbox and cost_giou are all 0; matching is undefined")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def cost_matrices(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[Tensor]:
        """Per-image cost matrices [Q, N_i] on the CPU (exposed so callers and tests can inspect the costs)."""
        batch_size, num_queries = outputs["pred_logits"].shape[:2]
        if len(targets) != batch_size:
            raise PansegError(f"HungarianMatcher: {len(targets)} target dicts for a batch of {batch_size} predictions")
        # Cost for every (query of any image, target of any image) pair at once, then keep each image's own block:
        # one device-to-host copy instead of one per image.
        prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)  # [B*Q, C+1]
        pred_boxes = outputs["pred_boxes"].flatten(0, 1)  # [B*Q, 4]
        tgt_labels = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes)

        class_cost = -prob[:, tgt_labels]
        bbox_cost = torch.cdist(pred_boxes, tgt_boxes, p=1)
        giou_cost = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        cost = self.cost_bbox * bbox_cost + self.cost_class * class_cost + self.cost_giou * giou_cost
        cost = cost.view(batch_size, num_queries, -1).cpu()

        sizes = [len(t["boxes"]) for t in targets]
        return [block[i] for i, block in enumerate(cost.split(sizes, dim=-1))]

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> MatchIndices:
        """Match each image's targets to queries.

        outputs: "pred_logits" [B, Q, C+1] and "pred_boxes" [B, Q, 4] (normalized cxcywh).
        targets: B dicts with "labels" int64 [N_i] and "boxes" [N_i, 4] (normalized cxcywh).
        Returns B pairs (query_idx, target_idx) of int64 tensors of length min(Q, N_i); query_idx is sorted.
        """
        indices = []
        for cost in self.cost_matrices(outputs, targets):
            if not torch.isfinite(cost).all():
                raise PansegError("HungarianMatcher: matching cost has NaN or infinite entries (did training diverge?)")
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows.astype(np.int64)), torch.as_tensor(cols.astype(np.int64))))
        return indices


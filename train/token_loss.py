"""A training-only dense signal for detectors trained from scratch: classify every encoder token.

Set prediction gives the trunk one label per object per image; from random weights that is a slow teacher. Here a
linear head classifies each encoder token (stride 32) as the class of the smallest ground-truth box holding the
token's centre, or "no object". The head lives outside the DETR module, so checkpoints and exports keep detr's
architecture (the issue's measurements found this loss helped a from-scratch trunk learn).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.models.detr import DETR


class DETRWithTokenHead(nn.Module):
    """Wraps a DETR for training: same outputs, plus ``token_logits`` [B, h*w, C+1] and the token padding."""

    def __init__(self, detr: DETR, num_classes: int):
        super().__init__()
        self.detr = detr
        self.token_head = nn.Linear(detr.transformer.d_model, num_classes + 1)

    def forward(self, images: Tensor, padding_mask: Tensor) -> dict[str, Any]:
        encoded = self.detr.encode(images, padding_mask)
        outputs = self.detr.predict(encoded.hs)
        outputs["token_logits"] = self.token_head(encoded.memory.flatten(2).transpose(1, 2))
        outputs["token_padding"] = encoded.mask.flatten(1)
        outputs["token_grid"] = tuple(encoded.memory.shape[-2:])
        outputs["input_size"] = tuple(images.shape[-2:])
        return outputs


def token_targets(targets: list[dict[str, Tensor]], grid: tuple[int, int], input_size: tuple[int, int],
                  no_object: int) -> Tensor:
    """[B, h*w] class per token: the smallest box (normalized cxcywh of the unpadded image) containing its centre."""
    h, w = grid
    pad_h, pad_w = input_size
    labels = []
    for t in targets:
        img_h, img_w = (int(v) for v in t["size"])
        device = t["boxes"].device
        ys = (torch.arange(h, device=device) + 0.5) * pad_h / h / img_h
        xs = (torch.arange(w, device=device) + 0.5) * pad_w / w / img_w
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        label = torch.full((h, w), no_object, dtype=torch.int64, device=device)
        boxes = t["boxes"]
        order = torch.argsort(boxes[:, 2] * boxes[:, 3], descending=True)  # paint large first, small on top
        for i in order.tolist():
            bx, by, bw, bh = boxes[i].tolist()
            inside = (cx >= bx - bw / 2) & (cx <= bx + bw / 2) & (cy >= by - bh / 2) & (cy <= by + bh / 2)
            label[inside] = t["labels"][i]
        labels.append(label.flatten())
    return torch.stack(labels)


def loss_tokens(outputs: dict[str, Any], targets: list[dict[str, Tensor]], indices: Any, num_boxes: float
                ) -> dict[str, Tensor]:
    """Cross-entropy over the real (non-padding) encoder tokens; a no-op for outputs without token logits."""
    if "token_logits" not in outputs:
        return {}
    logits = outputs["token_logits"]
    wanted = token_targets(targets, outputs["token_grid"], outputs["input_size"], logits.shape[-1] - 1)
    wanted[outputs["token_padding"]] = -100
    return {"loss_tokens": F.cross_entropy(logits.flatten(0, 1), wanted.flatten(), ignore_index=-100)}

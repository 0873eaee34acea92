"""The DETR detector: backbone -> 1x1 projection -> transformer -> class and box heads per object query.

Unlike detr it takes plain tensors (images and a padding mask) instead of a NestedTensor, so tracing for export
sees no Python-side branching on the input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from train.models.backbone import Joiner
from train.models.transformer import Transformer

Outputs = dict[str, Tensor | list[dict[str, Tensor]]]


class MLP(nn.Module):
    """Linear layers with ReLU between them (detr's box head: 3 layers, hidden -> hidden -> hidden -> 4)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Encoded(NamedTuple):
    """What one pass through backbone and transformer produces; the mask head needs all of it."""

    features: list[Tensor]  # backbone outputs, highest resolution first
    mask: Tensor  # padding mask at the transformer's resolution [B, h, w]
    src_proj: Tensor  # input_proj of the last backbone feature [B, D, h, w]
    hs: Tensor  # decoder outputs of every layer [L, B, Q, D]
    memory: Tensor  # encoder output [B, D, h, w]


class DETR(nn.Module):
    """Set-prediction detector: ``num_queries`` slots, each a class distribution (+ no-object) and a box."""

    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int,
                 aux_loss: bool = False):
        super().__init__()
        # Registration order matches detr's, so state_dict() lists entries in the same order.
        self.num_queries = num_queries
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss

    def encode(self, images: Tensor, padding_mask: Tensor) -> Encoded:
        features, mask, pos = self.backbone(images, padding_mask)
        src_proj = self.input_proj(features[-1])
        hs, memory = self.transformer(src_proj, mask, self.query_embed.weight, pos)
        return Encoded(features, mask, src_proj, hs, memory)

    def predict(self, hs: Tensor) -> Outputs:
        """Heads on the decoder outputs [L, B, Q, D]; the earlier layers' predictions only when training with aux."""
        with_aux = self.aux_loss and self.training
        if not with_aux:
            hs = hs[-1:]
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        out: Outputs = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if with_aux:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b}
                                  for a, b in zip(logits[:-1], boxes[:-1], strict=True)]
        return out

    def forward(self, images: Tensor, padding_mask: Tensor) -> Outputs:
        """images float [B, 3, H, W] (normalised), padding_mask bool [B, H, W] True on padding.

        Returns pred_logits [B, Q, num_classes + 1], pred_boxes [B, Q, 4] (cx, cy, w, h in [0, 1] of the unpadded
        image) and, when training with aux_loss, aux_outputs: one such dict per earlier decoder layer.
        """
        return self.predict(self.encode(images, padding_mask).hs)

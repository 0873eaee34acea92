"""detr's panoptic wrapper (DETRsegm): per-query attention maps over the encoder memory, decoded by a small FPN-style
conv head into mask logits at stride 4.

The model is split in two for deployment: :meth:`DETRsegm.forward_detector` runs once per image (backbone,
transformer, heads, and everything per-image the mask head needs), :meth:`DETRsegm.forward_masks` runs per query,
so an exported mask graph can be fed only the queries that survive the score threshold. A query's mask depends on
no other query (GroupNorm normalises each query's maps on their own), so computing a subset gives the same masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.models.detr import DETR, Outputs


def _expand(x: Tensor, n: int | Tensor) -> Tensor:
    """[B, C, H, W] -> [B * n, C, H, W], each image repeated n times in a row (detr's query-major-within-image
    layout, matching ``bbox_mask.flatten(0, 1)``)."""
    return x.unsqueeze(1).expand(-1, n, -1, -1, -1).flatten(0, 1)


class MHAttentionMap(nn.Module):
    """Multi-head attention weights only (no values): how much each query attends to each memory position.

    Quirk kept from detr: the softmax runs over heads and positions together (``flatten(2)``), so a query's maps
    sum to 1 over all heads combined, not per head.
    """

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.k_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        for linear in (self.q_linear, self.k_linear):
            nn.init.xavier_uniform_(linear.weight)
            if bias:
                nn.init.zeros_(linear.bias)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def forward(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        """q [B, Q, D] decoder outputs, k [B, D, h, w] memory, mask bool [B, h, w]; returns [B, Q, heads, h, w]."""
        head_dim = self.hidden_dim // self.num_heads
        q = self.q_linear(q)
        # k_linear as a 1x1 convolution: the same projection applied at every memory position.
        k = F.conv2d(k, self.k_linear.weight[:, :, None, None], self.k_linear.bias)
        b, nq, (h, w) = q.shape[0], q.shape[1], k.shape[-2:]
        qh = q.reshape(b, nq, self.num_heads, head_dim).transpose(1, 2)  # [B, heads, Q, c]
        kh = k.reshape(b, self.num_heads, head_dim, h * w)  # [B, heads, c, hw]
        # detr's einsum("bqnc,bnchw->bqnhw") as a batched matmul, which every exporter handles.
        weights = torch.matmul(qh * self.normalize_fact, kh).transpose(1, 2).reshape(b, nq, self.num_heads, h, w)
        if mask is not None:
            weights = weights.masked_fill(mask[:, None, None], float("-inf"))
        weights = F.softmax(weights.flatten(2), dim=-1).reshape(weights.shape)
        return self.dropout(weights)


class MaskHeadSmallConv(nn.Module):
    """Conv + GroupNorm + ReLU stack that upsamples per-query attention maps with FPN skips from the backbone.

    ``fpn_dims`` are the widths of the backbone features at strides 16, 8, 4 (ResNet-50: 1024, 512, 256).
    """

    def __init__(self, dim: int, fpn_dims: tuple[int, int, int] | list[int], context_dim: int, groups: int = 8):
        super().__init__()
        widths = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(groups, dim)
        self.lay2 = nn.Conv2d(dim, widths[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(groups, widths[1])
        self.lay3 = nn.Conv2d(widths[1], widths[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(groups, widths[2])
        self.lay4 = nn.Conv2d(widths[2], widths[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(groups, widths[3])
        self.lay5 = nn.Conv2d(widths[3], widths[4], 3, padding=1)
        self.gn5 = nn.GroupNorm(groups, widths[4])
        self.out_lay = nn.Conv2d(widths[4], 1, 3, padding=1)
        self.dim = dim
        self.adapter1 = nn.Conv2d(fpn_dims[0], widths[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], widths[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], widths[3], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def adapt(self, fpns: list[Tensor]) -> list[Tensor]:
        """1x1 adapters on the per-image backbone features (strides 16, 8, 4), before any per-query expansion."""
        return [self.adapter1(fpns[0]), self.adapter2(fpns[1]), self.adapter3(fpns[2])]

    def decode(self, x: Tensor, bbox_mask: Tensor, adapted: list[Tensor]) -> Tensor:
        """x [B, D, h, w], bbox_mask [B, Q, heads, h, w], adapted = :meth:`adapt` output; returns [B*Q, 1, H/4, W/4]."""
        n = bbox_mask.shape[1]
        x = torch.cat([_expand(x, n), bbox_mask.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for skip, conv, norm in zip(adapted, (self.lay3, self.lay4, self.lay5), (self.gn3, self.gn4, self.gn5),
                                    strict=True):
            skip = _expand(skip, n)
            x = skip + F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = F.relu(norm(conv(x)))
        return self.out_lay(x)

    def forward(self, x: Tensor, bbox_mask: Tensor, fpns: list[Tensor]) -> Tensor:
        return self.decode(x, bbox_mask, self.adapt(fpns))


class DETRsegm(nn.Module):
    """DETR plus the mask head (detr's DETRsegm; parameter names ``detr.*``, ``bbox_attention.*``, ``mask_head.*``)."""

    def __init__(self, detr: DETR, fpn_dims: tuple[int, int, int] = (1024, 512, 256), freeze_detr: bool = False):
        super().__init__()
        self.detr = detr
        if freeze_detr:
            for p in self.parameters():
                p.requires_grad_(False)
        hidden_dim, nheads = detr.transformer.d_model, detr.transformer.nhead
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, nheads, dropout=0.0)
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, fpn_dims, hidden_dim)

    def forward_detector(self, images: Tensor, padding_mask: Tensor) -> Outputs:
        """Everything computed once per image: the detector's outputs plus the mask head's per-image inputs.

        Keys: pred_logits, pred_boxes (and aux_outputs when training with aux_loss) as :class:`DETR`, and
        hs [B, Q, D] (last decoder layer), memory [B, D, h, w], memory_mask bool [B, h, w] (padding at the
        transformer's stride), src_proj [B, D, h, w], fpn_s16 / fpn_s8 / fpn_s4 (adapter outputs of the backbone
        features at strides 16, 8, 4).
        """
        enc = self.detr.encode(images, padding_mask)
        out = self.detr.predict(enc.hs)
        fpn_s16, fpn_s8, fpn_s4 = self.mask_head.adapt([enc.features[2], enc.features[1], enc.features[0]])
        out.update(hs=enc.hs[-1], memory=enc.memory, memory_mask=enc.mask, src_proj=enc.src_proj,
                   fpn_s16=fpn_s16, fpn_s8=fpn_s8, fpn_s4=fpn_s4)
        return out

    def forward_masks(self, detector_outputs: Outputs, hs: Tensor | None = None) -> Tensor:
        """Mask logits [B, K, H/4, W/4] for the queries in ``hs`` [B, K, D] (default: all, detector_outputs['hs'])."""
        d = detector_outputs
        hs = d["hs"] if hs is None else hs
        bbox_mask = self.bbox_attention(hs, d["memory"], mask=d["memory_mask"])
        masks = self.mask_head.decode(d["src_proj"], bbox_mask, [d["fpn_s16"], d["fpn_s8"], d["fpn_s4"]])
        return masks.reshape(hs.shape[0], hs.shape[1], masks.shape[-2], masks.shape[-1])

    def forward(self, images: Tensor, padding_mask: Tensor) -> Outputs:
        """As :class:`DETR`, plus pred_masks [B, Q, H/4, W/4] (logits)."""
        d = self.forward_detector(images, padding_mask)
        out = {k: d[k] for k in ("pred_logits", "pred_boxes", "aux_outputs") if k in d}
        out["pred_masks"] = self.forward_masks(d)
        return out

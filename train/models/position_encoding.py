"""detr's sine position encoding: "Attention is all you need" frequencies over normalised row and column positions.

Positions count only valid (unpadded) pixels, so the same image gets the same encoding whatever padding the batch
adds around it. It has no weights, hence no state-dict entries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Encode each pixel's (y, x) as ``num_pos_feats`` interleaved sin/cos features each; output [B, 2F, h, w]."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float | None = None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale only applies when normalize=True")
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, padding_mask: Tensor) -> Tensor:
        """``padding_mask`` is bool [B, h, w], True on padding; returns float32 [B, 2 * num_pos_feats, h, w]."""
        valid = ~padding_mask
        # 1-based running count of valid pixels down each column / along each row, as detr does.
        y = valid.cumsum(1, dtype=torch.float32)
        x = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            x = x / (x[:, :, -1:] + eps) * self.scale
        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=padding_mask.device)
        # Channels 2k and 2k+1 share one frequency: sin on the even channel, cos on the odd one.
        freq = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)
        return torch.cat((self._interleave(y[..., None] / freq), self._interleave(x[..., None] / freq)),
                         dim=3).permute(0, 3, 1, 2)

    @staticmethod
    def _interleave(angles: Tensor) -> Tensor:
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)

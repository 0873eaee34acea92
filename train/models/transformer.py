"""detr's encoder-decoder transformer (sequence-first layout, as torch.nn.Transformer) with its three changes:

* position encodings are added to the queries and keys of every attention, never to the values;
* the encoder has a final LayerNorm only in the pre-norm variant; the decoder always has one;
* the decoder returns every layer's (normalised) output, for the auxiliary losses.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention then FFN, each with a residual; LayerNorm after (post-norm) or before (pre-norm) each."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _attend(self, x: Tensor, key_padding_mask: Tensor | None, pos: Tensor | None) -> Tensor:
        q = k = _with_pos(x, pos)
        return self.dropout1(self.self_attn(q, k, value=x, key_padding_mask=key_padding_mask, need_weights=False)[0])

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))

    def forward(self, src: Tensor, key_padding_mask: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        if self.normalize_before:
            src = src + self._attend(self.norm1(src), key_padding_mask, pos)
            return src + self._ffn(self.norm2(src))
        src = self.norm1(src + self._attend(src, key_padding_mask, pos))
        return self.norm2(src + self._ffn(src))


class TransformerDecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the encoder memory, then FFN (post- or pre-norm as the encoder)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _self_attend(self, x: Tensor, query_pos: Tensor | None) -> Tensor:
        q = k = _with_pos(x, query_pos)
        return self.dropout1(self.self_attn(q, k, value=x, need_weights=False)[0])

    def _cross_attend(self, x: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None,
                      pos: Tensor | None, query_pos: Tensor | None) -> Tensor:
        out = self.multihead_attn(_with_pos(x, query_pos), _with_pos(memory, pos), value=memory,
                                  key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
        return self.dropout2(out)

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x)))))

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None = None,
                pos: Tensor | None = None, query_pos: Tensor | None = None) -> Tensor:
        if self.normalize_before:
            tgt = tgt + self._self_attend(self.norm1(tgt), query_pos)
            tgt = tgt + self._cross_attend(self.norm2(tgt), memory, memory_key_padding_mask, pos, query_pos)
            return tgt + self._ffn(self.norm3(tgt))
        tgt = self.norm1(tgt + self._self_attend(tgt, query_pos))
        tgt = self.norm2(tgt + self._cross_attend(tgt, memory, memory_key_padding_mask, pos, query_pos))
        return self.norm3(tgt + self._ffn(tgt))


def _clones(layer: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(n))


class TransformerEncoder(nn.Module):
    def __init__(self, layer: TransformerEncoderLayer, num_layers: int, norm: nn.LayerNorm | None = None):
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.norm = norm

    def forward(self, src: Tensor, key_padding_mask: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.LayerNorm):
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None = None,
                pos: Tensor | None = None, query_pos: Tensor | None = None) -> Tensor:
        """Returns [num_layers, Q, B, D]: each layer's output passed through the shared final norm."""
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask, pos, query_pos)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)


class Transformer(nn.Module):
    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, normalize_before: bool = False):
        super().__init__()
        encoder_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        encoder_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, encoder_norm)
        decoder_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.decoder = TransformerDecoder(decoder_layer, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        self.nhead = nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor) -> tuple[Tensor, Tensor]:
        """src/pos_embed [B, D, h, w], mask bool [B, h, w] (True on padding), query_embed [Q, D].

        Returns (hs [num_decoder_layers, B, Q, D], memory [B, D, h, w]).
        """
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_pos = query_embed.unsqueeze(1).repeat(1, bs, 1)
        mask = mask.flatten(1)
        memory = self.encoder(src, key_padding_mask=mask, pos=pos_embed)
        hs = self.decoder(torch.zeros_like(query_pos), memory, memory_key_padding_mask=mask, pos=pos_embed,
                          query_pos=query_pos)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).reshape(bs, c, h, w)

"""DETR model pieces: backbone, transformer, DETR heads, segmentation head, matcher and criterion."""

from __future__ import annotations

from train.models.backbone import build_backbone
from train.models.config import DETRConfig, config_from_state_dict
from train.models.detr import DETR
from train.models.segmentation import DETRsegm
from train.models.transformer import Transformer

__all__ = ["DETR", "DETRConfig", "DETRsegm", "build_model", "config_from_state_dict"]


def build_model(config: DETRConfig, freeze_detr: bool = False) -> DETR | DETRsegm:
    """A randomly initialised DETR (``config.masks`` False) or DETRsegm, with detr's parameter names and shapes.

    ``freeze_detr`` (panoptic only) freezes the detector so only the mask head trains, as detr's --frozen_weights.
    """
    config.validate()
    backbone = build_backbone(config.backbone, config.hidden_dim, train_backbone=config.train_backbone,
                              return_interm_layers=config.masks, dilation=config.dilation)
    transformer = Transformer(d_model=config.hidden_dim, nhead=config.nheads, num_encoder_layers=config.enc_layers,
                              num_decoder_layers=config.dec_layers, dim_feedforward=config.dim_feedforward,
                              dropout=config.dropout, normalize_before=config.pre_norm)
    detr = DETR(backbone, transformer, num_classes=config.num_classes, num_queries=config.num_queries,
                aux_loss=config.aux_loss)
    if not config.masks:
        return detr
    layer1, layer2, layer3, _ = config.backbone_channels
    return DETRsegm(detr, fpn_dims=(layer3, layer2, layer1), freeze_detr=freeze_detr)

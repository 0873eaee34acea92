"""Shared test helper: make a random tiny DETR panoptic model behave like a trained one where tests need it."""

import torch

THING, STUFF = 1, 8  # circle and wall of the synthetic category table


def separable(model: torch.nn.Module) -> torch.nn.Module:
    """Confident thing/stuff predictions split between queries, and per-query masks that differ well beyond float
    rounding, so panoptic comparisons (export verification, infer parity, agreement) mean something."""
    hidden_dim = model.detr.transformer.d_model
    with torch.no_grad():
        model.detr.class_embed.bias[[THING, STUFF]] += 8.0
        model.detr.class_embed.weight[STUFF] += 3.0 * torch.randn(model.detr.class_embed.weight.shape[1])
        model.bbox_attention.q_linear.weight *= 3.0
        model.mask_head.lay1.weight[:, hidden_dim:] *= 100.0
    return model

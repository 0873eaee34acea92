"""Evaluation during and after training: validation losses, and PQ through the runtime's evaluator."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from train.engine import to_device, weighted_loss


@torch.no_grad()
def validation_losses(model: torch.nn.Module, criterion: torch.nn.Module, loader, device) -> dict[str, float]:
    model.eval()
    criterion.eval()
    sums: dict[str, float] = defaultdict(float)
    count = 0
    for images, padding_mask, targets in loader:
        outputs = model(images.to(device), padding_mask.to(device))
        loss_dict = criterion(outputs, to_device(targets, device))
        sums["loss"] += float(weighted_loss(loss_dict, criterion.weight_dict))
        for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "class_error"):
            if k in loss_dict:
                sums[k] += float(loss_dict[k])
        count += 1
    return {f"val_{k}": v / max(count, 1) for k, v in sums.items()}


def evaluate(model, criterion, loader, device, args: argparse.Namespace, output_dir: Path | None) -> dict[str, Any]:
    return validation_losses(model, criterion, loader, device)

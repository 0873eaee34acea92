"""One training epoch and one evaluation pass, as detr's engine.py does them (plain tensors, no NestedTensor)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from tqdm import tqdm

from runtime.errors import PansegError
from train.amp import to_float32
from train.distributed import reduce_mean


def to_device(targets: list[dict[str, Any]], device: torch.device | str) -> list[dict[str, Any]]:
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def weighted_loss(loss_dict: dict[str, torch.Tensor], weight_dict: dict[str, float]) -> torch.Tensor:
    return sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)


def train_one_epoch(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    epoch: int,
    clip_max_norm: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    frozen: Iterable[torch.nn.Module] = (),
    show_progress: bool = True,
    channels_last: bool = False,
) -> dict[str, float]:
    """Train for one epoch; returns the epoch's mean of every loss term (weighted total under 'loss').

    ``amp_dtype`` runs the forward pass under autocast (train.amp); the criterion always sees float32 outputs.
    ``channels_last`` hands the images to a channels-last model in that layout.
    Modules in ``frozen`` are kept in eval mode: their weights cannot change, so dropout there would only make the
    features the trained part sees differ from the ones it gets at inference.
    """
    model.train()
    criterion.train()
    for module in frozen:
        module.eval()
    sums: dict[str, float] = defaultdict(float)
    count = 0
    device_type = torch.device(device).type
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", disable=not show_progress, leave=False, dynamic_ncols=True)
    for images, padding_mask, targets in bar:
        images, padding_mask = images.to(device), padding_mask.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = to_device(targets, device)
        with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(images, padding_mask)
        loss_dict = criterion(to_float32(outputs), targets)
        loss = weighted_loss(loss_dict, criterion.weight_dict)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            terms = {k: round(float(v), 4) for k, v in loss_dict.items()}
            raise PansegError(f"training diverged at epoch {epoch}: loss is {loss_value} {terms}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        count += 1
        sums["loss"] += loss_value
        for k, v in loss_dict.items():
            sums[k] += float(v.detach())
        bar.set_postfix(loss=f"{sums['loss'] / count:.3f}")
    means = {k: v / max(count, 1) for k, v in sums.items()}
    return reduce_mean(means)

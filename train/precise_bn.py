"""BatchNorm statistics recomputed at the inference scale after training ("precise BN", as in detectron2).

A backbone trained from scratch keeps real BatchNorm layers (train/scratch_backbone.py), and training normalizes each
batch by that batch's own statistics. With size-grouped batches (train/datasets/grouped.py) every batch holds one
scale and no padding, so the statistics the layers learnt to expect are those of one scale; the running averages
kept during training mix every scale with a momentum over the last few batches, which is what inference then uses.
Measured on the demo's detector (issue 19, AMD EPYC; validation loss at batch 1, as deployed): size-grouped
training gave 1.52 with its running statistics and 1.36 after recomputing them over 60 batches, against 1.47 for
the same recipe with detr's mixed batches; the demo's PQ rose from 40.4 / things 5.6 (8 + 3 epochs) to 45.7 / 11.6
(8 + 4 epochs; 45.9 / 12.0 after 3). That is not the 55.1 / 27.2 of mixed batches (8 + 4): the grouped detector's
thing queries stay less confident (37 above detr's 0.85 threshold on 100 val images, against 128), for a reason not
found yet. Only for grouped batches: detr's padded, mixed-scale batches normalize with statistics their running
averages already match (recomputing them unpadded at one scale made that model worse, 1.58).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[BatchNorm]:
    """Every real BatchNorm layer (the frozen ones of a pretrained backbone hold fixed statistics and are skipped)."""
    return [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, object], object],
                                   show_progress: bool = False) -> int:
    """Replace every BatchNorm's running mean and variance by their plain average over ``batches``.

    ``forward(model, batch)`` runs the model on one batch. Only the BatchNorm layers are put in training mode (so
    dropout and the like stay off); nothing but the running statistics changes. Returns the number of batches used.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in layers]
    was_training = model.training
    momenta = [bn.momentum for bn in layers]
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative moving average: every batch counts the same
        bn.train()
    count = 0
    try:
        for batch in tqdm(batches, desc="BatchNorm statistics", disable=not show_progress, leave=False):
            forward(model, batch)
            count += 1
    finally:
        for bn, momentum, (mean, var) in zip(layers, momenta, saved, strict=True):
            bn.momentum = momentum
            if count == 0:  # nothing seen: keep the statistics there were
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
        model.train(was_training)
    return count

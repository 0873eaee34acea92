"""Training a backbone from scratch (no pretrained weights can be downloaded here) without changing the model.

detr starts from an ImageNet ResNet, freezes its BatchNorm statistics and the stem + layer1. From random weights
that recipe starves: the frozen statistics are identity, and the frozen stem is random. For training only, this
swaps every FrozenBatchNorm2d of the backbone for a real BatchNorm2d holding the same values and unfreezes every
backbone layer. The state dict keeps detr's names (weight, bias, running_mean, running_var; BatchNorm's extra
num_batches_tracked is dropped by FrozenBatchNorm2d on load, as in detr), so checkpoints load into, and export as,
the unchanged detr architecture, whose frozen statistics are then the running statistics learned here.
"""

from __future__ import annotations

from torch import nn

from train.models.backbone import FrozenBatchNorm2d


def _as_batchnorm(frozen: FrozenBatchNorm2d) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(frozen.weight.numel(), eps=frozen.eps)
    bn.weight.data.copy_(frozen.weight)
    bn.bias.data.copy_(frozen.bias)
    bn.running_mean.copy_(frozen.running_mean)
    bn.running_var.copy_(frozen.running_var)
    return bn.to(frozen.weight.device)


def train_backbone_from_scratch(backbone: nn.Module) -> int:
    """Swap FrozenBatchNorm2d -> BatchNorm2d in place and make every backbone parameter trainable.

    Returns the number of normalization layers swapped.
    """
    swapped = 0
    for module in list(backbone.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, FrozenBatchNorm2d):
                setattr(module, name, _as_batchnorm(child))
                swapped += 1
    for param in backbone.parameters():
        param.requires_grad_(True)
    return swapped

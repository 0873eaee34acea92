"""ResNet backbone with frozen BatchNorm, and the joiner that adds the padding mask and position encoding.

Module names mirror detr (``backbone.0.body.layer1...``) so its checkpoints load unchanged. Weights start random;
``python -m train --backbone_weights`` loads torchvision's ImageNet weights into them (train/pretrained.py), and
``--pretrained`` a whole detr checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from train.models.config import BACKBONE_CHANNELS
from train.models.position_encoding import PositionEmbeddingSine


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all buffers (detr's version: eps 1e-5 inside rsqrt).

    Batch statistics are useless at detection batch sizes of 2-4 images, so detr freezes them to ImageNet's.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Weights from a regular BatchNorm2d carry a step counter that a frozen one has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def downsample_padding_mask(padding_mask: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Padding mask at a feature map's size, by nearest-neighbour sampling exactly as detr does."""
    return F.interpolate(padding_mask[:, None].float(), size=size, mode="nearest")[:, 0].bool()


def dilate_basic_layer4(layer4: nn.Sequential) -> None:
    """DC5 for ResNet-18/34, whose BasicBlock torchvision refuses to dilate: the same change torchvision makes to a
    bottleneck layer4 (stride 1; the first block keeps dilation 1, later blocks use dilation 2), done on the built
    convolutions, so parameter names and shapes stay the standard ones."""
    for index, block in enumerate(layer4):
        for conv in (block.conv1, block.conv2):
            conv.stride = (1, 1)
            if index > 0:
                conv.dilation, conv.padding = (2, 2), (2, 2)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


class Backbone(nn.Module):
    """torchvision ResNet (random init until weights are loaded, FrozenBatchNorm2d) returning layer4, or
    layer1..layer4 for the mask head."""

    def __init__(self, name: str, train_backbone: bool = True, return_interm_layers: bool = False,
                 dilation: bool = False):
        super().__init__()
        bottleneck = name in ("resnet50", "resnet101")
        resnet = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=[False, False, dilation and bottleneck],
            norm_layer=FrozenBatchNorm2d,
        )
        if dilation and not bottleneck:
            dilate_basic_layer4(resnet.layer4)
        # detr trains layer2-4 only: the stem and layer1 stay as loaded (ImageNet weights: --backbone_weights).
        for pname, param in resnet.named_parameters():
            if not train_backbone or not any(f"layer{i}" in pname for i in (2, 3, 4)):
                param.requires_grad_(False)
        layers = ("layer1", "layer2", "layer3", "layer4") if return_interm_layers else ("layer4",)
        self.body = IntermediateLayerGetter(resnet, return_layers={layer: str(i) for i, layer in enumerate(layers)})
        self.num_channels = BACKBONE_CHANNELS[name][3]

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.body(images).values())


class Joiner(nn.Sequential):
    """Backbone + position encoding (an nn.Sequential only so that parameter names are detr's ``backbone.0.*``)."""

    def __init__(self, backbone: Backbone, position_embedding: PositionEmbeddingSine):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, images: Tensor, padding_mask: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Returns (features, mask, pos): backbone outputs from high to low resolution, then the padding mask and the
        position encoding at the last (lowest-resolution) level, the only level detr's transformer uses."""
        features = self[0](images)
        mask = downsample_padding_mask(padding_mask, features[-1].shape[-2:])
        pos = self[1](mask).to(features[-1].dtype)
        return features, mask, pos


def build_backbone(name: str, hidden_dim: int, train_backbone: bool = True, return_interm_layers: bool = False,
                   dilation: bool = False) -> Joiner:
    position_embedding = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
    return Joiner(Backbone(name, train_backbone, return_interm_layers, dilation), position_embedding)

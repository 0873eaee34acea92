"""The benchmark R50's data-dependent BatchNorm statistics (benchmarks/defaults.py), against a brute-force version."""

import torch
from torch import nn

from benchmarks.defaults import measure_frozen_batchnorm
from train.models.backbone import FrozenBatchNorm2d


class TwoNormalizedLayers(nn.Module):
    """1x1 convolutions (no spill across the padding border) with a FrozenBatchNorm2d after each, and a stride."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 1), FrozenBatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 4, 1, stride=2), FrozenBatchNorm2d(4)

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(images)))))


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.permute(1, 0, 2, 3).reshape(x.shape[1], -1)


def test_statistics_are_those_of_the_unpadded_pixels_layer_after_layer():
    torch.manual_seed(0)
    model = TwoNormalizedLayers()
    shapes = [(6, 8), (4, 6)]
    images = [3.0 + 2.0 * torch.randn(1, 3, h, w) for h, w in shapes]
    batch = torch.full((2, 3, 6, 8), 1e6)  # padding no statistic may see
    mask = torch.ones(2, 6, 8, dtype=torch.bool)
    for k, image in enumerate(images):
        batch[k, :, :image.shape[2], :image.shape[3]] = image
        mask[k, :image.shape[2], :image.shape[3]] = False

    assert measure_frozen_batchnorm(model, batch, mask) == 2

    # brute force: each image alone, no padding; bn2 measured after bn1 is set (the order a forward pass takes)
    with torch.no_grad():
        first = torch.cat([_pixels(model.conv1(image)) for image in images], dim=1)
        torch.testing.assert_close(model.bn1.running_mean, first.mean(1))
        torch.testing.assert_close(model.bn1.running_var, first.var(1, unbiased=False))
        second = torch.cat([_pixels(model.conv2(torch.relu(model.bn1(model.conv1(image))))) for image in images], 1)
        torch.testing.assert_close(model.bn2.running_mean, second.mean(1))
        torch.testing.assert_close(model.bn2.running_var, second.var(1, unbiased=False))
        # and the layers now normalize what they see: mean 0, variance 1 per channel over the real pixels
        out = torch.cat([_pixels(model(image, torch.zeros(1, *image.shape[2:], dtype=torch.bool)))
                         for image in images], dim=1)
        torch.testing.assert_close(out.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.var(1, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    assert not model.bn1._forward_pre_hooks and not model.bn2._forward_pre_hooks  # nothing left behind

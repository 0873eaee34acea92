"""The benchmark's defaults when the user gives no model or no photos: detr's R50 panoptic architecture on real photos.

Photos: a few of scikit-image's bundled photographs (astronaut, coffee, chelsea, rocket), written as JPEG so the timed
decode is a real JPEG decode.

Model: random weights give valid *latency* (same shapes, same ops) but meaningless *accuracy*. A randomly initialised
DETR is also degenerate in a way that would make the benchmark dishonest: its 100 decoder outputs are nearly
identical, so either no query passes the threshold (post-processing costs nothing) or all do, and every pixel's
argmax over queries is decided by float rounding, so two correct engines "disagree". :func:`make_non_degenerate`
therefore sets the model up deliberately:

- the backbone is set up as a trained ResNet is, not as a random one: its frozen BatchNorm statistics are measured
  on the photos (:func:`measure_frozen_batchnorm`), and the last BatchNorm of every residual branch scales by
  ``RESIDUAL_GAMMA`` (trained ResNets keep these small; Goyal et al. start them at 0). With identity statistics,
  random convolutions pass on an uncentred signal (all-positive after each ReLU) that grows 65x over the stages and
  whose common part swamps what differs between image positions; with measured statistics but full residual
  branches the network is chaotic (a 1e-3 input change grows to 1.1e-1 at layer4; 6.6e-3 with these branches);
- the query embeddings are scaled up and the decoder's cross-attention is sharpened (attention logits up to ~120,
  which float16 still resolves), so each query reads its own part of the image and the decoder outputs ``hs`` of
  different queries really differ. Precision benchmarks depend on this: with the earlier set-up, ``hs`` differed
  between queries by 3% of its magnitude, less than INT8's error on it (7-10%), so the class decisions read from
  those differences flipped for any engine (even fp32 ONNX Runtime kept only 75% of eager's segments); now they
  differ by about 21%;
- the class head maps those outputs, through fixed random directions, to confident votes among a few COCO thing and
  stuff categories, and its "no object" bias is calibrated on the photos so that about ``target_kept`` (default 20)
  queries per image pass the threshold: the post-processing then does the work it does for a trained model;
- the mask attention is sharpened and the mask head's first layer reads only the query's attention maps (its weights
  on the shared image features are zeroed; the later FPN layers still add image structure), so each query's mask
  differs clearly from the others' instead of near-ties decided by rounding.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from benchmarks.detr_reference import detr_eval_batch
from runtime.categories import categories_to_json
from runtime.coco_categories import coco_panoptic_categories
from runtime.postprocess import DEFAULT_THRESHOLD, select_queries
from train.checkpoint import save_checkpoint
from train.models import DETRConfig, build_model
from train.models.backbone import FrozenBatchNorm2d, downsample_padding_mask

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
RANDOM_MODEL_NOTE = ("RANDOM WEIGHTS (no --checkpoint): latency is valid, accuracy is meaningless; the model was made "
                     "deliberately non-degenerate (scaled query embeddings, a calibrated class head keeping ~{kept} "
                     "queries per image, scaled mask attention) so post-processing and agreement are exercised "
                     "honestly")
# Shorter side the class head is calibrated at when the caller gives none. Kept counts do depend on it (calibrated at
# 320 on a padded batch, the R50 photos kept 2-99 queries, mean ~57, at 800 one by one), so the benchmark calibrates
# at its own size, one photo per call, as it then runs them.
CALIBRATION_SIZE = 800
QUERY_SCALE = 16.0
CROSS_ATTENTION_GAIN = 2.0  # on the decoder's cross-attention query projection
RESIDUAL_GAMMA = 0.1  # weight of the last BatchNorm in each residual branch
CLASS_GAIN = 8.0
NO_OBJECT_GAIN = 4.0
N_THINGS, N_STUFF = 6, 4


def write_default_photos(folder: str | Path, names: Sequence[str] = SKIMAGE_PHOTOS, quality: int = 90) -> list[Path]:
    """scikit-image's photographs ``names`` as RGB JPEGs in ``folder``."""
    import skimage.data

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=-1)
        path = folder / f"{name}.jpg"
        Image.fromarray(pixels[..., :3].astype(np.uint8)).save(path, quality=quality)
        paths.append(path)
    return paths


def _eval_batch(paths: Sequence[Path], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, mask, _ = detr_eval_batch([Image.open(p).convert("RGB") for p in paths], size, round(size * 1333 / 800))
    return images, mask


def _standardized_direction(hs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random direction v and bias b with v . h + b of mean 0 and std 1 over the calibration queries ``hs``."""
    v = torch.randn(hs.shape[-1], generator=generator)
    projection = hs @ v
    std = projection.std().clamp_min(1e-6)
    return v / std, -projection.mean() / std


@torch.no_grad()
def measure_frozen_batchnorm(model: nn.Module, images: torch.Tensor, padding_mask: torch.Tensor) -> int:
    """Set every FrozenBatchNorm2d's running mean and variance to its input's per-channel statistics over the
    unpadded pixels of ``images``, in one forward pass (each layer is set before it normalizes, so later layers see
    the already-normalized earlier ones). Returns how many layers were set."""

    def measure(layer: FrozenBatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        valid = ~downsample_padding_mask(padding_mask, x.shape[-2:])
        values = x.permute(1, 0, 2, 3)[:, valid]  # C x (unpadded pixels)
        layer.running_mean.copy_(values.mean(dim=1))
        layer.running_var.copy_(values.var(dim=1, unbiased=False))

    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    hooks = [layer.register_forward_pre_hook(measure) for layer in layers]
    try:
        model(images, padding_mask)
    finally:
        for hook in hooks:
            hook.remove()
    return len(layers)


@torch.no_grad()
def make_non_degenerate(model: nn.Module, photos: Sequence[Path], target_kept: int = 20,
                        threshold: float = DEFAULT_THRESHOLD, seed: int = 0,
                        size: int = CALIBRATION_SIZE) -> dict[str, float]:
    """Set up a random DETRsegm as the module docstring says; returns what calibration found (for the report)."""
    generator = torch.Generator().manual_seed(seed)
    detr = model.detr
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for block in getattr(detr.backbone[0].body, stage):
            (block.bn3 if hasattr(block, "bn3") else block.bn2).weight.fill_(RESIDUAL_GAMMA)
    measure_frozen_batchnorm(detr.backbone, *_eval_batch(photos, size))
    detr.query_embed.weight.mul_(QUERY_SCALE)
    for layer in detr.transformer.decoder.layers:
        query_projection = layer.multihead_attn.in_proj_weight[:detr.transformer.d_model]
        query_projection.mul_(CROSS_ATTENTION_GAIN)
    model.bbox_attention.q_linear.weight.mul_(5.0)  # peakier attention maps: each query looks somewhere else
    model.mask_head.lay1.weight[:, :detr.transformer.d_model] = 0.0  # the first mask layer sees only the query's maps
    for adapter in (model.mask_head.adapter1, model.mask_head.adapter2, model.mask_head.adapter3):
        adapter.weight.mul_(0.05)  # the shared FPN features refine the per-query maps instead of drowning them

    # B x Q x D, each photo alone (no padding) at the benchmark's size; the class head does not change hs
    hs = torch.cat([model.forward_detector(*_eval_batch([photo], size))["hs"] for photo in photos])
    table = coco_panoptic_categories()
    things = [c.id for c in table.values() if c.isthing][:N_THINGS]
    stuff = [c.id for c in table.values() if not c.isthing][:N_STUFF]
    head = detr.class_embed
    no_object = head.weight.shape[0] - 1
    head.weight.zero_()
    head.bias.fill_(-30.0)  # classes that are not voted for never win
    for category in things + stuff:
        v, b = _standardized_direction(hs, generator)
        head.weight[category] = CLASS_GAIN * v
        head.bias[category] = CLASS_GAIN * b
    u, c = _standardized_direction(hs, generator)
    head.weight[no_object] = -NO_OBJECT_GAIN * u

    def mean_kept(bias: float) -> float:
        head.bias[no_object] = -NO_OBJECT_GAIN * c + bias
        logits = head(hs).numpy()
        return float(np.mean([select_queries(image_logits, threshold)[0].size for image_logits in logits]))

    low, high = -50.0, 50.0  # kept count falls as the no-object bias rises
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_kept(middle) > target_kept else (low, middle)
    kept = mean_kept(high)
    return {"target_kept": target_kept, "calibrated_kept": kept, "calibration_size": size,
            "no_object_bias": float(high), "things": things, "stuff": stuff}


def make_random_checkpoint(path: str | Path, photos: Sequence[Path], config: DETRConfig | None = None,
                           target_kept: int = 20, seed: int = 0, size: int = CALIBRATION_SIZE) -> dict[str, float]:
    """A random, deliberately non-degenerate DETR-R50 panoptic checkpoint (COCO panoptic categories) at ``path``."""
    torch.manual_seed(seed)
    config = config or DETRConfig()
    model = build_model(config).eval()
    calibration = make_non_degenerate(model, photos, target_kept, seed=seed, size=size)
    save_checkpoint(path, {"model": model.state_dict(), "config": config.to_dict(),
                           "categories": categories_to_json(coco_panoptic_categories()),
                           "note": RANDOM_MODEL_NOTE.format(kept=target_kept)})
    return calibration


def temporary_folder(prefix: str = "panseg-latency-") -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)

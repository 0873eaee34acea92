"""Optimization-profile shapes of a panseg model, for TensorRT engines and ONNX Runtime's TensorRT provider alike.

One place for these facts because two builders need them: ``python -m export.tensorrt`` (export/tensorrt/profile.py
and masks.py add the flags and the ONNX reading) and the ONNX Runtime backend's TensorRT execution provider
(``trt_profile_min_shapes/opt/max``; without them it rebuilds its engines mid-run whenever an image size falls
outside what it has seen). Pure Python on (name, declared dims) pairs: no onnx, no TensorRT.

Detector: ``images`` (B x 3 x H x W) and ``padding_mask`` (B x H x W) share one B/H/W range. Defaults come from the
resize policy the export stored (detr's: shorter side 800, longer side at most 1333): H and W each range over
[size / 21:9 .. max_size] so portrait, landscape and mixed batches fit; opt is a 4:3 landscape image (COCO's most
common shape, 640 x 480 -> 800 x 1066); batch 1.

Mask graph of a query-sparse export, told apart by its inputs' declared dimension names:

* ``kept`` (``hs_kept``, ``image_index``): the kept (image, query) pairs of a whole batch, 1 .. max batch x queries
  (the runtime skips the mask graph when nothing is kept); tuned for OPT_KEPT_PER_IMAGE per image, a typical count of
  segments in a COCO picture;
* ``batch``: the per-image tensors' batch, the detector's batch range;
* ``<feature>_height`` / ``<feature>_width``: the per-image tensors' spatial size at the stride of the backbone feature
  they come from: ``feat`` (stride 32, 16 with DC5 dilation), ``s16``, ``s8`` and ``mask`` (the metadata's
  ``mask_stride``, 4). ResNet's stride-2 convolutions and max pooling all round up, so an H x W image gives
  ceil(H / s) x ceil(W / s); the range follows the detector's image range through that formula.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.contract import KEPT_DIM
from runtime.errors import PansegError
from runtime.preprocess import target_size
from runtime.trt_sidecar import TensorProfile, format_shape

BHW = tuple[int, int, int]
AXES = ("batch", "height", "width")
TYPICAL_IMAGE = (640, 480)  # width, height of the shape opt is tuned for (COCO's most common, 4:3 landscape)
OPT_KEPT_PER_IMAGE = 20
BATCH_DIM = "batch"
_SPATIAL_DIM = re.compile(r"(?P<feature>\w+?)_(?P<axis>height|width)")


@dataclass(frozen=True)
class ShapeRange:
    """One batch x height x width range shared by every input."""

    min: BHW
    opt: BHW
    max: BHW

    def check(self) -> None:
        """min <= opt <= max on every axis, with a message naming the flags and the axis."""
        named = [("--min-shape", self.min), ("--opt-shape", self.opt), ("--max-shape", self.max)]
        for (left, low), (right, high) in itertools.pairwise(named):
            for axis, (a, b) in enumerate(zip(low, high, strict=True)):
                if a > b:
                    raise PansegError(f"{left} {format_shape(low)} is above {right} {format_shape(high)} in "
                                      f"{AXES[axis]} ({a} > {b})")

    def describe(self) -> str:
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"


WIDEST_ASPECT = 21 / 9  # the default profile accepts pictures up to this elongated (16:9 and 2:1 included)


def default_range(resize: Any, source: str) -> ShapeRange:
    """The range the stored resize policy produces (see the module docstring)."""
    if not isinstance(resize, Mapping) or not isinstance(resize.get("size"), int):
        raise PansegError(f"{source}: no resize policy in the model's metadata to derive the profile from; "
                          "give --min-shape, --opt-shape and --max-shape")
    size, max_size = resize["size"], resize.get("max_size")
    if not isinstance(max_size, int):
        raise PansegError(f"{source}: the resize policy has no maximum size (shorter side {size}, longer side "
                          "unbounded), so no profile covers every image; give --min-shape, --opt-shape and --max-shape")
    opt_h, opt_w = target_size(*TYPICAL_IMAGE, size, max_size)
    # Wide or tall photos have their short side below `size` once the long side is capped: cover up to 21:9.
    min_side = min(size, int(max_size / WIDEST_ASPECT))
    # detr rounds the short side before scaling the long one, which can overshoot max_size by up to aspect / 2 pixels.
    max_side = max_size + math.ceil(WIDEST_ASPECT / 2)
    return ShapeRange(min=(1, min_side, min_side), opt=(1, opt_h, opt_w), max=(1, max_side, max_side))


def bhw_axes(name: str, dims: Sequence[int | str | None], source: str) -> tuple[int, ...]:
    """Axes of ``dims`` holding batch, height, width: (0, 2, 3) for B x C x H x W, (0, 1, 2) for B x H x W."""
    if len(dims) == 4:
        if not isinstance(dims[1], int) or dims[1] <= 0:
            raise PansegError(f"{source}: input {name} has a dynamic channel dimension ({dims}); re-export it with a "
                              "fixed number of channels")
        return 0, 2, 3
    if len(dims) == 3:
        return 0, 1, 2
    raise PansegError(f"{source}: input {name} has rank {len(dims)}; the profile covers B x C x H x W images and "
                      "B x H x W masks only")


def input_profiles(shape_range: ShapeRange, inputs: Sequence[tuple[str, Sequence[int | str | None]]],
                   source: str) -> dict[str, TensorProfile]:
    """The per-input min/opt/max shapes: the B/H/W range placed into each input's layout, other dims as declared."""
    profiles = {}
    for name, dims in inputs:
        axes = bhw_axes(name, dims, source)
        shapes = []
        for bhw in (shape_range.min, shape_range.opt, shape_range.max):
            shape = [int(d) if isinstance(d, int) else 0 for d in dims]
            for value, dim_index in zip(bhw, axes, strict=True):
                shape[dim_index] = value
            shapes.append(tuple(shape))
        profiles[name] = TensorProfile(*shapes)
    return profiles


def feature_strides(metadata: Mapping[str, Any], source: str) -> dict[str, int]:
    """Stride of each spatial feature the mask graph's dimension names refer to, from the detector's metadata."""
    config = metadata.get("model_config")
    if not isinstance(config, Mapping):
        raise PansegError(f"{source}: metadata 'model_config' is missing; cannot tell the backbone's stride "
                          "(re-export the model with python -m export.onnx)")
    mask_stride = metadata.get("mask_stride", 4)
    if isinstance(mask_stride, bool) or not isinstance(mask_stride, int) or mask_stride < 1:
        raise PansegError(f"{source}: metadata 'mask_stride' must be a positive integer, got {mask_stride!r}")
    # detr's DC5 (dilation) keeps layer4 at layer3's stride instead of halving it
    return {"feat": 16 if config.get("dilation") else 32, "s16": 16, "s8": 8, "mask": mask_stride}


def kept_range(shape_range: ShapeRange, num_queries: int) -> tuple[int, int, int]:
    """(min, opt, max) kept queries of one mask-engine call for the detector's batch range."""
    most = shape_range.max[0] * num_queries
    return 1, min(most, shape_range.opt[0] * min(OPT_KEPT_PER_IMAGE, num_queries)), most


def mask_input_profiles(inputs: Sequence[tuple[str, Sequence[int | str | None]]], shape_range: ShapeRange,
                        metadata: Mapping[str, Any], source: str) -> dict[str, TensorProfile]:
    """The mask graph's per-input min/opt/max shapes (``inputs``: name and declared dims, symbolic names kept),
    derived from the detector's range as the module docstring says."""
    num_queries = metadata.get("num_queries")
    if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
        raise PansegError(f"{source}: metadata 'num_queries' must be a positive integer, got {num_queries!r}")
    strides = feature_strides(metadata, source)
    kept = kept_range(shape_range, num_queries)
    corners = (shape_range.min, shape_range.opt, shape_range.max)
    profiles = {}
    for name, dims in inputs:
        if all(isinstance(d, int) and d > 0 for d in dims):
            continue  # fully static: no profile needed
        shapes = [tuple(_dim_size(d, k, bhw, strides, name, source) for d in dims)
                  for k, bhw in zip(kept, corners, strict=True)]
        profiles[name] = TensorProfile(*shapes)
    return profiles


def _dim_size(dim: int | str | None, kept: int, bhw: tuple[int, int, int], strides: Mapping[str, int], name: str,
              source: str) -> int:
    if isinstance(dim, int) and dim > 0:
        return dim
    if dim == KEPT_DIM:
        return kept
    if dim == BATCH_DIM:
        return bhw[0]
    match = _SPATIAL_DIM.fullmatch(dim) if isinstance(dim, str) else None
    if match and match["feature"] in strides:
        size = bhw[1] if match["axis"] == "height" else bhw[2]
        return math.ceil(size / strides[match["feature"]])
    raise PansegError(f"{source}: mask graph input {name} has a dynamic dimension {dim!r} the profile cannot derive "
                      f"(known: {KEPT_DIM}, {BATCH_DIM}, {', '.join(f'{f}_height/width' for f in strides)}); "
                      "re-export the model with python -m export.onnx")

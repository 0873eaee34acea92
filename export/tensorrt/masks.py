"""The mask engine of a query-sparse export: its file name, optimization profile and side-file metadata.

A query-sparse detector (export/onnx/sparse.py) names its mask graph in its metadata (``query_sparse``); both become
engines in one build. The mask graph's inputs are of three kinds, told apart by their declared dimension names:

* ``kept`` (``hs_kept``, ``image_index``): the kept (image, query) pairs of a whole batch, 1 .. max batch x queries
  (the runtime skips the mask engine when nothing is kept, so 0 never reaches it); tuned for OPT_KEPT_PER_IMAGE per
  image, a typical count of segments in a COCO picture;
* ``batch``: the per-image tensors' batch, the detector's batch range;
* ``<feature>_height`` / ``<feature>_width``: the per-image tensors' spatial size at the stride of the backbone feature
  they come from: ``feat`` (encoder memory, its key projection and the first mask conv's image half; stride 32, 16
  with DC5 dilation), ``s16``, ``s8`` and ``mask`` (the metadata's ``mask_stride``, 4). ResNet's stride-2 convolutions
  and max pooling all round up (padding = kernel // 2), so an H x W image gives ceil(H / s) x ceil(W / s); the range
  follows the detector's image range through that formula (monotonic, so min -> min and max -> max).

Dimensions the graph fixes (static-shape exports) are taken as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from export.tensorrt.profile import ShapeRange, graph_inputs
from runtime.contract import KEY_QUERY_SPARSE as METADATA_KEY
from runtime.contract import mask_graph_name
from runtime.errors import PansegError
from runtime.trt_sidecar import TensorProfile

OPT_KEPT_PER_IMAGE = 20
KEPT_DIM = "kept"
BATCH_DIM = "batch"
_SPATIAL_DIM = re.compile(r"(?P<feature>\w+?)_(?P<axis>height|width)")
MASK_GRAPH_OF = "panseg_mask_graph_of"  # the mask graph's own metadata key naming its detector


def mask_engine_path(detector_engine: Path) -> Path:
    """``NAME.plan`` -> ``NAME.masks.plan``, as the ONNX export pairs ``NAME.onnx`` with ``NAME.masks.onnx``."""
    return detector_engine.with_name(mask_graph_name(detector_engine))


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


def mask_profiles(model: onnx.ModelProto, shape_range: ShapeRange, metadata: Mapping[str, Any],
                  source: str) -> dict[str, TensorProfile]:
    """The mask engine's per-input min/opt/max shapes, derived from the detector's range (module docstring)."""
    num_queries = metadata.get("num_queries")
    if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
        raise PansegError(f"{source}: metadata 'num_queries' must be a positive integer, got {num_queries!r}")
    strides = feature_strides(metadata, source)
    kept = kept_range(shape_range, num_queries)
    corners = (shape_range.min, shape_range.opt, shape_range.max)
    profiles = {}
    for name, dims in graph_inputs(model):
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


def detector_sidecar_metadata(metadata: Mapping[str, Any], mask_engine: Path, mask_plan_sha256: str
                              ) -> dict[str, Any]:
    """The detector's ONNX metadata with ``query_sparse`` naming the mask *engine* (the runtime loads what it names)
    and keeping the mask ONNX it was built from under ``onnx_mask_graph``."""
    entry = dict(metadata[METADATA_KEY])
    onnx_graph = {"file": entry.get("mask_graph"), "sha256": entry.get("mask_graph_sha256")}
    entry.update(mask_graph=mask_engine.name, mask_graph_sha256=mask_plan_sha256, onnx_mask_graph=onnx_graph)
    return {**metadata, METADATA_KEY: entry}


def mask_sidecar_metadata(mask_metadata: Mapping[str, Any], detector_metadata: Mapping[str, Any],
                          detector_engine: Path) -> dict[str, Any]:
    """The mask graph's own metadata, pointing at the detector engine, plus its tensors' declared shapes (so the
    backend reports symbolic dims such as ``kept``)."""
    entry = detector_metadata[METADATA_KEY]
    out = dict(mask_metadata)
    out[MASK_GRAPH_OF] = detector_engine.name
    for key in ("inputs", "outputs"):
        if key in entry and key not in out:
            out[key] = entry[key]
    return out

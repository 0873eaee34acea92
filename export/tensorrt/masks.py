"""The mask engine of a query-sparse export: its file name, optimization profile and side-file metadata.

A query-sparse detector (export/onnx/sparse.py) names its mask graph in its metadata (``query_sparse``); both become
engines in one build. How the mask engine's profile follows from the detector's (kept queries, batch, and each
feature's stride) is runtime/backends/tensorrt_profiles.py's, shared with ONNX Runtime's TensorRT provider; this
module applies it to the mask graph's ONNX inputs and writes the pair's side-file metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from export.tensorrt.profile import ShapeRange, graph_inputs
from runtime.backends.tensorrt_profiles import (  # noqa: F401 - re-exported: export's users import them from here
    BATCH_DIM,
    KEPT_DIM,
    OPT_KEPT_PER_IMAGE,
    feature_strides,
    kept_range,
    mask_input_profiles,
)
from runtime.contract import KEY_QUERY_SPARSE as METADATA_KEY
from runtime.contract import mask_graph_name
from runtime.trt_sidecar import TensorProfile

MASK_GRAPH_OF = "panseg_mask_graph_of"  # the mask graph's own metadata key naming its detector


def mask_engine_path(detector_engine: Path) -> Path:
    """``NAME.plan`` -> ``NAME.masks.plan``, as the ONNX export pairs ``NAME.onnx`` with ``NAME.masks.onnx``."""
    return detector_engine.with_name(mask_graph_name(detector_engine))


def mask_profiles(model: onnx.ModelProto, shape_range: ShapeRange, metadata: Mapping[str, Any],
                  source: str) -> dict[str, TensorProfile]:
    """The mask engine's per-input min/opt/max shapes, derived from the detector's range (module docstring)."""
    return mask_input_profiles(graph_inputs(model), shape_range, metadata, source)


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

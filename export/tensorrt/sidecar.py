"""Writing ``model.plan.json`` next to a plan: the ONNX metadata plus the ``tensorrt`` build section.

The layout (and its reader and checks) lives in runtime/trt_sidecar.py so the runtime never depends on export; this
module only assembles the document, writes it atomically and reads it back through the runtime's reader, so a side
file the runtime would refuse is never left behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_write_json
from runtime.contract import sidecar_path
from runtime.errors import PansegError
from runtime.trt_sidecar import SECTION, EngineInfo, GpuInfo, TensorProfile, read_engine_sidecar


def engine_info(*, plan: bytes, onnx_path: Path, onnx_sha256: str, tensorrt_version: str, gpu: GpuInfo,
                profiles: Mapping[str, TensorProfile], version_compatible: bool, hardware_compatibility: str,
                builder: Mapping[str, Any]) -> EngineInfo:
    """The ``tensorrt`` section for a plan just built."""
    return EngineInfo(
        tensorrt_version=tensorrt_version, gpu=gpu, version_compatible=version_compatible,
        hardware_compatibility=hardware_compatibility, profile=dict(profiles), onnx_file=onnx_path.name,
        onnx_sha256=onnx_sha256, plan_sha256=hashlib.sha256(plan).hexdigest(), plan_bytes=len(plan),
        strongly_typed=True, builder=dict(builder))


def sidecar_document(metadata: Mapping[str, Any], info: EngineInfo) -> dict[str, Any]:
    """The ONNX metadata keys unchanged (so the runtime reads both engines alike) plus the ``tensorrt`` section."""
    if SECTION in metadata:
        raise PansegError(f"the model's metadata already has a '{SECTION}' key; it would be overwritten by the "
                          "engine's build information")
    return {**metadata, SECTION: info.to_json()}


def write_sidecar(plan_path: str | os.PathLike, metadata: Mapping[str, Any], info: EngineInfo) -> Path:
    """Write ``<plan>.json`` atomically and check the runtime reads it back to the same build information."""
    path = sidecar_path(plan_path)
    atomic_write_json(path, sidecar_document(metadata, info), indent=1)
    _, read_back = read_engine_sidecar(plan_path)
    if read_back != info:
        raise PansegError(f"{path}: reads back differently from what was written (a bug in the side-file format)")
    return path

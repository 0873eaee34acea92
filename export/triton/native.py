"""The native variant's graph models: each graph of the exported model as its own Triton model, run by Triton's
``onnxruntime_onnx`` (an .onnx) or ``tensorrt_plan`` (a .plan) backend, called by the ``panseg`` model through BLS.

Every fact in their configs comes from the engine files (``GraphDescription``: tensor names, types, dims) or from
the profile code TensorRT builds share (runtime/backends/tensorrt_profiles.py). Batching:

* the detector (or single graph) is batched the Triton way: its inputs and outputs all start with the image batch,
  so ``max_batch_size`` is the batch the ``panseg`` model hands it (at most a plan's profile maximum) and ``dims``
  omit that axis. It has no dynamic batcher of its own: the ``panseg`` model already joins requests into batches of
  one processed size, and a second batcher could only add queue delay and change a batch's composition, and with it
  an engine's kernels and results, from what ``panseg-rt infer`` computes;
* the mask graph is not: ``hs_kept`` and ``image_index`` run over the kept (image, query) pairs of the whole batch
  while its other inputs run over the images, so its inputs share no first axis Triton could split or join. It has
  ``max_batch_size: 0`` and full dims, -1 where the graph is dynamic.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.triton.config import INSTANCE_KINDS, instance_group, pbtxt_string, version_policy
from runtime.backends.base import TensorSpec
from runtime.backends.tensorrt_ep import profile_options
from runtime.backends.tensorrt_profiles import ShapeRange, default_range, input_profiles, mask_input_profiles
from runtime.backends.triton_bls import GraphDescription
from runtime.contract import IMAGES, KEY_RESIZE, ONNX_SUFFIX, TENSORRT_SUFFIXES
from runtime.errors import PansegError
from runtime.metadata_props import decode_metadata_props
from runtime.trt_sidecar import TensorProfile

ONNXRUNTIME_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
PLATFORMS = {ONNX_SUFFIX: ONNXRUNTIME_PLATFORM, **dict.fromkeys(TENSORRT_SUFFIXES, TENSORRT_PLATFORM)}
MODEL_FILES = {ONNXRUNTIME_PLATFORM: "model.onnx", TENSORRT_PLATFORM: "model.plan"}  # Triton's default names
MASKS_ROLE = "masks"

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class TensorConfig:
    """One input or output of a graph model's config; dims without the batch axis when the model batches."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class GraphModelConfig:
    """The config.pbtxt of one graph model."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    instances: int = 1
    kind: str = "cpu"
    keep_versions: int = 1
    tensorrt_accelerator: Mapping[str, str] | None = None  # ONNX Runtime on GPU: the TensorRT provider's options
    parameters: Mapping[str, str] = field(default_factory=dict)

    @property
    def model_file(self) -> str:
        return MODEL_FILES[self.platform]


def platform_for(file: str) -> str:
    suffix = Path(file).suffix.lower()
    if suffix not in PLATFORMS:
        raise PansegError(f"{file}: no native Triton backend for {suffix or 'files without a suffix'} "
                          f"(accepted: {', '.join(PLATFORMS)})")
    return PLATFORMS[suffix]


def _first_dim_dynamic(specs: Sequence[TensorSpec]) -> bool:
    return all(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] > 0) for s in specs)


def engine_batch(detector: GraphDescription, requested: int, profile_max_batch: int | None) -> tuple[int, int]:
    """(the detector model's max_batch_size, the most images the ``panseg`` model may hand it per call).

    A graph whose batch axis is fixed at N is not batched the Triton way (max_batch_size 0) and takes at most N
    images; a dynamic one takes what was asked, at most a TensorRT plan's profile maximum."""
    images = next((s for s in detector.inputs if s.name == IMAGES), None)
    if images is None or not images.shape:
        raise PansegError(f"{detector.file}: no {IMAGES} input to batch on")
    if not _first_dim_dynamic(detector.inputs + detector.outputs):
        fixed = images.shape[0]
        return 0, min(requested, fixed) if isinstance(fixed, int) and fixed > 0 else requested
    batch = requested if profile_max_batch is None else min(requested, profile_max_batch)
    return batch, batch


def tensor_configs(specs: Sequence[TensorSpec], batched: bool, source: str) -> tuple[TensorConfig, ...]:
    """Name, Triton data type and dims (-1: dynamic) of each tensor; the batch axis left out when ``batched``."""
    configs = []
    for spec in specs:
        dtype = None if spec.dtype is None else spec.dtype.name
        if dtype not in TRITON_TYPES:
            raise PansegError(f"{source}: tensor {spec.describe()} has a type Triton's config cannot name")
        dims = spec.shape[1:] if batched else spec.shape
        configs.append(TensorConfig(spec.name, TRITON_TYPES[dtype],
                                    tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims)))
    return tuple(configs)


def served_resize(metadata: Mapping[str, Any], size: int | None, max_size: int | str | None) -> Any:
    """The resize policy the ``panseg`` model serves with: the model's, with ``--size``/``--max-size`` over it."""
    resize = dict(metadata.get(KEY_RESIZE) or {})
    if size is not None:
        resize["size"] = size
    if max_size is not None:
        resize["max_size"] = None if max_size == "none" else max_size
    return resize


def tensorrt_profiles(graphs: Mapping[str, GraphDescription], batch: int, size: int | None = None,
                      max_size: int | str | None = None) -> dict[str, dict[str, TensorProfile]]:
    """Role -> the TensorRT provider's profile for each dynamic input: the ranges ``python -m export.tensorrt`` builds
    plans for, for the served resize policy, with the batch axis up to ``batch`` (the mask graph's kept pairs follow).
    Empty (with a warning) when the policy bounds no range; the provider then builds an engine per new shape."""
    detector_role = "detector" if "detector" in graphs else "model"
    detector = graphs[detector_role]
    source = detector.file
    metadata = decode_metadata_props(detector.metadata.items(), source)
    try:
        shape_range = default_range(served_resize(metadata, size, max_size), source)
        shape_range = ShapeRange(shape_range.min, shape_range.opt, (max(1, batch), *shape_range.max[1:]))
        profiles = {}
        for role, graph in graphs.items():
            inputs = [(s.name, s.shape) for s in graph.inputs]
            if role == MASKS_ROLE:
                profiles[role] = mask_input_profiles(inputs, shape_range, metadata, graph.file)
            else:
                dynamic = [(n, d) for n, d in inputs if not all(isinstance(x, int) and x > 0 for x in d)]
                profiles[role] = input_profiles(shape_range, dynamic, graph.file) if dynamic else {}
        return profiles
    except PansegError as exc:
        warnings.warn(f"{exc}; the graph models get no TensorRT profile shapes", RuntimeWarning, stacklevel=2)
        return {}


@dataclass(frozen=True)
class GraphServing:
    """What the graph models' configs take from the command line: batch asked for, instances, kind, versions, ONNX
    Runtime threads, the served resize (for the TensorRT profile) and a plan's profile maximum batch."""

    max_batch_size: int = 8
    instances: int = 1
    kind: str = "cpu"
    keep_versions: int = 1
    threads: int | None = None
    size: int | None = None
    max_size: int | str | None = None
    profile_max_batch: int | None = None


def graph_model_configs(graphs: Mapping[str, GraphDescription],
                        serving: GraphServing) -> tuple[dict[str, GraphModelConfig], int]:
    """Role -> config of each graph model, and the batch the ``panseg`` model may hand the detector.

    ONNX Runtime on GPU instances gets the TensorRT provider with the profile shapes; Triton's onnxruntime backend
    runs what TensorRT rejects on CUDA (its default provider for KIND_GPU), as the runtime's own provider order does."""
    kind = serving.kind
    detector = graphs.get("detector") or graphs["model"]
    detector_batch, panseg_batch = engine_batch(detector, serving.max_batch_size, serving.profile_max_batch)
    platforms = {role: platform_for(graph.file) for role, graph in graphs.items()}
    for role, platform in platforms.items():
        if platform == TENSORRT_PLATFORM and kind != "gpu":
            raise PansegError(f"{graphs[role].file}: a TensorRT plan runs on a GPU only; give --kind gpu")
    with_provider = kind == "gpu" and ONNXRUNTIME_PLATFORM in platforms.values()
    profiles = tensorrt_profiles(graphs, panseg_batch, serving.size, serving.max_size) if with_provider else {}
    configs = {}
    for role, graph in graphs.items():
        accelerator = None
        parameters = {}
        if platforms[role] == ONNXRUNTIME_PLATFORM:
            if kind == "gpu":
                accelerator = profile_options(profiles[role]) if profiles.get(role) else {}
            if serving.threads is not None:
                parameters["intra_op_thread_count"] = str(serving.threads)
        batch = 0 if role == MASKS_ROLE else detector_batch
        configs[role] = GraphModelConfig(graph.model_name, platforms[role], batch,
                                         tensor_configs(graph.inputs, batch > 0, graph.file),
                                         tensor_configs(graph.outputs, batch > 0, graph.file),
                                         serving.instances, kind, serving.keep_versions, accelerator, parameters)
    return configs, panseg_batch


def _tensor(t: TensorConfig) -> str:
    return f"  {{ name: {pbtxt_string(t.name)} data_type: {t.data_type} dims: [ {', '.join(map(str, t.dims))} ] }}"


def render_graph_config(config: GraphModelConfig) -> str:
    """config.pbtxt of one graph model."""
    if config.kind not in INSTANCE_KINDS:
        raise ValueError(f"instance kind must be one of {sorted(INSTANCE_KINDS)}, got {config.kind!r}")
    lines = [
        f"name: {pbtxt_string(config.name)}",
        f"platform: {pbtxt_string(config.platform)}",
        f"max_batch_size: {config.max_batch_size}",
        "input [", ",\n".join(map(_tensor, config.inputs)), "]",
        "output [", ",\n".join(map(_tensor, config.outputs)), "]",
        instance_group(config.instances, config.kind),
        version_policy(config.keep_versions),
    ]
    if config.tensorrt_accelerator is not None:
        entries = "".join(f"\n    parameters {{ key: {pbtxt_string(k)} value: {pbtxt_string(v)} }}"
                          for k, v in config.tensorrt_accelerator.items())
        lines.append(f'optimization {{ execution_accelerators {{\n  gpu_execution_accelerator: [ {{\n'
                     f'    name: "tensorrt"{entries}\n  }} ]\n}} }}')
    for key, value in config.parameters.items():
        lines.append(f"parameters {{ key: {pbtxt_string(key)} value: {{ string_value: {pbtxt_string(value)} }} }}")
    return "\n".join(lines) + "\n"


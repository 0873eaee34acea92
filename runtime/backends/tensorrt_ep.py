"""ONNX Runtime's GPU execution providers, configured for a panseg model: TensorRT with the model's optimization
profile and a content-keyed engine cache, CUDA between TensorRT and the CPU, all on one device.

Why each setting:

* ``trt_profile_min_shapes/opt/max``: without them the TensorRT provider builds an engine for the shapes it has seen
  and rebuilds it (minutes) mid-run whenever an image size falls outside them. The ranges are the ones
  ``python -m export.tensorrt`` builds plans for (runtime/backends/tensorrt_profiles.py), from the model's metadata.
* CUDA after TensorRT: nodes TensorRT rejects would otherwise run on the CPU, with copies at every boundary.
* ``device_id``: the same ``--device`` as the TensorRT backend.
* The engine and timing caches live in a folder keyed by the model's sha256 (the ONNX Runtime backend's
  ``tensorrt_cache_dir``): the provider's own engine id hashes the file name, tensor names and versions, not the
  weights, so a retrained model re-exported to the same path would otherwise load the old engine.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime.backends.tensorrt_profiles import default_range, input_profiles, mask_input_profiles
from runtime.contract import KEY_MASK_GRAPH_OF, KEY_RESIZE
from runtime.errors import PansegError
from runtime.trt_sidecar import TensorProfile, format_shape

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"

Inputs = Sequence[tuple[str, Sequence[int | str | None]]]


def with_cuda_fallback(providers: Sequence[str]) -> list[str]:
    """Insert CUDA right after TensorRT when TensorRT is asked for without it."""
    providers = list(providers)
    if TENSORRT_EP in providers and CUDA_EP not in providers:
        providers.insert(providers.index(TENSORRT_EP) + 1, CUDA_EP)
    return providers


def profile_options(profiles: Mapping[str, TensorProfile]) -> dict[str, str]:
    """The TensorRT provider's ``trt_profile_*_shapes`` strings: ``name:1x3x800x800,name2:...``."""
    return {f"trt_profile_{corner}_shapes": ",".join(f"{name}:{format_shape(getattr(p, corner))}"
                                                     for name, p in profiles.items())
            for corner in ("min", "opt", "max")}


def model_profiles(inputs: Inputs, metadata: Mapping[str, Any], detector_metadata: Mapping[str, Any] | None,
                   source: str) -> dict[str, TensorProfile]:
    """The optimization profile of a panseg graph from its inputs and decoded metadata: a detector's (or single
    graph's) from its resize policy; a mask graph's (its metadata names its detector) from the detector's."""
    if KEY_MASK_GRAPH_OF in metadata:
        if detector_metadata is None:
            raise PansegError(f"{source}: a mask graph; its detector's metadata is needed to derive its profile")
        shape_range = default_range(detector_metadata.get(KEY_RESIZE), source)
        return mask_input_profiles(inputs, shape_range, detector_metadata, source)
    dynamic = [(n, d) for n, d in inputs if not all(isinstance(x, int) and x > 0 for x in d)]
    return input_profiles(default_range(metadata.get(KEY_RESIZE), source), dynamic, source) if dynamic else {}


def provider_options(providers: Sequence[str], device: int, tensorrt_cache: Path | None,
                     profiles: Mapping[str, TensorProfile] | None) -> list[dict[str, Any]]:
    """One options dict per provider, in order (ONNX Runtime's ``provider_options``)."""
    options: list[dict[str, Any]] = []
    for provider in providers:
        entry: dict[str, Any] = {}
        if provider in (TENSORRT_EP, CUDA_EP):
            entry["device_id"] = device
        if provider == TENSORRT_EP:
            if tensorrt_cache is not None:
                entry.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(tensorrt_cache),
                             trt_timing_cache_enable=True, trt_timing_cache_path=str(tensorrt_cache))
            if profiles:
                entry.update(profile_options(profiles))
        options.append(entry)
    return options


def profiles_or_warn(inputs: Inputs, metadata: Mapping[str, Any], detector_metadata: Mapping[str, Any] | None,
                     source: str) -> dict[str, TensorProfile] | None:
    """:func:`model_profiles`, or None with a warning (the provider then builds for the shapes it sees)."""
    try:
        return model_profiles(inputs, metadata, detector_metadata, source)
    except PansegError as exc:
        warnings.warn(f"{exc}; the TensorRT provider will rebuild its engine for each new input shape",
                      RuntimeWarning, stacklevel=3)
        return None

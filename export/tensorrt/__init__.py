"""Exported ONNX -> TensorRT plan + ``model.plan.json`` side file (``python -m export.tensorrt model.onnx``).

Two steps so that everything checkable is checked on any machine before a GPU is needed:
:func:`plan_engine` validates the ONNX (readable, panseg metadata, every operator parseable by TensorRT: by the operator
table, or only a warning where another TensorRT release is installed, whose parser the build asks), the output name
and the flags, and computes the optimization profile (profile.py) and the equivalent trtexec command (build.py);
:func:`build_engine_file` then builds with TensorRT on the GPU, writes the plan atomically and the side file next to
it (sidecar.py). Pieces: profile.py (shapes), build.py (TensorRT calls), sidecar.py (side file writing; its format,
reading and checks are runtime/trt_sidecar.py), masks.py (the second engine of a query-sparse export).

A query-sparse detector (the ONNX export's default for panoptic models) is built together with its mask graph:
``NAME.plan`` + ``NAME.masks.plan``, each with its side file; the detector's side file names the mask engine the way
its ONNX metadata names the mask graph, so the runtime loads the pair from the detector's path alone. Both plans are
built before either is written, and the detector (whose side file makes the pair usable) is written last.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from export.tensorrt.build import (
    BuildOptions,
    build_plan,
    inspect_plan,
    layer_info_path,
    load_tensorrt,
    trtexec_command,
)
from export.tensorrt.masks import (
    detector_sidecar_metadata,
    kept_range,
    mask_engine_path,
    mask_profiles,
    mask_sidecar_metadata,
)
from export.tensorrt.profile import BHW, ShapeRange, profile_for_model, uncovered_aspect_note
from export.tensorrt.sidecar import engine_info, write_sidecar
from export.trt_operators import check_before_build
from runtime.atomic import atomic_write_bytes
from runtime.contract import INT8, INT8_CPU, KEY_PRECISION, sidecar_path
from runtime.contract import TENSORRT_SUFFIXES as ENGINE_SUFFIXES
from runtime.errors import PansegError
from runtime.filehash import file_sha256
from runtime.metadata_props import decode_metadata_props
from runtime.sparse import mask_graph_file, mask_graph_path
from runtime.trt_sidecar import EngineInfo, GpuInfo, TensorProfile

__all__ = ["BuildOptions", "EnginePlan", "build_engine_file", "default_engine_path", "plan_engine"]



@dataclass(frozen=True)
class EnginePlan:
    """Everything decided before TensorRT is touched."""

    onnx_path: Path
    output: Path
    metadata: Mapping[str, Any]
    shape_range: ShapeRange
    profiles: Mapping[str, TensorProfile]
    options: BuildOptions
    note: str | None  # e.g. image shapes the profile leaves out
    mask: EnginePlan | None = None  # a query-sparse detector's mask engine, built in the same run
    kept: tuple[int, int, int] | None = None  # a mask engine's (min, opt, max) kept queries per call

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.output)

    def trtexec(self) -> list[str]:
        return trtexec_command(self.onnx_path, self.output, self.profiles, self.options)


def default_engine_path(onnx_path: str | os.PathLike) -> Path:
    """Next to the ONNX file, same stem, ``.plan``."""
    return Path(onnx_path).with_suffix(".plan")


def _load_graph(onnx_path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(os.fspath(onnx_path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as exc:
        raise PansegError(f"{onnx_path}: not a readable ONNX model ({exc})") from exc


def _read_metadata(model: onnx.ModelProto, onnx_path: Path) -> dict[str, Any]:
    """``metadata_props`` JSON-decoded (not via export.onnx, whose package pulls in torch, which a machine that only
    builds engines need not have)."""
    return decode_metadata_props(((e.key, e.value) for e in model.metadata_props), str(onnx_path))


def refuse_cpu_int8(metadata: Mapping[str, Any], onnx_path: Path) -> None:
    """The INT8 CPU flavour (python -m export.precision --int8-target cpu) has uint8 activations with zero points,
    which TensorRT cannot build: say so instead of failing deep in the parser."""
    precision = metadata.get(KEY_PRECISION)
    if isinstance(precision, dict) and precision.get("precision") == INT8 and precision.get("int8_target") == INT8_CPU:
        raise PansegError(f"{onnx_path}: an INT8 CPU-flavour model (uint8 activations, U8S8); TensorRT builds only "
                          "symmetric int8 QDQ: make the variant with python -m export.precision --int8-target tensorrt")


def plan_engine(onnx_path: str | os.PathLike, output: str | os.PathLike | None = None, *,
                min_shape: BHW | None = None, opt_shape: BHW | None = None, max_shape: BHW | None = None,
                options: BuildOptions | None = None) -> EnginePlan:
    """Validate the inputs and decide the profile; raises PansegError (one line) on anything wrong. CPU only."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise PansegError(f"{onnx_path}: {'is not a file' if onnx_path.exists() else 'no such ONNX file'}")
    output = Path(output) if output is not None else default_engine_path(onnx_path)
    if output.suffix.lower() not in ENGINE_SUFFIXES:
        raise PansegError(f"{output}: the engine name must end in {' or '.join(ENGINE_SUFFIXES)} (how the runtime "
                          "recognises a TensorRT engine)")
    if output.is_dir():
        raise PansegError(f"{output}: is a directory")
    if output.resolve() == onnx_path.resolve():
        raise PansegError(f"{output}: would overwrite the ONNX model")
    options = options or BuildOptions()
    if options.timing_cache is not None and options.timing_cache.is_dir():
        raise PansegError(f"{options.timing_cache}: the timing cache must be a file, not a directory")
    model = _load_graph(onnx_path)
    metadata = _read_metadata(model, onnx_path)
    refuse_cpu_int8(metadata, onnx_path)
    _check_operators(onnx_path)  # unsupported operators fail here, with node names, before any build
    if "panseg_metadata_version" not in metadata:
        raise PansegError(f"{onnx_path}: no panseg metadata (categories, preprocessing) in the model; export it with "
                          "python -m export.onnx")
    flags = {"min": min_shape, "opt": opt_shape, "max": max_shape}
    shape_range, profiles = profile_for_model(model, metadata, flags, str(onnx_path))
    mask = _plan_mask_engine(onnx_path, output, metadata, shape_range, options)
    return EnginePlan(onnx_path, output, metadata, shape_range, profiles, options,
                      uncovered_aspect_note(shape_range, metadata.get("resize")), mask)


def _check_operators(onnx_path: Path) -> None:
    """The operator table refuses when no TensorRT is installed (a --dry-run machine) or the installed one is the
    table's release; when another release is installed, the table's doubts are a one-line warning on stderr and the
    build's parser decides (build.py asks it about every operator before parsing)."""
    warning = check_before_build(onnx_path)
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _plan_mask_engine(onnx_path: Path, output: Path, metadata: Mapping[str, Any], shape_range: ShapeRange,
                      options: BuildOptions) -> EnginePlan | None:
    """The mask engine's plan when the detector is query-sparse (its metadata names a mask graph), else None."""
    name = mask_graph_file(metadata, str(onnx_path))
    if name is None:
        return None
    mask_onnx = mask_graph_path(onnx_path, name)
    expected = metadata["query_sparse"].get("mask_graph_sha256")
    if isinstance(expected, str) and file_sha256(mask_onnx) != expected:
        raise PansegError(f"{mask_onnx}: is not the mask graph exported with {onnx_path} (its sha256 differs from "
                          "the detector's metadata); re-export both with python -m export.onnx")
    mask_output = mask_engine_path(output)
    if mask_output.resolve() == mask_onnx.resolve():
        raise PansegError(f"{mask_output}: would overwrite the mask graph")
    if mask_output.is_dir():
        raise PansegError(f"{mask_output}: is a directory")
    _check_operators(mask_onnx)
    model = _load_graph(mask_onnx)
    profiles = mask_profiles(model, shape_range, metadata, str(mask_onnx))
    return EnginePlan(mask_onnx, mask_output, _read_metadata(model, mask_onnx), shape_range, profiles, options, None,
                      kept=kept_range(shape_range, metadata["num_queries"]))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_engine_file(plan: EnginePlan, progress: bool = True) -> EngineInfo:
    """Build the plan (and its mask engine, if any) with TensorRT on the current GPU, write the plan(s) and side
    file(s); returns the detector's side-file build section. Needs tensorrt and cuda-python (a one-line error
    otherwise)."""
    from runtime.backends.tensorrt_backend import current_gpu, import_cudart

    trt = load_tensorrt()
    try:
        cudart = import_cudart()
    except PansegError as exc:
        raise PansegError(f"cuda-python is needed to identify the GPU for the side file ({exc})") from exc
    gpu = current_gpu(cudart, plan.options.device)  # also makes it the device this thread builds on
    data, info = _build(trt, gpu, plan, progress)
    metadata: Mapping[str, Any] = plan.metadata
    if plan.mask is not None:
        mask_data, mask_info = _build(trt, gpu, plan.mask, progress)
        atomic_write_bytes(plan.mask.output, mask_data)
        if plan.options.inspect:
            atomic_write_bytes(layer_info_path(plan.mask.output), inspect_plan(trt, mask_data).encode())
        write_sidecar(plan.mask.output, mask_sidecar_metadata(plan.mask.metadata, plan.metadata, plan.output),
                      mask_info)
        metadata = detector_sidecar_metadata(plan.metadata, plan.mask.output, mask_info.plan_sha256)
    atomic_write_bytes(plan.output, data)
    if plan.options.inspect:
        atomic_write_bytes(layer_info_path(plan.output), inspect_plan(trt, data).encode())
    write_sidecar(plan.output, metadata, info)
    return info


def _build(trt: Any, gpu: GpuInfo, plan: EnginePlan, progress: bool) -> tuple[bytes, EngineInfo]:
    """One serialized plan and its side file's build section (nothing written yet)."""
    onnx_sha256 = file_sha256(plan.onnx_path)
    started = time.perf_counter()
    data = build_plan(trt, plan.onnx_path, plan.profiles, plan.options, progress=progress)
    seconds = time.perf_counter() - started
    info = engine_info(plan=data, onnx_path=plan.onnx_path, onnx_sha256=onnx_sha256, tensorrt_version=trt.__version__,
                       gpu=gpu, profiles=plan.profiles, version_compatible=plan.options.version_compatible,
                       hardware_compatibility=plan.options.hardware_compatibility,
                       builder={**plan.options.describe(), "build_seconds": round(seconds, 1),
                                "panseg_version": _version("panseg")})
    return data, info

"""The ``model.plan.json`` side file of a TensorRT engine: its ``tensorrt`` section, and the checks made before loading.

A ``.plan`` stays a pure TensorRT plan (trtexec and Triton load it), so what the runtime needs to know lives next to
it. The side file holds the ONNX model's metadata (the same keys as its ``metadata_props``, so ``Backend.metadata()``
reads alike for both engines) plus one ``tensorrt`` section describing the build: TensorRT version, GPU name and
compute capability, the compatibility flags, the optimization profile, and the sha256 of the ONNX and of the plan.

A plan only deserializes under the TensorRT version that built it and on GPUs of its compute capability, unless it
was built version- or hardware-compatible; TensorRT's own failure is an opaque log line (or a crash), so the backend
checks the side file first and refuses with a message that says what to rebuild. Everything here is plain Python,
tested on machines without a GPU; export/tensorrt writes the file with :func:`EngineInfo.to_json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.contract import sidecar_path
from runtime.errors import PansegError

SECTION = "tensorrt"
SIDECAR_VERSION = 1
HARDWARE_LEVELS = ("none", "same", "ampere+")  # TensorRT's kNONE, kSAME_COMPUTE_CAPABILITY, kAMPERE_PLUS
AMPERE = (8, 0)
# Version-compatible plans also load under the next major version, for these (build, runtime) pairs only
# (TensorRT support matrix: 8 -> 10 and 10 -> 11).
CROSS_MAJOR_COMPATIBLE = frozenset({(8, 10), (10, 11)})

Shape = tuple[int, ...]


def format_shape(shape: Sequence[int]) -> str:
    """``(1, 3, 800, 800)`` -> ``1x3x800x800`` (trtexec's spelling)."""
    return "x".join(str(int(d)) for d in shape)


def parse_version(text: str) -> tuple[int, ...]:
    """Leading numeric part of a version string: ``10.15.1.29`` -> (10, 15, 1, 29); ``10.7.0.post1`` -> (10, 7, 0)."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", str(text))
    if not match:
        raise PansegError(f"not a TensorRT version: {text!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def parse_compute_capability(value: Any) -> tuple[int, int]:
    """``"8.6"``, ``[8, 6]`` or ``(8, 6)`` -> (8, 6)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", value)
        if match:
            return int(match.group(1)), int(match.group(2))
    elif isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise PansegError(f"not a compute capability: {value!r} (expected e.g. \"8.6\")")


def format_compute_capability(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


@dataclass(frozen=True)
class GpuInfo:
    """What identifies a GPU for plan compatibility."""

    name: str
    compute_capability: tuple[int, int]

    def describe(self) -> str:
        return f"{self.name} (compute capability {format_compute_capability(self.compute_capability)})"


@dataclass(frozen=True)
class TensorProfile:
    """One input's optimization-profile shapes: every runtime shape must lie between ``min`` and ``max``."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        ranks = {len(self.min), len(self.opt), len(self.max)}
        if len(ranks) != 1:
            raise PansegError(f"profile shapes of different ranks: min {format_shape(self.min)}, "
                              f"opt {format_shape(self.opt)}, max {format_shape(self.max)}")
        for axis, (lo, mid, hi) in enumerate(zip(self.min, self.opt, self.max, strict=True)):
            if lo < 1 or not lo <= mid <= hi:
                raise PansegError(f"profile axis {axis} must satisfy 1 <= min <= opt <= max, got "
                                  f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, "
                                  f"max {format_shape(self.max)}")

    def describe(self) -> str:
        return f"{format_shape(self.min)} .. {format_shape(self.max)} (opt {format_shape(self.opt)})"

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> TensorProfile:
        if not isinstance(data, Mapping) or any(k not in data for k in ("min", "opt", "max")):
            raise PansegError(f"{where}: expected an object with 'min', 'opt' and 'max' shapes")
        shapes = []
        for key in ("min", "opt", "max"):
            value = data[key]
            if not (isinstance(value, list) and value and all(isinstance(d, int) for d in value)):
                raise PansegError(f"{where}.{key}: expected a list of integers, got {value!r}")
            shapes.append(tuple(value))
        try:
            return cls(*shapes)
        except PansegError as exc:
            raise PansegError(f"{where}: {exc}") from exc


def shape_outside_profile(name: str, shape: Sequence[int], profile: TensorProfile) -> str | None:
    """Why ``shape`` cannot run under ``profile`` (None when it can): rank, then every axis out of its range."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(profile.min):
        return (f"input {name} has shape {format_shape(shape)} of rank {len(shape)}; the engine takes rank "
                f"{len(profile.min)}: {profile.describe()}")
    bad = [f"axis {axis} is {d}, allowed {lo}..{hi}"
           for axis, (d, lo, hi) in enumerate(zip(shape, profile.min, profile.max, strict=True)) if not lo <= d <= hi]
    if not bad:
        return None
    return (f"input {name} has shape {format_shape(shape)}, outside the engine's optimization profile "
            f"{format_shape(profile.min)} .. {format_shape(profile.max)}: {', '.join(bad)} (rebuild the engine with "
            "python -m export.tensorrt --min-shape/--max-shape covering it)")


def check_shapes_in_profile(shapes: Mapping[str, Sequence[int]], profiles: Mapping[str, TensorProfile],
                            source: str | os.PathLike) -> None:
    """Raise (naming the engine file and the allowed range) unless every input shape lies inside its profile."""
    for name, shape in shapes.items():
        profile = profiles.get(name)
        if profile is None:
            continue  # a static input: its shape is checked against the engine's fixed dims elsewhere
        problem = shape_outside_profile(name, shape, profile)
        if problem:
            raise PansegError(f"{source}: {problem}")


@dataclass(frozen=True)
class EngineInfo:
    """The ``tensorrt`` section of the side file."""

    tensorrt_version: str
    gpu: GpuInfo
    version_compatible: bool
    hardware_compatibility: str  # one of HARDWARE_LEVELS
    profile: Mapping[str, TensorProfile]
    onnx_file: str
    onnx_sha256: str
    plan_sha256: str
    plan_bytes: int
    strongly_typed: bool = True
    builder: Mapping[str, Any] = field(default_factory=dict)  # workspace, optimization level, ...: informative only

    def __post_init__(self) -> None:
        if self.hardware_compatibility not in HARDWARE_LEVELS:
            raise PansegError(f"hardware_compatibility must be one of {', '.join(HARDWARE_LEVELS)}, "
                              f"got {self.hardware_compatibility!r}")
        parse_version(self.tensorrt_version)

    def to_json(self) -> dict[str, Any]:
        return {
            "sidecar_version": SIDECAR_VERSION,
            "tensorrt_version": self.tensorrt_version,
            "gpu": {"name": self.gpu.name,
                    "compute_capability": format_compute_capability(self.gpu.compute_capability)},
            "version_compatible": self.version_compatible,
            "hardware_compatibility": self.hardware_compatibility,
            "strongly_typed": self.strongly_typed,
            "profile": {name: p.to_json() for name, p in self.profile.items()},
            "onnx": {"file": self.onnx_file, "sha256": self.onnx_sha256},
            "plan": {"sha256": self.plan_sha256, "bytes": self.plan_bytes},
            "builder": dict(self.builder),
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> EngineInfo:
        """Parse and validate; every problem is one line naming ``source`` and the key."""
        where = f"{source}: '{SECTION}'"
        if not isinstance(data, Mapping):
            raise PansegError(f"{where} must be a JSON object")
        version = data.get("sidecar_version")
        if version != SIDECAR_VERSION:
            raise PansegError(f"{where}: unsupported sidecar_version {version!r} (this runtime reads "
                              f"{SIDECAR_VERSION}); rebuild the engine with this version's python -m export.tensorrt")
        try:
            # an empty profile is valid: an engine from a fully static export has no dynamic input
            gpu, onnx, plan, profile = (_mapping(data, key, where) for key in ("gpu", "onnx", "plan", "profile"))
            return cls(
                tensorrt_version=_typed(data, "tensorrt_version", str, where),
                gpu=GpuInfo(_typed(gpu, "name", str, f"{where}.gpu"),
                            parse_compute_capability(gpu.get("compute_capability"))),
                version_compatible=_typed(data, "version_compatible", bool, where),
                hardware_compatibility=_typed(data, "hardware_compatibility", str, where),
                profile={str(n): TensorProfile.from_json(p, f"{where}.profile.{n}") for n, p in profile.items()},
                onnx_file=_typed(onnx, "file", str, f"{where}.onnx"),
                onnx_sha256=_typed(onnx, "sha256", str, f"{where}.onnx"),
                plan_sha256=_typed(plan, "sha256", str, f"{where}.plan"),
                plan_bytes=_typed(plan, "bytes", int, f"{where}.plan"),
                strongly_typed=bool(data.get("strongly_typed", True)),
                builder=dict(data.get("builder") or {}),
            )
        except PansegError as exc:
            message = str(exc)
            raise PansegError(message if message.startswith(source) else f"{where}: {message}") from exc


def _mapping(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise PansegError(f"{where}.{key} missing or not an object")
    return value


def _typed(data: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    # bool is an int subclass: a count must not accept true/false, nor a flag accept 0/1
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PansegError(f"{where}.{key} missing or not a {kind.__name__} (got {value!r})")
    return value


def read_sidecar_metadata(engine_path: str | os.PathLike) -> dict[str, str]:
    """The side file as key -> JSON string, exactly like an ONNX model's ``metadata_props`` (one decoder reads both)."""
    path = sidecar_path(engine_path)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PansegError(f"{path}: metadata side file missing (it is written next to the engine by the export)") \
            from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PansegError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PansegError(f"{path}: expected a JSON object of metadata, got {type(data).__name__}")
    return {str(k): json.dumps(v) for k, v in data.items()}


def read_engine_sidecar(engine_path: str | os.PathLike) -> tuple[dict[str, str], EngineInfo]:
    """The side file of ``engine_path``: (metadata as key -> string, like ONNX ``metadata_props``; build info)."""
    metadata = read_sidecar_metadata(engine_path)
    source = str(sidecar_path(engine_path))
    if SECTION not in metadata:
        raise PansegError(f"{source}: no '{SECTION}' section; write the engine and its side file with "
                          "python -m export.tensorrt")
    return metadata, EngineInfo.from_json(json.loads(metadata[SECTION]), source)


def check_plan_digest(info: EngineInfo, plan: bytes, plan_path: str | os.PathLike) -> None:
    """Refuse a plan that is not the one the side file describes (e.g. rebuilt without updating the side file)."""
    digest = hashlib.sha256(plan).hexdigest()
    if len(plan) != info.plan_bytes or digest != info.plan_sha256:
        raise PansegError(f"{plan_path}: does not match its side file {sidecar_path(plan_path)} ({len(plan)} bytes, "
                          f"sha256 {digest[:12]}..., expected {info.plan_bytes} bytes, sha256 {info.plan_sha256[:12]}"
                          "...); rebuild both with python -m export.tensorrt")


def version_problem(built: str, runtime: str, version_compatible: bool) -> str | None:
    """Why a plan built by TensorRT ``built`` cannot load under TensorRT ``runtime`` (None when it can)."""
    b, r = parse_version(built), parse_version(runtime)
    if not version_compatible:
        if b == r:
            return None
        return (f"built with TensorRT {built}, this is TensorRT {runtime}; a plan loads only under the TensorRT "
                "version that built it: rebuild it here with python -m export.tensorrt (add --version-compatible "
                "for plans that must survive TensorRT upgrades)")
    same_line = b[0] == r[0] or (b[0], r[0]) in CROSS_MAJOR_COMPATIBLE
    if r >= b and same_line:
        return None
    why = "older than" if r < b else "a major version it does not support; built with"
    return (f"built version-compatible with TensorRT {built}, but this TensorRT {runtime} is {why} it "
            f"(version-compatible plans load under the same or a newer version of the same major, and "
            f"10 -> 11); rebuild it here with python -m export.tensorrt")


def hardware_problem(built_on: GpuInfo, level: str, here: GpuInfo) -> tuple[str | None, str | None]:
    """(refusal, warning) for running a plan built on ``built_on`` with compatibility ``level`` on ``here``."""
    cc_built, cc_here = built_on.compute_capability, here.compute_capability
    if level == "ampere+":
        if cc_here >= AMPERE:
            return None, None
        return (f"built hardware-compatible for Ampere and newer GPUs (compute capability 8.0+), this GPU is "
                f"{here.describe()}; rebuild it on this GPU with python -m export.tensorrt"), None
    if cc_here != cc_built:
        hint = " or build with --hardware-compatibility ampere+ (Ampere and newer GPUs)" if cc_here >= AMPERE else ""
        return (f"built for {built_on.describe()}, this GPU is {here.describe()}; a plan runs only on GPUs of the "
                f"compute capability it was built for: rebuild it on this GPU with python -m export.tensorrt{hint}"), \
            None
    if level == "none" and built_on.name != here.name:
        return None, (f"built on {built_on.name}, running on {here.name} (same compute capability "
                      f"{format_compute_capability(cc_here)}): TensorRT does not guarantee plans across GPU models; "
                      "rebuild on this GPU if it fails or is slow, or build with --hardware-compatibility same")
    return None, None


def check_engine_compatible(info: EngineInfo, tensorrt_version: str, gpu: GpuInfo,
                            source: str | os.PathLike) -> list[str]:
    """Raise unless this TensorRT version and GPU can run the plan; return warnings (e.g. another GPU model)."""
    refusal = version_problem(info.tensorrt_version, tensorrt_version, info.version_compatible)
    hw_refusal, warning = hardware_problem(info.gpu, info.hardware_compatibility, gpu)
    refusal = refusal or hw_refusal
    if refusal:
        raise PansegError(f"{source}: cannot run this engine: {refusal}")
    return [f"{source}: {warning}"] if warning else []


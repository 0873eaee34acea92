"""The engine's optimization profile: batch x height x width ranges from flags, or derived from the ONNX metadata.

TensorRT builds a dynamic-shape engine for one range of shapes per input (min .. max, tuned for opt) and refuses
anything outside it at run time. The default range and how it maps onto each input live in
runtime/backends/tensorrt_profiles.py (ONNX Runtime's TensorRT provider uses the same ones); this module adds the
``--min/opt/max-shape`` flags, reads the ONNX graph's inputs, and takes the dimensions the graph fixes
(``--static-shape`` / ``--batch`` exports) as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from runtime.backends.tensorrt_profiles import (  # noqa: F401 - the profile's names, re-exported for export's users
    AXES,
    BHW,
    TYPICAL_IMAGE,
    WIDEST_ASPECT,
    ShapeRange,
    bhw_axes,
    default_range,
    input_profiles,
)
from runtime.errors import PansegError
from runtime.trt_sidecar import TensorProfile, format_shape

MIN_SIDE = 32  # below one backbone stride the model has nothing to compute on (the shape flags' lower bound)


def graph_inputs(model: onnx.ModelProto) -> list[tuple[str, tuple[int | str | None, ...]]]:
    """(name, dims) of the real graph inputs (initializers listed as inputs by old exporters are skipped)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in value.type.tensor_type.shape.dim)
        inputs.append((value.name, dims))
    return inputs


def resolve_range(flags: Mapping[str, BHW | None], default: ShapeRange | None,
                  inputs: Sequence[tuple[str, Sequence[int | str | None]]], source: str,
                  no_default_reason: str = "") -> ShapeRange:
    """Flags over defaults, dims the graph fixes over both; checked min <= opt <= max.

    ``flags`` maps "min"/"opt"/"max" to a parsed ``--*-shape`` (or None); ``default`` is None when the model has no
    usable resize policy (``no_default_reason`` says why), in which case all three flags are required unless the graph
    fixes every dimension.
    """
    fixed: dict[int, int] = {}
    for name, dims in inputs:
        for axis, dim_index in enumerate(bhw_axes(name, dims, source)):
            d = dims[dim_index]
            if isinstance(d, int) and d > 0:
                if fixed.setdefault(axis, d) != d:
                    raise PansegError(f"{source}: inputs disagree on a fixed {AXES[axis]} ({fixed[axis]} vs {d})")
    chosen: dict[str, list[int]] = {}
    for key in ("min", "opt", "max"):
        value = flags.get(key)
        if value is None and default is not None:
            value = getattr(default, key)
        if value is None and len(fixed) < 3:
            raise PansegError(no_default_reason or f"{source}: no default profile; give --{key}-shape")
        shape = list(value) if value is not None else [0, 0, 0]
        for axis, size in fixed.items():
            if flags.get(key) is not None and flags[key][axis] != size:
                raise PansegError(f"{source}: the model has a fixed {AXES[axis]} of {size}, but --{key}-shape "
                                  f"{format_shape(flags[key])} asks for {flags[key][axis]}")
            shape[axis] = size
        chosen[key] = shape
    shape_range = ShapeRange(*(tuple(chosen[k]) for k in ("min", "opt", "max")))  # type: ignore[arg-type]
    shape_range.check()
    return shape_range


def profile_for_model(model: onnx.ModelProto, metadata: Mapping[str, Any], flags: Mapping[str, BHW | None],
                      source: str) -> tuple[ShapeRange, dict[str, TensorProfile]]:
    """Everything above for one exported model: its inputs, its resize policy, the user's flags."""
    inputs = graph_inputs(model)
    if not inputs:
        raise PansegError(f"{source}: the graph has no inputs")
    default: ShapeRange | None = None
    reason = ""
    try:
        default = default_range(metadata.get("resize"), source)
    except PansegError as exc:  # fine as long as flags or fixed dims say everything
        reason = str(exc)
    shape_range = resolve_range(flags, default, inputs, source, reason)
    return shape_range, input_profiles(shape_range, inputs, source)


def uncovered_aspect_note(shape_range: ShapeRange, resize: Any) -> str | None:
    """A note when elongated images resize below the profile's minimum (e.g. 16:9 -> 750 x 1333 with 800/1333)."""
    if not isinstance(resize, Mapping) or not isinstance(resize.get("max_size"), int):
        return None
    size, max_size = resize.get("size"), resize["max_size"]
    if not isinstance(size, int) or max_size <= size:
        return None
    short = min(shape_range.min[1], shape_range.min[2])
    if round(max_size * 9 / 16) >= short:
        return None
    limit = max_size / short
    return (f"images more elongated than {limit:.2f}:1 (e.g. 16:9 -> {round(max_size * 9 / 16)} x {max_size}) resize "
            f"below the minimum side {short} and will be refused by the engine; lower --min-shape to cover them")

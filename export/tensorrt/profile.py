"""The engine's optimization profile: batch x height x width ranges from flags, or derived from the ONNX metadata.

TensorRT builds a dynamic-shape engine for one range of shapes per input (min .. max, tuned for opt) and refuses
anything outside it at run time. The runtime feeds ``images`` (B x 3 x H x W) and ``padding_mask`` (B x H x W) padded
to the largest image of a batch, so both inputs share one B/H/W range. Defaults come from the resize policy the export
stored (detr's: shorter side 800, longer side at most 1333): H and W each range over [size .. max_size], which covers
portrait and landscape images and mixed batches; opt is a 4:3 landscape image (COCO's most common shape, 640 x 480 ->
800 x 1066); batch 1. Dimensions the ONNX graph fixes (``--static-shape`` / ``--batch`` exports) are taken as they are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from runtime.errors import PansegError
from runtime.preprocess import target_size
from runtime.trt_sidecar import TensorProfile, format_shape

BHW = tuple[int, int, int]
AXES = ("batch", "height", "width")
TYPICAL_IMAGE = (640, 480)  # width, height of the shape opt is tuned for (COCO's most common, 4:3 landscape)
MIN_SIDE = 32  # below one backbone stride the model has nothing to compute on (the shape flags' lower bound)


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


def _bhw_dims(name: str, dims: Sequence[int | str | None], source: str) -> tuple[int, ...]:
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
        for axis, dim_index in enumerate(_bhw_dims(name, dims, source)):
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


def input_profiles(shape_range: ShapeRange, inputs: Sequence[tuple[str, Sequence[int | str | None]]],
                   source: str) -> dict[str, TensorProfile]:
    """The per-input min/opt/max shapes: the B/H/W range placed into each input's layout, other dims as declared."""
    profiles = {}
    for name, dims in inputs:
        axes = _bhw_dims(name, dims, source)
        shapes = []
        for bhw in (shape_range.min, shape_range.opt, shape_range.max):
            shape = [int(d) if isinstance(d, int) else 0 for d in dims]
            for value, dim_index in zip(bhw, axes, strict=True):
                shape[dim_index] = value
            shapes.append(tuple(shape))
        profiles[name] = TensorProfile(*shapes)
    return profiles


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

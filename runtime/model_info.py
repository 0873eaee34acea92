"""What an exported model says about itself, parsed once into typed values (``ModelInfo``).

The export stores its metadata as JSON strings: ``metadata_props`` of the .onnx (see export/onnx/metadata.py) or the
side file ``model.plan.json`` of a TensorRT engine (read by ``runtime.trt_sidecar.read_sidecar_metadata``, which
JSON-encodes every value the same way), decoded by the one strict decoder in runtime/metadata_props.py. Both reach us
through
``Backend.metadata()``; everything the runtime needs is checked here, so a broken or foreign model fails with one line
naming the file and the key, not with a KeyError in the middle of a run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.categories import Category, categories_from_json
from runtime.contract import (
    DEFAULT_MASK_STRIDE,
    DETECTION,
    FP32,
    INT8,
    INT8_TARGETS,
    KEY_CATEGORIES,
    KEY_INPUTS,
    KEY_KIND,
    KEY_MASK_STRIDE,
    KEY_NORMALIZATION,
    KEY_NUM_CLASSES,
    KEY_NUM_QUERIES,
    KEY_OUTPUTS,
    KEY_PRECISION,
    KEY_QUERY_SPARSE,
    KEY_RESIZE,
    KEY_TENSORRT,
    KEY_THRESHOLD,
    KEY_VERSION,
    PANOPTIC,
    PRECISIONS,
    SUPPORTED_VERSION,
    is_tensorrt_file,
)
from runtime.errors import PanopticFormatError, PansegError
from runtime.metadata_props import decode_metadata_props
from runtime.sparse import mask_graph_file


@dataclass(frozen=True)
class ResizePolicy:
    """detr's evaluation resize: shorter side to ``size``, longer side at most ``max_size`` (None: no limit)."""

    size: int
    max_size: int | None


@dataclass(frozen=True)
class PrecisionInfo:
    """What a precision variant says about itself (python -m export.precision); float32 for any other model."""

    precision: str = FP32  # "fp32", "fp16" or "int8"
    int8_target: str | None = None  # int8 only: "tensorrt" (S8S8) or "cpu" (U8S8)
    calibration_method: str | None = None
    calibration_images: int = 0
    calibration_digest: str | None = None
    float_nodes: tuple[str, ...] = ()  # nodes left in float32 (int8: excluded blocks; fp16: blocked operators)

    @property
    def label(self) -> str:
        """A short name for tables and file names: ``fp32``, ``fp16``, ``int8-cpu`` or ``int8-tensorrt``."""
        return f"{self.precision}-{self.int8_target}" if self.precision == INT8 else self.precision

    def describe(self) -> str:
        """One phrase for the commands' output, e.g. ``int8 (cpu flavour, minmax on 4 images)``."""
        if self.precision != INT8:
            return self.precision
        return (f"{self.precision} ({self.int8_target} flavour, {self.calibration_method} calibration on "
                f"{self.calibration_images} images, {len(self.float_nodes)} nodes in float)")


@dataclass(frozen=True)
class ModelInfo:
    """The exported model's contract with the runtime."""

    source: str  # the engine file, for messages
    metadata_version: int
    kind: str  # "panoptic" or "detection"
    categories: dict[int, Category]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: ResizePolicy
    threshold: float
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    num_queries: int
    num_classes: int
    mask_stride: int
    mask_graph: str | None = None  # query-sparse: the mask graph's file name, next to the model
    precision: PrecisionInfo = PrecisionInfo()

    @property
    def is_thing(self) -> dict[int, bool]:
        return {c.id: bool(c.isthing) for c in self.categories.values()}

    @property
    def panoptic(self) -> bool:
        return self.kind == PANOPTIC


class _Reader:
    """Typed access to the metadata, each failure naming the engine file and the key."""

    def __init__(self, metadata: Mapping[str, str], source: str) -> None:
        self.values = decode_metadata_props(metadata.items(), source)
        self.source = source

    def fail(self, key: str, problem: str) -> PansegError:
        return PansegError(f"{self.source}: metadata {key!r} {problem}")

    def get(self, key: str, default: Any = ...) -> Any:
        if key in self.values:
            return self.values[key]
        if default is ...:
            raise self.fail(key, "is missing (re-export the model with this version of panseg)")
        return default

    def positive_int(self, key: str, value: Any = ..., default: Any = ...) -> int:
        value = self.get(key, default) if value is ... else value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, f"must be a positive integer, got {value!r}")
        return value

    def triple(self, key: str, value: Any, positive: bool) -> tuple[float, float, float]:
        ok = isinstance(value, list | tuple) and len(value) == 3 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
            for v in value)
        if not ok:
            raise self.fail(key, f"must be three {'positive ' if positive else ''}numbers, got {value!r}")
        return float(value[0]), float(value[1]), float(value[2])

    def names(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        # The exporter writes {name: description}; JSON objects keep their order, so this is the tensor order.
        names = list(value) if isinstance(value, dict | list) else None
        if not names or not all(isinstance(n, str) for n in names):
            raise self.fail(key, f"must list tensor names, got {value!r}")
        return tuple(names)


def parse_model_info(metadata: Mapping[str, str], source: str = "model") -> ModelInfo:
    """``Backend.metadata()`` -> ModelInfo; raises PansegError naming ``source`` and the bad key."""
    if KEY_VERSION not in metadata:  # a foreign model's metadata need not be JSON: say what it is first
        raise PansegError(f"{source}: no panseg metadata in this model (export it with `python -m export.onnx`, "
                          "which records categories, preprocessing and threshold)")
    r = _Reader(metadata, source)
    version = r.positive_int(KEY_VERSION)
    if version > SUPPORTED_VERSION:
        raise r.fail(KEY_VERSION, f"is {version}; this runtime reads up to "
                     f"{SUPPORTED_VERSION} (upgrade panseg)")

    kind = r.get(KEY_KIND)
    if kind not in (PANOPTIC, DETECTION):
        raise r.fail(KEY_KIND, f"must be {PANOPTIC!r} or {DETECTION!r}, got {kind!r}")

    entries = r.get(KEY_CATEGORIES)
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise r.fail(KEY_CATEGORIES, "must be a non-empty list of COCO category objects")
    try:
        categories = categories_from_json(entries, f"{source} metadata 'categories'")
    except PanopticFormatError as exc:
        raise PansegError(str(exc)) from exc

    normalization = r.get(KEY_NORMALIZATION)
    if not isinstance(normalization, dict):
        raise r.fail(KEY_NORMALIZATION, f"must be an object with mean and std, got {normalization!r}")
    mean = r.triple("normalization.mean", normalization.get("mean"), positive=False)
    std = r.triple("normalization.std", normalization.get("std"), positive=True)

    resize = r.get(KEY_RESIZE)
    if not isinstance(resize, dict):
        raise r.fail(KEY_RESIZE, f"must be an object with size and max_size, got {resize!r}")
    size = r.positive_int("resize.size", resize.get("size"))
    max_size = resize.get("max_size")
    if max_size is not None:
        max_size = r.positive_int("resize.max_size", max_size)

    threshold = r.get(KEY_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold < 1.0:
        raise r.fail(KEY_THRESHOLD, f"must be a number in [0, 1), got {threshold!r}")

    num_classes = r.positive_int(KEY_NUM_CLASSES)
    too_large = sorted(c for c in categories if not 0 <= c < num_classes)
    if too_large:
        raise r.fail(KEY_CATEGORIES, f"has ids {too_large[:5]} outside the model's {num_classes} classes")
    return ModelInfo(
        source=source,
        metadata_version=version,
        kind=kind,
        categories=categories,
        mean=mean,
        std=std,
        resize=ResizePolicy(size, max_size),
        threshold=float(threshold),
        input_names=r.names(KEY_INPUTS),
        output_names=r.names(KEY_OUTPUTS),
        num_queries=r.positive_int(KEY_NUM_QUERIES),
        num_classes=num_classes,
        mask_stride=r.positive_int(KEY_MASK_STRIDE, default=DEFAULT_MASK_STRIDE),
        mask_graph=_mask_graph(r, source),
        precision=parse_precision(r.get(KEY_PRECISION, None), source),
    )


def parse_precision(value: Any, source: str = "model") -> PrecisionInfo:
    """The decoded ``precision`` metadata entry -> PrecisionInfo (None: an fp32 model exported before the key)."""
    if value is None:
        return PrecisionInfo()

    def fail(problem: str) -> PansegError:
        return PansegError(f"{source}: metadata {KEY_PRECISION!r} {problem}")

    if not isinstance(value, dict):
        raise fail(f"must be an object, got {value!r}")
    precision = value.get("precision")
    if precision not in PRECISIONS:
        raise fail(f"names precision {precision!r}, not one of {', '.join(PRECISIONS)}")
    target = value.get("int8_target")
    if precision == INT8 and target not in INT8_TARGETS:
        raise fail(f"names int8 target {target!r}, not one of {', '.join(INT8_TARGETS)}")
    calibration = value.get("calibration") or {}
    float_nodes = value.get("float_nodes") or []
    if not isinstance(calibration, dict) or not isinstance(float_nodes, list):
        raise fail("has a malformed calibration or float_nodes entry")
    count = calibration.get("images", 0)
    return PrecisionInfo(precision=precision, int8_target=target if precision == INT8 else None,
                         calibration_method=calibration.get("method"),
                         calibration_images=count if isinstance(count, int) else 0,
                         calibration_digest=calibration.get("images_sha256"),
                         float_nodes=tuple(str(n) for n in float_nodes))


def read_precision(engine_path: str | os.PathLike) -> PrecisionInfo:
    """The precision of an engine file without loading it for inference: a TensorRT plan's side file, or an ONNX
    model's metadata through an unoptimized ONNX Runtime session (the runtime has no onnx package)."""
    path = os.fspath(engine_path)
    if is_tensorrt_file(path):
        from runtime.trt_sidecar import read_sidecar_metadata

        props = read_sidecar_metadata(path)
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for unreadable files
            raise PansegError(f"{path}: not a readable ONNX model ({' '.join(str(exc).split())[:200]})") from exc
        props = session.get_modelmeta().custom_metadata_map
    values = decode_metadata_props([(KEY_PRECISION, props[KEY_PRECISION])], path) if KEY_PRECISION in props else {}
    return parse_precision(values.get(KEY_PRECISION), path)


def _mask_graph(r: _Reader, source: str) -> str | None:
    """The mask graph's file name; a TensorRT engine's side file (it has a ``tensorrt`` section) must name a mask
    engine next to it, as python -m export.tensorrt writes it, not the ONNX mask graph it was built from."""
    name = mask_graph_file(r.values, source)
    if name is not None and KEY_TENSORRT in r.values and not is_tensorrt_file(name):
        raise r.fail(KEY_QUERY_SPARSE, f"names the mask graph {name}, not a TensorRT engine; rebuild the pair with "
                     "python -m export.tensorrt, which builds the detector and the mask engine together")
    return name


"""Static INT8 post-training quantization (QDQ) of one graph, in one of two flavours.

Why two: TensorRT builds only symmetric int8 (S8S8: int8 activations and weights, zero points 0, per-channel weight
scales on the output-channel axis), while ONNX Runtime's CPU integer kernels are fastest with uint8 activations (U8S8).
On x86 CPUs without VNNI the 16-bit intermediate sums of U8S8 can saturate, so weights are then quantized to 7 bits
(``reduce_range``); the choice, and why, is recorded in the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from export.precision.blocks import QUANTIZED_OPS
from export.precision.calibration import FeedsReader
from runtime.contract import INT8_CPU, INT8_TENSORRT
from runtime.cpuinfo import cpu_flags

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class Int8Flavour:
    """How a graph is quantized for one target, and why (what the metadata records)."""

    target: str
    activation_type: str  # "int8" or "uint8"
    symmetric_activations: bool
    reduce_range: bool
    reason: str

    @classmethod
    def for_target(cls, target: str, flags: set[str] | None = None) -> Int8Flavour:
        if target == INT8_TENSORRT:
            return cls(target, "int8", True, False, "TensorRT builds symmetric int8 (S8S8, zero points 0) only")
        if target != INT8_CPU:
            raise ValueError(f"unknown int8 target {target!r}")
        flags = cpu_flags() if flags is None else flags
        vnni = sorted(flags.intersection(VNNI_FLAGS))
        if vnni:
            return cls(target, "uint8", False, False, f"U8S8; this CPU has {', '.join(vnni)}: full-range weights")
        return cls(target, "uint8", False, True, "U8S8; no VNNI flag on this CPU: 7-bit weights (reduce_range) "
                   "against saturation of the 16-bit sums")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def quantize_graph(source: Path, output: Path, feeds: Sequence[dict], flavour: Int8Flavour, method: str,
                   cache: Path, exclude: Sequence[str] = ()) -> bool:
    """Quantize ``source`` into ``output`` (QDQ on Conv/MatMul/Gemm, per-channel weights), calibrated on ``feeds``
    by ``method`` unless ``cache`` already holds the ranges; ``exclude``: nodes kept in float. True on a cache hit."""
    hit = cache.is_file()
    cache.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static warns about pre-processing on every call
    try:
        quantize_static(
            str(source), str(output), FeedsReader(feeds), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=flavour.reduce_range,
            activation_type=QuantType.QInt8 if flavour.activation_type == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude), calibrate_method=CALIBRATION_METHODS[method],
            extra_options={"ActivationSymmetric": flavour.symmetric_activations, "WeightSymmetric": True,
                           "CalibTensorRangeSymmetric": flavour.symmetric_activations,
                           # one image per collection: images (and kept-query counts) differ in shape, which the
                           # histogram methods cannot stack; min-max merges the same either way
                           "CalibStridedMinMax": 1},
            calibration_cache_path=str(cache))
    finally:
        logging.getLogger().setLevel(quiet)
    return hit

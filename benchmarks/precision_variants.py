"""The precision variants the benchmarks make and the PQ each may lose: one place for both, free of heavy imports so
the demo's driver and summary can use them.

Names are ``runtime.model_info.PrecisionInfo.label`` values (what a variant's metadata says it is).
"""

from __future__ import annotations

VARIANTS: dict[str, tuple[str, ...]] = {  # name -> python -m export.precision flags
    "fp16": ("--precision", "fp16"),
    "int8-cpu": ("--precision", "int8", "--int8-target", "cpu"),
    "int8-tensorrt": ("--precision", "int8", "--int8-target", "tensorrt"),
}

# Issue 15's targets for the demo model on the synthetic val set: PQ (points) at most this far below fp32's (the
# TensorRT flavour as ONNX Runtime runs it on the CPU).
MAX_PQ_DROP: dict[str, float] = {"fp16": 0.2, "int8-cpu": 1.0, "int8-tensorrt": 1.5}

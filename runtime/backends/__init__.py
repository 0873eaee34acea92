"""Inference engines behind one interface: ONNX Runtime and TensorRT.

Importing this package is cheap: ``onnxruntime`` (or ``tensorrt``) is imported only when a backend is created,
e.g. by ``select_backend``.
"""

from __future__ import annotations

from typing import Any

from runtime.backends.base import Backend, TensorSpec, read_sidecar_metadata, sidecar_path
from runtime.backends.select import add_backend_arguments, backend_name_for, backend_options_from_args, select_backend

__all__ = [
    "Backend",
    "OnnxRuntimeBackend",
    "TensorSpec",
    "add_backend_arguments",
    "backend_name_for",
    "backend_options_from_args",
    "read_sidecar_metadata",
    "select_backend",
    "sidecar_path",
]


def __getattr__(name: str) -> Any:
    # Keeps the onnxruntime install check (and the module) out of `import runtime.backends`.
    if name == "OnnxRuntimeBackend":
        from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

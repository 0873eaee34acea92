"""Checkpoint -> self-describing, verified ONNX model (``python -m export.onnx CKPT``).

Pieces: exporter.py (:func:`export_checkpoint`, the export as a whole), loading.py (checkpoint -> model, config,
categories), graph.py (wrappers and the export itself), sparse.py (the query-sparse detector + mask graph pair),
metadata.py (what the runtime reads from the .onnx), verify/ (checker, TensorRT operators, the deployed model on ONNX
Runtime vs eager, on the caller's images), defaults.py (the defaults, importable without torch).

The public names below load lazily (PEP 562): importing the package, as ``python -m export.onnx`` does, costs nothing,
so the command can refuse a file that is not a checkpoint before it spends seconds importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {  # public name -> the module that defines it
    "ExportResult": "export.onnx.exporter",
    "default_output_path": "export.onnx.exporter",
    "export_checkpoint": "export.onnx.exporter",
    "failed_path": "export.onnx.exporter",
    "mask_graph_path": "export.onnx.exporter",
    "verification_is_thing": "export.onnx.exporter",
    "ShapePolicy": "export.onnx.graph",
    "read_metadata": "export.onnx.metadata",
    "Tolerances": "export.onnx.verify.compare",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (any other name: AttributeError, so that
    ``from export.onnx import graph`` still finds the submodule)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

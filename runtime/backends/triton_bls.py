"""A graph served by another Triton model, called through Triton's BLS (business logic scripting) API.

Why a backend: in the native model repository (``python -m export.triton --engines native``) the detector and mask
graphs run in Triton's own ``onnxruntime_onnx`` / ``tensorrt_plan`` backends, and the ``panseg`` Python model calls
them. Behind the ``Backend`` interface those calls are just another engine, so ``PanopticModel``, the query selection
and the panoptic merge run unchanged and the answers stay those of ``panseg-rt infer``.

The served graph's file is not beside the caller, so what the runtime reads from an engine (metadata, input and
output specs) comes from a description the export writes from the real engine file (:func:`describe_graph`).
``triton_python_backend_utils`` exists only inside Triton's Python stub; it is passed in, never imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.errors import PansegError


def _spec_to_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": None if spec.dtype is None else spec.dtype.name, "shape": list(spec.shape)}


def _spec_from_json(data: Mapping[str, Any]) -> TensorSpec:
    dtype = data.get("dtype")
    return TensorSpec(str(data["name"]), None if dtype is None else np.dtype(dtype), tuple(data["shape"]))


@dataclass(frozen=True)
class GraphDescription:
    """What the runtime knows about one engine file, kept where the file itself is not: the Triton model serving it,
    the file's name, its metadata (key -> JSON string, as ``Backend.metadata()``) and its tensors."""

    model_name: str
    file: str
    metadata: Mapping[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "file": self.file, "metadata": dict(self.metadata),
                "inputs": [_spec_to_json(s) for s in self.inputs], "outputs": [_spec_to_json(s) for s in self.outputs]}

    @classmethod
    def from_json(cls, data: Any, source: str) -> GraphDescription:
        try:
            metadata = {str(k): str(v) for k, v in data["metadata"].items()}
            return cls(str(data["model_name"]), str(data["file"]), metadata,
                       tuple(_spec_from_json(s) for s in data["inputs"]),
                       tuple(_spec_from_json(s) for s in data["outputs"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise PansegError(f"{source}: not a graph description ({type(exc).__name__}: {exc})") from exc


def describe_graph(engine: Backend, model_name: str) -> GraphDescription:
    """The description of a loaded engine, to be served as Triton model ``model_name``."""
    return GraphDescription(model_name, engine.path.name, engine.metadata(), tuple(engine.input_specs()),
                            tuple(engine.output_specs()))


class TritonBLSBackend(Backend):
    """Runs a graph by a BLS request to the Triton model that serves it; ``pb_utils`` is Triton's
    ``triton_python_backend_utils`` module. A failed call (model not loaded, engine error, ...) raises a PansegError
    naming the Triton model and Triton's message, which the ``panseg`` model answers as that request's error."""

    name = "triton_bls"

    def __init__(self, description: GraphDescription, pb_utils: Any) -> None:
        super().__init__(Path(description.file))
        self.description = description
        self.model_name = description.model_name
        self._pb = pb_utils
        # BLS outputs of a GPU backend would otherwise stay in GPU memory, where as_numpy() cannot read them.
        self._cpu = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def input_specs(self) -> list[TensorSpec]:
        return list(self.description.inputs)

    def output_specs(self) -> list[TensorSpec]:
        return list(self.description.outputs)

    def metadata(self) -> dict[str, str]:
        return dict(self.description.metadata)

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        pb = self._pb
        request = pb.InferenceRequest(model_name=self.model_name, requested_output_names=list(outputs),
                                      inputs=[pb.Tensor(name, np.ascontiguousarray(a)) for name, a in feeds.items()],
                                      preferred_memory=self._cpu)
        response = request.exec()
        if response.has_error():
            raise PansegError(f"Triton model {self.model_name} ({self.path.name}): {response.error().message()}")
        values: dict[str, np.ndarray] = {}
        for name in outputs:
            tensor = pb.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise PansegError(f"Triton model {self.model_name} ({self.path.name}): no output {name} in its answer")
            values[name] = np.array(tensor.as_numpy(), copy=True)  # the response's memory is freed with it
        return values

    def _release(self) -> None:
        self._pb = None

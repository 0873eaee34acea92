"""The ``panseg`` model for Triton's Python backend: requests -> ``PanopticService`` -> responses.

Runs inside Triton's stub process (``triton_python_backend_utils`` exists only there), in the execution environment
named by the config's ``EXECUTION_ENV_PATH``; the generated ``model.py`` imports this class from the copy of the
runtime kept in the version folder. Its engine is the files in the version folder, or, in the native repository,
the graph models it calls through BLS (``runtime.serving.native``). A bad request gets its own ``TritonError``
naming the problem; the other requests of the batch are answered normally and the model keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cpuinfo import physical_cores
from runtime.errors import PansegError
from runtime.serving.native import load_native_model
from runtime.serving.protocol import (
    ENGINE_DIR,
    ENGINES_NATIVE,
    IMAGE,
    NMS_IOU,
    PANOPTIC_PNG,
    PARAM_BACKEND,
    PARAM_ENGINE,
    PARAM_ENGINES,
    PARAM_MAX_SIZE,
    PARAM_SIZE,
    PARAM_THREADS,
    SEGMENTS_INFO,
    THRESHOLD,
)
from runtime.serving.service import ImageRequest, PanopticService, Segmented


def config_parameters(config: dict[str, Any]) -> dict[str, str]:
    """The string parameters of a model config (Triton hands the config over as JSON)."""
    return {k: str(v.get("string_value", "")) for k, v in config.get("parameters", {}).items()}


def instance_count(config: dict[str, Any]) -> int:
    """How many instances of the model the config asks for (summed over its instance groups; Triton's default 1)."""
    groups = config.get("instance_group") or [{}]
    return max(1, sum(int(g.get("count", 1)) for g in groups))


def engine_options(threads: str, instances: int, cores: int | None = None) -> dict[str, Any]:
    """ONNX Runtime options of one instance. Why: instances run side by side on the same cores, so by default
    (``threads`` empty) they share the physical cores instead of each taking all of them, and with several
    instances ORT's worker threads do not busy-wait after a run (spinning would take CPU from the other instances:
    on 2 shared cores a spinning pool of 2 threads more than doubled the CPU per image). ``cores``: physical cores
    (default: this machine's)."""
    if threads:
        count: int | None = int(threads)
    else:
        count = None if instances == 1 else max(1, (cores or physical_cores()) // instances)
    options: dict[str, Any] = {} if count is None else {"intra_op_threads": count}
    if instances > 1:
        options["allow_spinning"] = False
    return options


def service_from_parameters(version_dir: Path, params: dict[str, str], max_batch: int,
                            pb_utils: Any = None, instances: int = 1) -> PanopticService:
    """The service the config describes, with its resize and thread settings (``engine_options``: ``instances``
    share the cores): on the engine in ``version_dir/engine``, or (native repository) on the graphs its description
    names, called through BLS with ``pb_utils``."""
    max_size: int | None | str = "model"
    if params.get(PARAM_MAX_SIZE):
        max_size = None if params[PARAM_MAX_SIZE] == "none" else int(params[PARAM_MAX_SIZE])
    size = int(params[PARAM_SIZE]) if params.get(PARAM_SIZE) else None
    if params.get(PARAM_ENGINES) == ENGINES_NATIVE:
        return PanopticService(load_native_model(version_dir, pb_utils), size=size, max_size=max_size,
                               max_batch=max_batch)
    engine = version_dir / ENGINE_DIR / params[PARAM_ENGINE]
    options = engine_options(params.get(PARAM_THREADS, ""), instances) if engine.suffix == ".onnx" else {}
    return PanopticService(engine, params.get(PARAM_BACKEND) or None, options, size, max_size, max_batch)


class TritonPythonModel:
    """Triton's entry points: initialize (load the engine once per instance), execute (a dynamic batch), finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.service = service_from_parameters(version_dir, config_parameters(config),
                                               max(1, int(config.get("max_batch_size", 1))), pb_utils,
                                               instance_count(config))

    def execute(self, requests: list[Any]) -> list[Any]:
        parsed: list[list[ImageRequest] | str] = [self._parse(r) for r in requests]
        flat = [item for p in parsed if not isinstance(p, str) for item in p]
        answers = iter(self.service.segment(flat))
        responses = []
        for p in parsed:
            if isinstance(p, str):
                responses.append(self._error(p))
                continue
            mine = [next(answers) for _ in p]
            errors = [f"image {k}: {a}" if len(mine) > 1 else a for k, a in enumerate(mine) if isinstance(a, str)]
            if errors:
                responses.append(self._error("; ".join(errors)))
                continue
            pngs = np.array([[a.png] for a in mine if isinstance(a, Segmented)], dtype=np.object_)
            infos = np.array([[a.segments_info.encode("utf-8")] for a in mine if isinstance(a, Segmented)],
                             dtype=np.object_)
            responses.append(self.pb.InferenceResponse(output_tensors=[
                self.pb.Tensor(PANOPTIC_PNG, pngs), self.pb.Tensor(SEGMENTS_INFO, infos)]))
        return responses

    def _error(self, message: str) -> Any:
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))

    def _parse(self, request: Any) -> list[ImageRequest] | str:
        """The request's images and settings, or a one-line message saying what is wrong with it."""
        try:
            images = self.pb.get_input_tensor_by_name(request, IMAGE).as_numpy()
            if images.dtype != np.object_:
                return f"{IMAGE} must be BYTES (encoded image files), got {images.dtype}"
            count = images.shape[0]
            thresholds = self._per_image(request, THRESHOLD, count)
            nms = self._per_image(request, NMS_IOU, count)
        except PansegError as exc:
            return str(exc)
        return [ImageRequest(bytes(images[k].reshape(-1)[0]), thresholds[k], nms[k]) for k in range(count)]

    def _per_image(self, request: Any, name: str, count: int) -> list[float | None]:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        if tensor is None:
            return [None] * count
        values = tensor.as_numpy().reshape(count, -1)
        if values.shape[1] != 1 or not np.issubdtype(values.dtype, np.floating):
            raise PansegError(f"{name} must be one FP32 value per image, got {values.dtype} {tensor.as_numpy().shape}")
        return [float(v) for v in values[:, 0]]

    def finalize(self) -> None:
        self.service.close()

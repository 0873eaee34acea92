"""``panseg-rt request``: send images to a served panseg model and write the answers as ``panseg-rt infer`` does.

Output folder: ``panoptic/<stem>.png`` (the bytes the server sent, which are the bytes infer writes) and
``predictions.json`` (COCO panoptic results, categories from the model's config), plus ``failures.json`` listing the
images the server refused and why. Needs ``tritonclient[http]`` (the ``serve`` extra), imported only here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import atomic_write_bytes, atomic_write_json
from runtime.categories import categories_from_json
from runtime.errors import PansegError
from runtime.inputs import Failure, check_unique_outputs, collect_inputs, jobs_for_files
from runtime.outputs import FAILURES_FILE, PANOPTIC_DIR, PREDICTIONS_FILE, PredictionsFile
from runtime.serving.protocol import (
    IMAGE,
    MODEL_NAME,
    NMS_IOU,
    PANOPTIC_PNG,
    PARAM_CATEGORIES,
    SEGMENTS_INFO,
    THRESHOLD,
)


def _http() -> Any:
    try:
        import tritonclient.http as http
    except ImportError as exc:
        raise PansegError("tritonclient is not installed (pip install 'panseg[serve]' or 'tritonclient[http]')") \
            from exc
    return http


@dataclass(frozen=True)
class Answer:
    png: bytes
    segments_info: list[dict[str, Any]]


def request_inputs(data: bytes, threshold: float | None = None, nms_iou: float | None = None) -> list[Any]:
    """The inference inputs of one image: its encoded bytes and the optional settings."""
    http = _http()
    image = http.InferInput(IMAGE, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    inputs = [image]
    for name, value in ((THRESHOLD, threshold), (NMS_IOU, nms_iou)):
        if value is not None:
            tensor = http.InferInput(name, [1, 1], "FP32")
            tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
            inputs.append(tensor)
    return inputs


def parse_answer(result: Any) -> Answer:
    return Answer(bytes(result.as_numpy(PANOPTIC_PNG)[0, 0]), json.loads(result.as_numpy(SEGMENTS_INFO)[0, 0]))


def server_message(exc: Exception) -> str:
    """The server's one-line message of a failed request (tritonclient prefixes the HTTP status)."""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join(str(text).split())


class PansegClient:
    """A connection to a server with the ``panseg`` model: ``segment`` one image, or ``segment_many`` concurrently."""

    def __init__(self, url: str, concurrency: int = 1, timeout: float = 120.0, model: str = MODEL_NAME) -> None:
        http = _http()
        self.model = model
        self.client = http.InferenceServerClient(url, concurrency=max(1, concurrency), connection_timeout=timeout,
                                                 network_timeout=timeout)
        self.url = url

    def categories_json(self) -> list[dict[str, Any]]:
        try:
            config = self.client.get_model_config(self.model)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and socket errors
            raise PansegError(f"{self.url}: cannot read the config of model {self.model!r} ({server_message(exc)})") \
                from exc
        text = config.get("parameters", {}).get(PARAM_CATEGORIES, {}).get("string_value")
        if not text:
            raise PansegError(f"{self.url}: model {self.model!r} has no categories parameter (not a panseg model?)")
        return json.loads(text)

    def segment(self, data: bytes, threshold: float | None = None, nms_iou: float | None = None) -> Answer:
        return parse_answer(self.client.infer(self.model, request_inputs(data, threshold, nms_iou)))

    def segment_many(self, images: Sequence[bytes], threshold: float | None = None,
                     nms_iou: float | None = None) -> list[Answer | str]:
        """All images at once (up to the client's concurrency in flight); an answer or the server's message each."""
        pending = [self.client.async_infer(self.model, request_inputs(d, threshold, nms_iou)) for d in images]
        answers: list[Answer | str] = []
        for request in pending:
            try:
                answers.append(parse_answer(request.get_result()))
            except Exception as exc:  # noqa: BLE001 - the server's error for this image
                answers.append(server_message(exc))
        return answers

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> PansegClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def request_to_folder(url: str, inputs: Sequence[str | os.PathLike], output: str | os.PathLike,
                      threshold: float | None = None, nms_iou: float | None = None, concurrency: int = 4,
                      on_failure: Callable[[Failure], None] | None = None) -> tuple[int, list[Failure]]:
    """Segment image files on the server into ``output`` (see the module docstring); (images done, failures)."""
    jobs = jobs_for_files(collect_inputs(inputs))
    check_unique_outputs(jobs)
    root = Path(output)
    failures: list[Failure] = []
    with PansegClient(url, concurrency) as client:
        categories = categories_from_json(client.categories_json(), f"{url} model config")
        predictions = PredictionsFile(root / PREDICTIONS_FILE, categories, [j.stem for j in jobs])
        answers = client.segment_many([j.path.read_bytes() for j in jobs], threshold, nms_iou)
    done = 0
    for job, answer in zip(jobs, answers, strict=True):
        if isinstance(answer, str):
            failure = Failure(str(job.path), f"{job.path}: {answer}")
            failures.append(failure)
            if on_failure is not None:
                on_failure(failure)
            continue
        atomic_write_bytes(root / PANOPTIC_DIR / job.file_name, answer.png)
        predictions.add(job.stem, {"image_id": job.image_id, "file_name": job.file_name,
                                   "segments_info": answer.segments_info})
        done += 1
    predictions.flush()
    atomic_write_json(root / FAILURES_FILE, [{"input": f.path, "error": str(f)} for f in failures], indent=1)
    return done, failures

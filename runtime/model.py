"""One loader for an exported panoptic model: ``load_model(path) -> PanopticModel``.

Why one place: a query-sparse export is two files (the detector names its mask graph in its metadata), each loaded by
a backend, decoded and checked against the contract. ``panseg-rt infer``, ``panseg-rt bench``, the latency benchmark
and the export's verification all load models; doing it here once means they all run the same graphs the same way,
and a model that is not a panseg panoptic model is refused in one place with one message.

``PanopticModel.run`` is the whole engine stage for either layout and hands over what it kept per image
(``runtime.postprocess.ModelOutputs``); ``runtime.postprocess.segment_kept`` turns that into the panoptic result
without selecting again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import Backend, select_backend
from runtime.backends.base import TensorSpec
from runtime.contract import (
    DETECTOR_OUTPUTS,
    IMAGES,
    MASK_GRAPH_INPUTS,
    MASK_GRAPH_OUTPUT,
    MODEL_INPUTS,
    PADDING_MASK,
    PRED_BOXES,
    PRED_LOGITS,
    PRED_MASKS,
)
from runtime.errors import PansegError
from runtime.model_info import ModelInfo, parse_model_info
from runtime.postprocess import KeptQueries, ModelOutputs
from runtime.sparse import QuerySelector, mask_graph_path, run_query_sparse

SINGLE_GRAPH_OUTPUTS = (PRED_LOGITS, PRED_BOXES, PRED_MASKS)


@dataclass(frozen=True)
class EngineShape:
    """The fixed dimensions of the engine's images input (None: dynamic)."""

    batch: int | None = None
    height: int | None = None
    width: int | None = None

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> EngineShape:
        dims = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        if len(dims) != 4:
            raise PansegError(f"engine input {spec.describe()} is not N x 3 x H x W")
        return cls(dims[0], dims[2], dims[3])

    def too_large(self, processed: tuple[int, int]) -> str | None:
        h, w = processed
        if (self.height is not None and h > self.height) or (self.width is not None and w > self.width):
            return (f"processed size {h}x{w} does not fit the engine's fixed input {self.height}x{self.width} "
                    "(lower --size/--max-size, or export with dynamic shapes)")
        return None

    def fit(self, images: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pad a batch to the engine's fixed sizes; extra batch slots repeat the last image (results ignored)."""
        b, c, h, w = images.shape
        out_b, out_h, out_w = self.batch or b, self.height or h, self.width or w
        if (out_b, out_h, out_w) == (b, h, w):
            return images, mask
        fitted = np.zeros((out_b, c, out_h, out_w), dtype=images.dtype)
        fitted_mask = np.ones((out_b, out_h, out_w), dtype=bool)
        fitted[:b, :, :h, :w] = images
        fitted_mask[:b, :h, :w] = mask
        fitted[b:] = fitted[b - 1]
        fitted_mask[b:] = fitted_mask[b - 1]
        return fitted, fitted_mask


def check_engine(detector: Backend, info: ModelInfo, masks: Backend | None = None) -> EngineShape:
    """The engine must be a panoptic model with the tensors the runtime feeds and reads (a query-sparse model: its
    detector and its mask graph ``masks``); returns the fixed dimensions of its images input."""
    if not info.panoptic:
        raise PansegError(f"{info.source}: a {info.kind}-only model; panseg-rt infer needs a panoptic model "
                          "(one trained and exported with masks)")
    if info.mask_graph is not None and masks is None:
        raise PansegError(f"{info.source}: a query-sparse model; its mask graph {info.mask_graph} must be loaded too")
    if info.mask_graph is None and masks is not None:
        raise PansegError(f"{info.source}: a single-graph model takes no mask graph")
    inputs = {s.name: s for s in detector.input_specs()}
    outputs = {s.name for s in detector.output_specs()}
    wanted_outputs = DETECTOR_OUTPUTS if masks is not None else SINGLE_GRAPH_OUTPUTS
    missing = [n for n in (IMAGES,) if n not in inputs] + [n for n in wanted_outputs if n not in outputs]
    if masks is not None:
        mask_inputs = {s.name for s in masks.input_specs()}
        mask_outputs = {s.name for s in masks.output_specs()}
        if mask_inputs != set(MASK_GRAPH_INPUTS) or MASK_GRAPH_OUTPUT not in mask_outputs:
            raise PansegError(f"{masks.path}: mask graph tensors {sorted(mask_inputs)} -> {sorted(mask_outputs)} "
                              f"are not a panseg mask graph's ({', '.join(MASK_GRAPH_INPUTS)} -> {MASK_GRAPH_OUTPUT})")
    unknown_inputs = [n for n in inputs if n not in MODEL_INPUTS]
    if missing or unknown_inputs:
        raise PansegError(f"{info.source}: engine tensors {sorted(inputs)} -> {sorted(outputs)} are not a panseg "
                          f"DETR's (missing {missing or 'none'}, unexpected inputs {unknown_inputs or 'none'})")
    return EngineShape.from_spec(inputs[IMAGES])


def _device_pair(detector: Backend, masks: Backend | None) -> Any:
    """A TensorRT query-sparse pair whose per-image tensors never leave the GPU (runtime/backends/tensorrt_pair.py);
    None for any other model."""
    if masks is None or detector.name != "tensorrt" or masks.name != "tensorrt":
        return None
    from runtime.backends.tensorrt_pair import TensorRTPair

    return TensorRTPair(detector, masks)  # type: ignore[arg-type]


def _bound_pair(detector: Backend, masks: Backend | None) -> Any:
    """An ONNX Runtime query-sparse pair whose per-image tensors are handed over as ONNX Runtime's own tensors, on the
    sessions' device (runtime/backends/onnxruntime_pair.py); None for any other model."""
    if masks is None or detector.name != "onnxruntime" or masks.name != "onnxruntime":
        return None
    from runtime.backends.onnxruntime_pair import OnnxRuntimePair

    return OnnxRuntimePair(detector, masks)  # type: ignore[arg-type]


class PanopticModel:
    """An exported panoptic model, loaded and checked: its graphs (one, or the query-sparse pair), metadata and input
    shape. Close it (or use ``with``) to free both engines."""

    def __init__(self, path: Path, backend_name: str, detector: Backend, masks: Backend | None, info: ModelInfo,
                 shape: EngineShape, stack: ExitStack) -> None:
        self.path = path
        self.backend_name = backend_name
        self.detector = detector
        self.masks = masks
        self.info = info
        self.shape = shape
        self.feeds_padding_mask = any(s.name == PADDING_MASK for s in detector.input_specs())
        self._stack = stack
        self.device_pair = _device_pair(detector, masks)  # both TensorRT: the hand-off stays on the GPU
        self.bound_pair = _bound_pair(detector, masks)  # both ONNX Runtime: the hand-off through IO binding

    @property
    def query_sparse(self) -> bool:
        return self.masks is not None

    @property
    def mask_path(self) -> Path | None:
        return None if self.masks is None else self.masks.path

    @property
    def files(self) -> list[Path]:
        """Every engine file the model consists of (what its results depend on)."""
        return [self.detector.path] + ([self.masks.path] if self.masks is not None else [])

    def graphs(self) -> dict[str, Backend]:
        """Role -> backend: ``{"model": ...}`` for a single graph, ``{"detector": ..., "masks": ...}`` for a pair."""
        if self.masks is None:
            return {"model": self.detector}
        return {"detector": self.detector, "masks": self.masks}

    def feeds(self, images: np.ndarray, padding_mask: np.ndarray) -> dict[str, np.ndarray]:
        """The model's inputs for a preprocessed batch (images B x 3 x H x W, padding mask B x H x W)."""
        feeds = {IMAGES: images}
        if self.feeds_padding_mask:
            feeds[PADDING_MASK] = padding_mask
        return feeds

    def run(self, images: np.ndarray, padding_mask: np.ndarray, threshold: float,
            nms_iou: float | None = None, select: QuerySelector | None = None) -> ModelOutputs:
        """The engine stage: the graph(s) on a batch, then per image the queries kept at ``threshold`` (with box NMS
        among things when ``nms_iou`` is set) with their masks. A query-sparse model computes only those masks.

        ``select`` replaces the threshold rule (``panseg-rt bench`` keeps a fixed number of queries per image)."""
        feeds = self.feeds(images, padding_mask)
        is_thing = self.info.is_thing
        if self.device_pair is not None:
            return self.device_pair.run(feeds, threshold, is_thing, nms_iou, select)
        if self.bound_pair is not None:
            return self.bound_pair.run(feeds, threshold, is_thing, nms_iou, select)
        if self.masks is not None:
            return run_query_sparse(self.detector.infer, self.masks.infer, feeds, threshold, is_thing, nms_iou, select)
        out = self.detector.infer(feeds, list(SINGLE_GRAPH_OUTPUTS))
        kept = []
        for logits, masks, boxes in zip(out[PRED_LOGITS], out[PRED_MASKS], out[PRED_BOXES], strict=True):
            if select is None:
                kept.append(KeptQueries.select(logits, masks, threshold, boxes, is_thing, nms_iou))
            else:
                keep, scores, labels = select(logits, boxes)
                kept.append(KeptQueries(keep, scores, labels, np.asarray(masks)[keep]))
        return ModelOutputs(out[PRED_LOGITS], out[PRED_BOXES], kept)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PanopticModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        layout = f"query-sparse pair with {self.masks.path.name}" if self.masks is not None else "single graph"
        return f"<PanopticModel {self.path} ({layout}, {self.backend_name})>"


def load_model(path: str | os.PathLike, backend: str | None = None,
               backend_options: Mapping[str, Any] | None = None) -> PanopticModel:
    """Load an exported panoptic model: the file given (a single graph, or a query-sparse detector) and the mask graph
    its metadata names, with the same backend and options; decode and check the metadata and the tensors."""
    path = Path(path)
    if not path.is_file():
        raise PansegError(f"{path}: {'is not a file' if path.exists() else 'no such model file'}")
    options = dict(backend_options or {})
    stack = ExitStack()
    try:
        detector = stack.enter_context(select_backend(path, backend, **options))
        info = parse_model_info(detector.metadata(), str(path))
        masks = None
        if info.mask_graph is not None:
            masks = stack.enter_context(select_backend(mask_graph_path(path, info.mask_graph), backend, **options))
        shape = check_engine(detector, info, masks)
    except BaseException:
        stack.close()
        raise
    return PanopticModel(path, detector.name, detector, masks, info, shape, stack)

"""The two engines verification compares, each on the same padded batch.

Deployed: the exported file(s) loaded with ``runtime.model.load_model`` and run exactly as ``panseg-rt infer`` runs
them (``PanopticModel.run``, then ``runtime.postprocess.segment_kept`` per image on what the engine stage kept), so
verification checks the code path users get, not a copy of it. ONNX Runtime on the CPU, with the optimized-model
cache off: verification must not write next to the user's model. The engine stage hands over only the kept queries'
masks, so a single graph is called once more for every query's masks (the per-output comparison checks them all). A
detection-only model has no deployed panoptic path; its graph runs through the runtime's backend.

Eager: the checkpoint's PyTorch model on the same batch, and the runtime's numpy ``postprocess_panoptic`` on its
outputs as the reference panoptic result.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export.onnx.graph import FullModel
from export.onnx.verify.images import Batch
from runtime.backends import Backend, select_backend
from runtime.backends.select import ONNXRUNTIME
from runtime.contract import DETECTION_OUTPUTS, IMAGES, PADDING_MASK, PRED_BOXES, PRED_LOGITS, PRED_MASKS
from runtime.model import PanopticModel, load_model
from runtime.postprocess import KeptQueries, PanopticResult, postprocess_panoptic, segment_kept

# CPU, and no optimized-model cache written next to the model being verified
VERIFY_BACKEND_OPTIONS = {"providers": ("cpu",), "optimized_cache": False}


@dataclass
class EagerRun:
    outputs: dict[str, np.ndarray]  # the full model's outputs by name (every query's masks when panoptic)
    results: list[PanopticResult]  # panoptic: postprocess_panoptic on them, per image
    ms: float  # the forward pass


@dataclass
class DeployedRun:
    pred_logits: np.ndarray
    pred_boxes: np.ndarray
    kept: list[KeptQueries] = field(default_factory=list)  # panoptic: what PanopticModel.run kept, per image
    results: list[PanopticResult] = field(default_factory=list)  # panoptic: segment_kept on each
    all_masks: np.ndarray | None = None  # single graph only: every query's masks (the pair computes only the kept)
    ms: float = 0.0  # the engine stage


class EagerRunner:
    """The PyTorch model in eval mode, and the runtime's post-processing of its outputs as the reference."""

    def __init__(self, torch_model: torch.nn.Module, panoptic: bool, is_thing: Mapping[int, bool],
                 threshold: float) -> None:
        self.wrapper = FullModel(torch_model, panoptic).eval()
        self.is_thing = is_thing
        self.threshold = threshold

    def run(self, batch: Batch) -> EagerRun:
        started = time.perf_counter()
        with torch.no_grad():
            out = self.wrapper(torch.from_numpy(batch.images), torch.from_numpy(batch.mask))
        ms = (time.perf_counter() - started) * 1e3
        outputs = {name: t.numpy() for name, t in zip(self.wrapper.output_names, out, strict=True)}
        results = []
        if PRED_MASKS in outputs:
            results = postprocess_panoptic(outputs[PRED_LOGITS], outputs[PRED_MASKS], batch.processed,
                                           batch.originals, self.is_thing, threshold=self.threshold)
        return EagerRun(outputs, results, ms)


class DeployedRunner:
    """The exported model as the runtime loads and runs it (see the module docstring). Close it, or use ``with``."""

    def __init__(self, path: str | os.PathLike, panoptic: bool, is_thing: Mapping[int, bool],
                 threshold: float) -> None:
        self.is_thing = is_thing
        self.threshold = threshold
        self.model: PanopticModel | None = None
        self.backend: Backend | None = None
        if panoptic:
            self.model = load_model(path, ONNXRUNTIME, VERIFY_BACKEND_OPTIONS)
        else:
            self.backend = select_backend(path, ONNXRUNTIME, **VERIFY_BACKEND_OPTIONS)

    @property
    def files(self) -> list[Path]:
        """The engine files run: the graph, or the query-sparse detector and its mask graph."""
        return self.model.files if self.model is not None else [self.backend.path]

    def run(self, batch: Batch) -> DeployedRun:
        if self.model is None:
            started = time.perf_counter()
            out = self.backend.infer({IMAGES: batch.images, PADDING_MASK: batch.mask}, list(DETECTION_OUTPUTS))
            return DeployedRun(out[PRED_LOGITS], out[PRED_BOXES], ms=(time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        outputs = self.model.run(batch.images, batch.mask, self.threshold)
        ms = (time.perf_counter() - started) * 1e3
        results = [segment_kept(kept, processed, original, self.is_thing, self.model.info.mask_stride)
                   for kept, processed, original in zip(outputs.kept, batch.processed, batch.originals, strict=True)]
        all_masks = None
        if not self.model.query_sparse:
            feeds = self.model.feeds(batch.images, batch.mask)
            all_masks = self.model.detector.infer(feeds, [PRED_MASKS])[PRED_MASKS]
        return DeployedRun(outputs.pred_logits, outputs.pred_boxes, outputs.kept, results, all_masks, ms)

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
        if self.backend is not None:
            self.backend.close()

    def __enter__(self) -> DeployedRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

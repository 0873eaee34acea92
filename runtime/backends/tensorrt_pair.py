"""The query-sparse pair on TensorRT with the hand-off on the device: the mask engine reads the detector's buffers.

Why: the Backend interface is numpy in, numpy out, so running the pair through it (runtime/sparse.py) sends the
detector's per-image tensors (fpn_s4, fpn_s8, fpn_s16, attn_keys, lay1_image, memory_mask: about 15 MB per 800 x 1066
image in fp32) GPU -> host -> GPU between the two engines, which costs about as much as the mask head itself. Here the
detector's outputs stay in its device buffers and the mask engine is bound to the same addresses
(``set_tensor_address``; ``image_index`` picks each kept query's image). Only what selection needs crosses to the
host (logits and boxes); the kept queries' ``hs`` rows are gathered on the device (one device-to-device copy per run
of consecutive kept queries), ``image_index`` goes up, and the kept masks come back.

The selection is runtime/sparse.py's (the same ``select_queries``, ``kept_pairs`` and result types), so
``PanopticModel.run`` returns the same ModelOutputs either way.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from runtime.backends.base import check_feeds
from runtime.backends.tensorrt_backend import DeviceTensor, TensorRTBackend
from runtime.backends.tensorrt_cuda import TransferCounter
from runtime.contract import (
    FPN_S4,
    HS,
    HS_KEPT,
    IMAGE_INDEX,
    MASK_GRAPH_OUTPUT,
    PER_IMAGE_INPUTS,
    PRED_BOXES,
    PRED_LOGITS,
)
from runtime.errors import PansegError
from runtime.postprocess import KeptQueries, ModelOutputs, select_queries
from runtime.sparse import QuerySelector, kept_pairs
from runtime.trt_sidecar import check_shapes_in_profile


def row_runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Flat source rows -> (source start, destination start, length) runs of consecutive rows (one copy each)."""
    runs: list[tuple[int, int, int]] = []
    for dst, src in enumerate(int(r) for r in rows):
        if runs and runs[-1][0] + runs[-1][2] == src:
            start, dst_start, length = runs[-1]
            runs[-1] = (start, dst_start, length + 1)
        else:
            runs.append((src, dst, 1))
    return runs


class TensorRTPair:
    """A query-sparse detector engine and its mask engine on one GPU (both owned by the caller)."""

    def __init__(self, detector: TensorRTBackend, masks: TensorRTBackend) -> None:
        if detector.device != masks.device:
            raise PansegError(f"{masks.path}: the mask engine is on CUDA device {masks.device}, its detector "
                              f"{detector.path} on {detector.device}; the pair shares buffers and needs one device")
        for source, target in ((HS, HS_KEPT), *((n, n) for n in PER_IMAGE_INPUTS)):
            if detector.dtype_of(source) != masks.dtype_of(target):
                raise PansegError(f"{masks.path}: input {target} is {masks.dtype_of(target)[0]}, but the detector "
                                  f"{detector.path} gives {source} as {detector.dtype_of(source)[0]}")
        self.detector, self.masks = detector, masks

    def transfers(self) -> TransferCounter:
        """Host <-> device (and device-to-device) traffic of both engines since loading or the last reset."""
        total = TransferCounter()
        for counter in (self.detector.transfers, self.masks.transfers):
            for name, value in counter.as_dict().items():
                setattr(total, name, getattr(total, name) + value)
        return total

    def reset_transfers(self) -> None:
        self.detector.transfers.reset()
        self.masks.transfers.reset()

    def run(self, feeds: Mapping[str, np.ndarray], threshold: float, is_thing: Mapping[int, bool] | None = None,
            nms_iou: float | None = None, select: QuerySelector | None = None) -> ModelOutputs:
        """runtime.sparse.run_query_sparse's contract, with the per-image tensors never leaving the device."""
        detector, masks = self.detector, self.masks
        checked = check_feeds(detector.input_specs(), feeds, detector.path)
        with detector.claim(), masks.claim():
            det = detector.execute(checked, {}, [PRED_LOGITS, PRED_BOXES])
            logits, boxes = det[PRED_LOGITS], det[PRED_BOXES]
            if select is None:
                selected = [select_queries(image_logits, threshold, image_boxes, is_thing, nms_iou)
                            for image_logits, image_boxes in zip(logits, boxes, strict=True)]
            else:
                selected = [select(image_logits, image_boxes)
                            for image_logits, image_boxes in zip(logits, boxes, strict=True)]
            keep = [s[0] for s in selected]
            image_index, query_index = kept_pairs(keep)
            mask_hw = detector.device_output(FPN_S4).shape[-2:]
            if image_index.size:
                flat = self._masks_of(image_index, query_index)
                bounds = np.cumsum([0] + [k.size for k in keep])
                image_masks = [flat[bounds[i]:bounds[i + 1]] for i in range(len(keep))]
            else:
                image_masks = [np.zeros((0, *mask_hw), np.float32) for _ in keep]
        kept = [KeptQueries(*selection, m) for selection, m in zip(selected, image_masks, strict=True)]
        return ModelOutputs(logits, boxes, kept)

    def _masks_of(self, image_index: np.ndarray, query_index: np.ndarray) -> np.ndarray:
        """The mask engine on the kept pairs, reading the detector's buffers in place."""
        detector, masks = self.detector, self.masks
        hs = detector.device_output(HS)
        _, queries, width = hs.shape
        row_bytes = width * masks.dtype_of(HS_KEPT)[1]
        # before the gather writes into the mask engine's buffer, which is sized for its profile's maximum
        check_shapes_in_profile({HS_KEPT: (image_index.size, width)}, masks.profiles, masks.path)
        hs_kept = masks.input_address(HS_KEPT)
        for src, dst, length in row_runs(image_index * queries + query_index):
            masks.copy_on_device(hs_kept + dst * row_bytes, hs.address + src * row_bytes, length * row_bytes,
                                 "gather of the kept queries' hs rows")
        device_inputs = {HS_KEPT: DeviceTensor(hs_kept, (image_index.size, width))}
        device_inputs.update({name: detector.device_output(name) for name in PER_IMAGE_INPUTS})
        out = masks.execute({IMAGE_INDEX: image_index}, device_inputs, [MASK_GRAPH_OUTPUT])[MASK_GRAPH_OUTPUT]
        expected = (image_index.size, *detector.device_output(FPN_S4).shape[-2:])
        if out.shape != expected:
            raise PansegError(f"{masks.path}: returned {tuple(out.shape)} for {image_index.size} kept queries, "
                              f"expected {expected}")
        return out

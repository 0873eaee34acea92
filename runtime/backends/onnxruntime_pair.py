"""The query-sparse pair on ONNX Runtime with the hand-off through IO binding: the mask session reads the detector's
per-image outputs where the detector's session left them.

Why: through the numpy Backend interface (runtime/sparse.py with ``Backend.infer``) the detector's per-image tensors
(fpn_s4, fpn_s8, fpn_s16, attn_keys, lay1_image, memory_mask: about 15 MB per 800 x 1066 image in fp32) are copied
out of ONNX Runtime into numpy and handed back in; with the CUDA or TensorRT provider that is GPU -> host -> GPU.
Here they stay OrtValues on the session's device (``OnnxRuntimeBackend.infer_bound``) and are bound to the mask
session as they are. What selection needs (logits, boxes) and ``hs`` (the kept queries' rows are gathered on the host:
Q x hidden floats per image) come back as numpy; ``hs_kept`` and ``image_index`` go in, the kept masks come back.

The same code runs on the CPU provider (the OrtValues then live in host memory), so the CPU tests exercise the path
the GPU takes; the selection and the result are runtime/sparse.py's ``run_query_sparse``, so the outputs are those
of the numpy hand-off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend, OrtTensor
from runtime.contract import PER_IMAGE_INPUTS
from runtime.errors import PansegError
from runtime.postprocess import ModelOutputs
from runtime.sparse import QuerySelector, run_query_sparse


class OnnxRuntimePair:
    """A query-sparse detector session and its mask session on one device (both owned by the caller)."""

    def __init__(self, detector: OnnxRuntimeBackend, masks: OnnxRuntimeBackend) -> None:
        if detector.device_location != masks.device_location:
            raise PansegError(f"{masks.path}: the mask graph runs on {':'.join(map(str, masks.device_location))}, its "
                              f"detector {detector.path} on {':'.join(map(str, detector.device_location))}; the pair "
                              "shares tensors and needs one device")
        self.detector, self.masks = detector, masks

    def run(self, feeds: Mapping[str, np.ndarray], threshold: float, is_thing: Mapping[int, bool] | None = None,
            nms_iou: float | None = None, select: QuerySelector | None = None) -> ModelOutputs:
        """runtime.sparse.run_query_sparse's contract, with the per-image tensors handed over as OrtValues."""
        return run_query_sparse(self._run_detector, self._run_masks, feeds, threshold, is_thing, nms_iou, select)

    def _run_detector(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]
                      ) -> dict[str, np.ndarray | OrtTensor]:
        return self.detector.infer_bound(feeds, outputs, keep=PER_IMAGE_INPUTS)

    def _run_masks(self, feeds: Mapping[str, np.ndarray | OrtTensor], outputs: Sequence[str]
                   ) -> dict[str, np.ndarray | OrtTensor]:
        return self.masks.infer_bound(feeds, outputs)

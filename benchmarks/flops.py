"""FLOPs of one model call, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the eager forward.

FlopCounterMode counts the matrix multiplications and convolutions (mm, bmm, addmm, convolution, attention) at the
shapes that really ran, 2 FLOPs per multiply-add; elementwise work (norms, softmax, activations) is not counted, so
the count is a slight underestimate, the usual convention for "model FLOPs".

A query-sparse export runs the mask head only on the queries above the threshold. Every query's mask costs the same
(same shapes), so its FLOPs are the detector's plus the all-query mask FLOPs scaled by kept / all queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from runtime.postprocess import select_queries


@dataclass(frozen=True)
class CallFlops:
    """FLOPs of one batched call: the full model (every query's mask) and the query-sparse pair."""

    full: int
    sparse: int
    kept_queries: int
    all_queries: int


def _counted(fn) -> tuple[int, object]:  # noqa: ANN001 - any zero-argument callable
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return int(counter.get_total_flops()), result


@torch.no_grad()
def count_call_flops(model: nn.Module, images: Tensor, mask: Tensor, threshold: float) -> CallFlops:
    """FLOPs of ``model(images, mask)``; for a panoptic model (``forward_detector``/``forward_masks``) also the
    query-sparse cost with the queries ``select_queries`` keeps at ``threshold``."""
    if not hasattr(model, "forward_detector"):
        flops, _ = _counted(lambda: model(images, mask))
        return CallFlops(flops, flops, 0, 0)
    detector_flops, detector = _counted(lambda: model.forward_detector(images, mask))
    mask_flops, _ = _counted(lambda: model.forward_masks(detector))
    logits = detector["pred_logits"].numpy()
    kept = sum(int(select_queries(image_logits, threshold)[0].size) for image_logits in logits)
    queries = logits.shape[0] * logits.shape[1]
    return CallFlops(full=detector_flops + mask_flops, sparse=detector_flops + round(mask_flops * kept / queries),
                     kept_queries=kept, all_queries=queries)

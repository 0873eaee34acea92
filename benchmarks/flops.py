"""FLOPs of one model call per stage, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the eager modules.

FlopCounterMode counts the matrix multiplications and convolutions (mm, bmm, addmm, convolution, attention) at the
shapes that really ran, 2 FLOPs per multiply-add; elementwise work (norms, softmax, activations) is not counted, so
the count is a slight underestimate, the usual convention for "model FLOPs".

Stages (``STAGES``), each counted on its own piece of DETRsegm at the batch's real input shape:

- ``backbone``: the CNN (``detr.backbone``);
- ``transformer``: the input projection, encoder, decoder, class and box heads (the rest of ``forward_detector``'s
  detr part);
- ``mask_per_image``: the mask head's work done once per image: the 1x1 FPN adapters and the attention keys
  (``k_linear`` on the encoder memory); for the query-sparse export also the image-feature half of the factorized
  first 3x3 conv (export/onnx/sparse.py moves it into the detector graph), which eager and the full graph recompute
  for every query (their concatenated ``lay1`` input) and so count in the per-query part;
- ``mask_queries``: the per-query mask head (attention maps, conv/GroupNorm stack) x the number of masks computed.
  Every query's mask costs the same (same shapes, no cross-query op), so it is counted once per query and multiplied.

Eager and detr's single graph compute every query's mask (masks = batch x queries); the query-sparse pair computes
only the queries ``select_queries`` kept in the run. So the sparse total is exactly "detector + kept / all x mask
head", with the detector and mask head as the sparse export splits them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from export.onnx.sparse import MaskGraph, lay1_image_part
from runtime.postprocess import select_queries

STAGES = ("backbone", "transformer", "mask_per_image", "mask_queries")
STAGE_TITLES = {"backbone": "backbone", "transformer": "transformer + heads", "mask_per_image": "mask head per image",
                "mask_queries": "mask head per query x masks"}
STAGE_DESCRIPTIONS = {
    "backbone": "the CNN backbone (detr.backbone)",
    "transformer": "input projection, encoder, decoder, class and box heads",
    "mask_per_image": "once per image: FPN adapters + attention keys (k_linear on the memory); query-sparse also the "
                      "image-feature half of the factorized first conv (lay1), which eager/full redo per query",
    "mask_queries": "per query: attention maps + conv/GroupNorm stack (eager/full: all of lay1; query-sparse: its "
                    "attention-map half), times the masks computed (eager/full: all queries; sparse: kept ones)",
}


@dataclass(frozen=True)
class StageFlops:
    """One way of running the model on a batch, split by stage; the mask head per query is for one query."""

    backbone: int
    transformer: int
    mask_per_image: int
    mask_per_query: int

    def at(self, masks: int) -> dict[str, int]:
        """Per-stage FLOPs when ``masks`` query masks are computed, plus their ``total``."""
        stages = {"backbone": self.backbone, "transformer": self.transformer, "mask_per_image": self.mask_per_image,
                  "mask_queries": self.mask_per_query * masks}
        return {**stages, "total": sum(stages.values())}


@dataclass(frozen=True)
class CallFlops:
    """A batch's FLOPs both ways: ``full`` (eager and detr's single graph) and ``sparse`` (the query-sparse pair;
    None for a detection-only model, which has no mask head)."""

    batch: int
    all_queries: int  # batch x num_queries: the masks a full model computes
    full: StageFlops
    sparse: StageFlops | None

    def breakdown(self, kind: str, kept: int) -> dict[str, int]:
        """Per-stage FLOPs of a ``kind`` ("full" or "sparse") backend whose run kept ``kept`` queries in the batch."""
        if kind == "full" or self.sparse is None:
            return {**self.full.at(self.all_queries), "masks": self.all_queries}
        return {**self.sparse.at(kept), "masks": kept}

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "all_queries": self.all_queries, "full": asdict(self.full),
                "sparse": None if self.sparse is None else asdict(self.sparse)}


def _counted(fn: Callable[[], Any]) -> tuple[int, Any]:
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return int(counter.get_total_flops()), result


def _per_query(flops: int, queries: int, what: str) -> int:
    if flops % queries:
        raise RuntimeError(f"{what}: {flops} FLOPs for {queries} queries is not a whole number per query")
    return flops // queries


def attention_keys(model: nn.Module, memory: Tensor) -> Tensor:
    """The attention maps' key projection of the encoder memory (k_linear as a 1x1 conv, as MHAttentionMap does)."""
    k_linear = model.bbox_attention.k_linear
    return F.conv2d(memory, k_linear.weight[:, :, None, None], k_linear.bias)


@torch.no_grad()
def count_call_flops(model: nn.Module, images: Tensor, mask: Tensor) -> CallFlops:
    """Per-stage FLOPs of ``model(images, mask)`` (see the module docstring). Each piece runs once under
    FlopCounterMode; the per-query mask head runs on one query per image (eager) and one query (sparse)."""
    model = model.eval()
    detr = getattr(model, "detr", model)
    backbone, (features, _, _) = _counted(lambda: detr.backbone(images, mask))
    if not hasattr(model, "forward_detector"):
        total, _ = _counted(lambda: model(images, mask))
        return CallFlops(images.shape[0], 0, StageFlops(backbone, total - backbone, 0, 0), None)
    detector, d = _counted(lambda: model.forward_detector(images, mask))
    adapters, _ = _counted(lambda: model.mask_head.adapt([features[2], features[1], features[0]]))
    transformer = detector - backbone - adapters
    keys_flops, keys = _counted(lambda: attention_keys(model, d["memory"]))
    lay1_flops, lay1_image = _counted(lambda: lay1_image_part(model, d["src_proj"]))
    hs = d["hs"]
    batch, queries = hs.shape[:2]
    # eager's forward_masks recomputes the keys inside the attention map: one query per image, keys taken out
    eager_masks, _ = _counted(lambda: model.forward_masks(d, hs[:, :1]))
    eager_per_query = _per_query(eager_masks - keys_flops, batch, "eager mask head")
    sparse_per_query, _ = _counted(lambda: MaskGraph(model)(
        hs[0, :1], torch.zeros(1, dtype=torch.long), keys, d["memory_mask"], lay1_image, d["fpn_s16"], d["fpn_s8"],
        d["fpn_s4"]))
    return CallFlops(batch=batch, all_queries=batch * queries,
                     full=StageFlops(backbone, transformer, adapters + keys_flops, eager_per_query),
                     sparse=StageFlops(backbone, transformer, adapters + keys_flops + lay1_flops, sparse_per_query))


def kept_queries(logits: np.ndarray | Tensor, threshold: float) -> int:
    """Queries ``select_queries`` keeps at ``threshold`` in a batch of logits [B, Q, C+1], summed over the batch."""
    array = logits.detach().cpu().numpy() if isinstance(logits, Tensor) else np.asarray(logits)
    return sum(int(select_queries(image_logits, threshold)[0].size) for image_logits in array)

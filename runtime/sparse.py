"""Query-sparse panoptic inference: detector graph -> query selection -> mask graph on the kept queries only.

The export (export/onnx/sparse.py) writes two graphs: ``model.onnx`` (the detector, run once per batch) and a mask
graph named in the detector's metadata (key ``query_sparse``). ``runtime.model.load_model`` loads both;
``PanopticModel.run`` calls :func:`run_query_sparse`, which decides here, on the detector's logits, which queries are
kept (``select_queries``: detr's threshold rule, optionally with box NMS) and computes only their masks. What it
returns (``ModelOutputs``: per image the ``KeptQueries`` with their masks) is what ``segment_kept`` turns into the
panoptic result without selecting again, so the result is the one the full model (all queries' masks) gives: the mask
of a query depends on no other query.

Batches: the kept (image, query) pairs of all images are flattened into one mask-graph call, with ``image_index``
telling the graph whose per-image tensors to use, so images with different kept counts need no padding and no
per-image calls; when no image keeps anything the mask graph is not run at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.contract import (
    DETECTOR_OUTPUTS,
    FPN_S4,
    HS,
    HS_KEPT,
    IMAGE_INDEX,
    KEY_QUERY_SPARSE,
    MASK_GRAPH_OUTPUT,
    PER_IMAGE_INPUTS,
    PRED_BOXES,
    PRED_LOGITS,
)
from runtime.errors import PansegError
from runtime.postprocess import KeptQueries, ModelOutputs, select_queries

# (feeds, output names) -> outputs. The detector's per-image outputs need not be numpy: anything with a ``shape``
# that the mask run takes back (runtime/backends/onnxruntime_pair.py hands over ONNX Runtime's own tensors).
RunGraph = Callable[[dict[str, Any], list[str]], Mapping[str, Any]]
# One image's Q x (C+1) logits and Q x 4 boxes -> (kept query indices ascending, their scores, their labels).
QuerySelector = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def mask_graph_file(metadata: Mapping[str, Any], source: str = "model") -> str | None:
    """The mask graph's file name from the detector's (decoded) metadata; None for a single-graph model."""
    entry = metadata.get(KEY_QUERY_SPARSE)
    if entry is None:
        return None
    name = entry.get("mask_graph") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise PansegError(f"{source}: metadata {KEY_QUERY_SPARSE!r} must name the mask graph file (a plain file name "
                          f"next to the model), got {entry!r}")
    return name


def mask_graph_path(engine_path: str | os.PathLike, name: str) -> Path:
    """The detector ``engine_path``'s mask graph ``name`` (from :func:`mask_graph_file`): next to it, and present."""
    engine_path = Path(engine_path)
    path = engine_path.with_name(name)
    if not path.is_file():
        raise PansegError(f"{engine_path}: its mask graph {path} is missing (the export writes both files; keep "
                          "them together)")
    return path


def kept_pairs(keep: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image kept query indices -> flat (image_index, query_index), image by image in query order."""
    image_index = np.concatenate([np.full(k.size, i, np.int64) for i, k in enumerate(keep)] or [np.zeros(0, np.int64)])
    query_index = np.concatenate([np.asarray(k, np.int64) for k in keep] or [np.zeros(0, np.int64)])
    return image_index, query_index


def mask_graph_feeds(detector_outputs: Mapping[str, Any], image_index: np.ndarray,
                     query_index: np.ndarray) -> dict[str, Any]:
    """The mask graph's inputs for the kept (image, query) pairs of a batch, from the detector's outputs."""
    feeds = {HS_KEPT: np.ascontiguousarray(detector_outputs[HS][image_index, query_index]), IMAGE_INDEX: image_index}
    feeds.update({name: detector_outputs[name] for name in PER_IMAGE_INPUTS})
    return feeds


def kept_mask_feeds(detector_outputs: Mapping[str, np.ndarray], select: QuerySelector) -> dict[str, np.ndarray]:
    """The mask graph's real inputs: the detector's outputs, each image keeping the queries ``select`` picks."""
    keep = [select(logits, boxes)[0] for logits, boxes in
            zip(detector_outputs[PRED_LOGITS], detector_outputs[PRED_BOXES], strict=True)]
    return mask_graph_feeds(detector_outputs, *kept_pairs(keep))


def run_query_sparse(run_detector: RunGraph, run_masks: RunGraph, feeds: Mapping[str, np.ndarray],
                     threshold: float, is_thing: Mapping[int, bool] | None = None,
                     nms_iou: float | None = None, select: QuerySelector | None = None) -> ModelOutputs:
    """Detector on the batch, select_queries per image (optionally with box NMS among things, which then also saves
    the dropped duplicates' masks), one mask-graph call on every kept query (none if none).

    ``select`` replaces the selection rule (``threshold``, ``is_thing`` and ``nms_iou`` are then unused): the
    benchmark keeps a fixed number of queries per image with it (runtime/bench.py)."""
    det = run_detector(dict(feeds), list(DETECTOR_OUTPUTS))
    logits = det[PRED_LOGITS]
    if select is None:
        selected = [select_queries(image_logits, threshold, boxes, is_thing, nms_iou)
                    for image_logits, boxes in zip(logits, det[PRED_BOXES], strict=True)]
    else:
        selected = [select(image_logits, boxes) for image_logits, boxes in zip(logits, det[PRED_BOXES], strict=True)]
    keep = [s[0] for s in selected]
    image_index, query_index = kept_pairs(keep)
    mask_hw = det[FPN_S4].shape[-2:]
    if image_index.size:
        flat = run_masks(mask_graph_feeds(det, image_index, query_index), [MASK_GRAPH_OUTPUT])[MASK_GRAPH_OUTPUT]
        if flat.shape != (image_index.size, *mask_hw):
            raise PansegError(f"mask graph returned {tuple(flat.shape)} for {image_index.size} kept queries, expected "
                              f"{(image_index.size, *mask_hw)}")
        bounds = np.cumsum([0] + [k.size for k in keep])
        masks = [flat[bounds[i]:bounds[i + 1]] for i in range(len(keep))]
    else:
        masks = [np.zeros((0, *mask_hw), np.float32) for _ in keep]
    kept = [KeptQueries(*selection, image_masks) for selection, image_masks in zip(selected, masks, strict=True)]
    return ModelOutputs(logits, det[PRED_BOXES], kept)

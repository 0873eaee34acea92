"""Calibration data for static INT8 quantization, and the cache of calibrated ranges.

Why the runtime's preprocessing: the ranges must be those of the tensors the deployed model sees, so each image goes
through ``runtime.preprocess`` at the model's own resize policy, alone (batch 1, no padding). The mask graph is
calibrated on what the fp32 detector really gives it for those images: the per-image tensors and the ``hs`` rows of
the queries kept at the model's threshold; an image keeping fewer than ``MIN_KEPT`` queries (untrained or unsure
models) contributes its ``MIN_KEPT`` best-scoring object queries instead, so every image calibrates the mask head.

The cache: calibrating runs the whole model on every image, the sweep quantizes many times, and a rerun should not
pay again. ONNX Runtime's ``quantize_static`` reads and writes a ranges file (``calibration_cache_path``); we name that
file by a digest of everything the ranges depend on: the graph file, the images, the method and the target.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from runtime.cache_dir import cache_root
from runtime.contract import DETECTOR_OUTPUTS, IMAGES, PADDING_MASK
from runtime.filehash import file_sha256
from runtime.model_info import ModelInfo
from runtime.postprocess import select_queries, softmax
from runtime.preprocess import load_and_preprocess, pad_batch
from runtime.sparse import mask_graph_feeds

MIN_KEPT = 4  # mask-graph calibration: at least this many queries per image (top-k when fewer pass the threshold)
CACHE_FOLDER = "calibration"

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class CalibrationImages:
    """The calibration images, preprocessed as inference does, and their digest (for the cache and the metadata)."""

    paths: tuple[Path, ...]
    batches: tuple[tuple[np.ndarray, np.ndarray], ...]  # per image: (1 x 3 x H x W images, 1 x H x W padding mask)
    digest: str  # sha256 over the images' own sha256s, in order

    @classmethod
    def load(cls, paths: Sequence[Path], info: ModelInfo) -> CalibrationImages:
        batches = []
        for path in paths:
            array, _ = load_and_preprocess(path, info.resize.size, info.resize.max_size)
            batches.append(pad_batch([array]))
        digest = hashlib.sha256("".join(file_sha256(p) for p in paths).encode()).hexdigest()
        return cls(tuple(paths), tuple(batches), digest)


class FeedsReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a list of ready feeds (one per image)."""

    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self.feeds = list(feeds)
        self._next: Iterator[Feeds] = iter(self.feeds)

    def get_next(self) -> Feeds | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self.feeds[start_index:end_index])


def graph_input_names(path: Path) -> set[str]:
    return {value.name for value in onnx.load(str(path), load_external_data=False).graph.input}


def model_feeds(path: Path, images: CalibrationImages) -> list[Feeds]:
    """The detector's (or single graph's) inputs for each calibration image."""
    wants_mask = PADDING_MASK in graph_input_names(path)
    return [{IMAGES: im, **({PADDING_MASK: mask} if wants_mask else {})} for im, mask in images.batches]


def kept_for_calibration(logits: np.ndarray, threshold: float) -> np.ndarray:
    """The queries an image keeps at ``threshold``; its ``MIN_KEPT`` best object queries when fewer pass."""
    keep = select_queries(logits, threshold)[0]
    if keep.size >= MIN_KEPT:
        return keep
    object_scores = softmax(logits)[:, :-1].max(-1)
    return np.sort(np.argsort(-object_scores, kind="stable")[:MIN_KEPT])


def mask_graph_calibration_feeds(detector: Path, images: CalibrationImages, threshold: float) -> list[Feeds]:
    """The mask graph's inputs for each calibration image, from the fp32 detector's real outputs."""
    session = ort.InferenceSession(str(detector), providers=["CPUExecutionProvider"])
    feeds = []
    for image_feeds in model_feeds(detector, images):
        out = dict(zip(DETECTOR_OUTPUTS, session.run(list(DETECTOR_OUTPUTS), image_feeds), strict=True))
        keep = kept_for_calibration(out[DETECTOR_OUTPUTS[0]][0], threshold)
        feeds.append(mask_graph_feeds(out, np.zeros(keep.size, np.int64), keep.astype(np.int64)))
    return feeds


def cache_key(graph: Path, images: CalibrationImages, method: str, target: str) -> str:
    """What calibrated ranges depend on, as one digest: the graph's bytes, the images, the method, the target."""
    key = {"graph_sha256": file_sha256(graph), "images_sha256": images.digest, "method": method, "target": target,
           "ort": ort.__version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def cache_path(graph: Path, images: CalibrationImages, method: str, target: str,
               folder: Path | None = None) -> Path:
    """The ranges file for this calibration (in ``folder``, by default the panseg cache's calibration folder)."""
    folder = folder if folder is not None else cache_root() / CACHE_FOLDER
    return folder / f"{graph.stem}-{cache_key(graph, images, method, target)}.json"

"""Write a precision variant of an exported model: the graph(s), quantized or converted, with their metadata.

A query-sparse pair becomes a pair: ``OUT.onnx`` (the detector, whose metadata names ``OUT.masks.onnx`` and its
sha256, as the export writes them) and ``OUT.masks.onnx``; a single graph (``--full``) becomes one file. Both carry
the source's metadata plus the ``precision`` entry (runtime/contract.py KEY_PRECISION).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from export.onnx.metadata import read_metadata, write_metadata
from export.precision.blocks import nodes_in, quantizable_nodes
from export.precision.calibration import CalibrationImages, cache_path, mask_graph_calibration_feeds, model_feeds
from export.precision.fp16 import softmax_inputs, to_fp16
from export.precision.int8 import Int8Flavour, quantize_graph
from runtime.atomic import atomic_write_bytes
from runtime.contract import FP16, INT8, KEY_MASK_GRAPH_OF, KEY_PRECISION, KEY_QUERY_SPARSE, mask_graph_name
from runtime.errors import PansegError
from runtime.model_info import ModelInfo
from runtime.sparse import mask_graph_file


@dataclass
class Source:
    """The fp32 model a variant is made from: its graph file(s) and decoded metadata."""

    path: Path
    mask_path: Path | None
    info: ModelInfo
    metadata: dict[str, Any]
    blocks: dict[str, list[str]]  # block -> quantizable nodes of the detector (or single graph)
    mask_blocks: dict[str, list[str]] = field(default_factory=dict)  # same, of the mask graph

    @classmethod
    def open(cls, path: Path, info: ModelInfo) -> Source:
        metadata = read_metadata(path)
        if KEY_PRECISION in metadata and metadata[KEY_PRECISION].get("precision") != "fp32":
            raise PansegError(f"{path}: is already a {metadata[KEY_PRECISION].get('precision')} variant; make "
                              "variants from the fp32 export")
        mask_name = mask_graph_file(metadata, str(path))
        mask_path = path.with_name(mask_name) if mask_name else None
        graph = onnx.load(str(path), load_external_data=False)
        mask_blocks = {}
        if mask_path is not None:
            mask_blocks = quantizable_nodes(onnx.load(str(mask_path), load_external_data=False), in_mask_graph=True)
        return cls(path, mask_path, info, metadata, quantizable_nodes(graph), mask_blocks)

    @property
    def block_names(self) -> list[str]:
        return list(dict.fromkeys([*self.blocks, *self.mask_blocks]))


@dataclass
class Int8Plan:
    """Everything an INT8 variant depends on (besides the source)."""

    flavour: Int8Flavour
    method: str
    images: CalibrationImages
    cache_folder: Path | None = None

    def caches(self, source: Source) -> list[Path]:
        graphs = [source.path] + ([source.mask_path] if source.mask_path else [])
        return [cache_path(g, self.images, self.method, self.flavour.target, self.cache_folder) for g in graphs]


def precision_entry(precision: str, float_nodes: Sequence[str], plan: Int8Plan | None = None,
                    float_blocks: Sequence[str] = (), mask_graph_queries: str | None = None,
                    float_attention_nodes: Sequence[str] = ()) -> dict[str, Any]:
    """The metadata's precision entry; fp16: ``float_nodes`` are the nodes kept in float32 by operator type,
    ``float_attention_nodes`` the mask graph's attention logits, kept too (export/precision/fp16.py)."""
    entry: dict[str, Any] = {"precision": precision, "float_nodes": list(float_nodes)}
    if float_attention_nodes:
        entry["float_attention_nodes"] = list(float_attention_nodes)
    if plan is not None:
        entry.update(int8_target=plan.flavour.target, flavour=plan.flavour.to_json(), float_blocks=list(float_blocks),
                     calibration={"method": plan.method, "images": len(plan.images.paths),
                                  "images_sha256": plan.images.digest, "preprocessing": "runtime.preprocess at the "
                                  "model's resize policy, batch 1", "mask_graph_queries": mask_graph_queries})
    return entry


def _write_pair(detector: onnx.ModelProto, masks: onnx.ModelProto | None, source: Source, entry: Mapping[str, Any],
                output: Path) -> list[Path]:
    """Write the variant under ``output`` (and its mask graph beside it), metadata rewritten; the files written."""
    metadata = {**source.metadata, KEY_PRECISION: dict(entry)}
    written = []
    if masks is not None:
        mask_path = output.with_name(mask_graph_name(output))
        mask_meta = {**read_metadata(masks_source_metadata(source)), KEY_PRECISION: dict(entry),
                     KEY_MASK_GRAPH_OF: output.name}
        write_metadata(masks, mask_meta)
        data = masks.SerializeToString()
        atomic_write_bytes(mask_path, data)
        metadata[KEY_QUERY_SPARSE] = {**metadata[KEY_QUERY_SPARSE], "mask_graph": mask_path.name,
                                      "mask_graph_sha256": hashlib.sha256(data).hexdigest()}
        written.append(mask_path)
    write_metadata(detector, metadata)
    atomic_write_bytes(output, detector.SerializeToString())
    return [output, *written]


def masks_source_metadata(source: Source) -> onnx.ModelProto:
    return onnx.load(str(source.mask_path), load_external_data=False)


def write_fp16(source: Source, output: Path) -> list[Path]:
    """The fp16 variant; a query-sparse pair's mask graph keeps its attention logits in float32 as well."""
    detector, kept = to_fp16(onnx.load(str(source.path)))
    masks, attention = None, []
    if source.mask_path is not None:
        mask_graph = onnx.load(str(source.mask_path))
        attention = softmax_inputs(mask_graph)
        masks, mask_kept = to_fp16(mask_graph, keep=attention)
        kept += mask_kept
    return _write_pair(detector, masks, source, precision_entry(FP16, kept, float_attention_nodes=attention), output)


def write_int8(source: Source, plan: Int8Plan, float_blocks: Sequence[str], output: Path,
               scratch: Path) -> tuple[list[Path], bool]:
    """Quantize every block but ``float_blocks``; (files written, whether all calibrations came from the cache)."""
    caches = plan.caches(source)
    hits = [quantize_graph(source.path, scratch / "detector.onnx", model_feeds(source.path, plan.images),
                           plan.flavour, plan.method, caches[0], nodes_in(float_blocks, source.blocks))]
    float_nodes = nodes_in(float_blocks, source.blocks)
    masks = None
    if source.mask_path is not None:
        feeds = [] if caches[1].is_file() else mask_graph_calibration_feeds(source.path, plan.images,
                                                                           source.info.threshold)
        excluded = nodes_in(float_blocks, source.mask_blocks)
        hits.append(quantize_graph(source.mask_path, scratch / "masks.onnx", feeds, plan.flavour, plan.method,
                                   caches[1], excluded))
        float_nodes += excluded
        masks = onnx.load(str(scratch / "masks.onnx"))
    rule = (f"kept at the model's threshold {source.info.threshold}, or the best-scoring object queries when fewer "
            "than 4 pass" if source.mask_path is not None else None)
    entry = precision_entry(INT8, float_nodes, plan, float_blocks, rule)
    return _write_pair(onnx.load(str(scratch / "detector.onnx")), masks, source, entry, output), all(hits)

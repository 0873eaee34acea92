"""What the runtime needs to use an exported model, stored inside the .onnx (``metadata_props``, values JSON).

One file is the whole deployable: categories, the preprocessing (normalization, resize policy), the default score
threshold, the input/output layouts and where the weights came from. ONNX Runtime returns these through
``InferenceSession.get_modelmeta().custom_metadata_map``; runtime/backends exposes them as ``Backend.metadata()``.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from typing import Any

import onnx

from runtime.atomic import dumps_json
from runtime.categories import Category, categories_to_json
from runtime.contract import (
    DETECTION,
    KEY_CATEGORIES,
    KEY_CATEGORIES_SOURCE,
    KEY_INPUTS,
    KEY_KIND,
    KEY_MASK_GRAPH_OF,
    KEY_MASK_STRIDE,
    KEY_NORMALIZATION,
    KEY_NUM_CLASSES,
    KEY_NUM_QUERIES,
    KEY_OUTPUTS,
    KEY_QUERY_SPARSE,
    KEY_RESIZE,
    KEY_THRESHOLD,
    KEY_VERSION,
    PANOPTIC,
    QUERY_SPARSE_VERSION,
    SINGLE_GRAPH_VERSION,
    TENSORS,
)
from runtime.errors import PansegError
from runtime.metadata_props import decode_metadata_props
from runtime.postprocess import DEFAULT_THRESHOLD, MASK_STRIDE
from runtime.preprocess import DEFAULT_MAX_SIZE, DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD
from train.models.config import DETRConfig

EXPORTER = "torch.onnx.export (TorchScript tracer, dynamo=False)"



def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensor_info(shapes: Mapping[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"dtype": TENSORS[n].dtype, "shape": list(shapes[n]), "layout": TENSORS[n].layout,
                "description": TENSORS[n].description} for n in names}


def build_metadata(*, config: DETRConfig, categories: Mapping[int, Category], categories_source: str,
                   shapes: Mapping[str, Any], input_names: list[str], output_names: list[str],
                   checkpoint_name: str, checkpoint_sha256: str, opset: int, simplified: bool,
                   threshold: float = DEFAULT_THRESHOLD, resize_size: int = DEFAULT_SIZE,
                   resize_max_size: int | None = DEFAULT_MAX_SIZE) -> dict[str, Any]:
    """The metadata as plain values (each becomes one JSON string in ``metadata_props``)."""
    meta: dict[str, Any] = {
        KEY_VERSION: SINGLE_GRAPH_VERSION,
        KEY_KIND: PANOPTIC if config.masks else DETECTION,
        KEY_CATEGORIES: categories_to_json(categories),
        KEY_CATEGORIES_SOURCE: categories_source,
        KEY_NORMALIZATION: {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        KEY_RESIZE: {"size": resize_size, "max_size": resize_max_size},
        KEY_THRESHOLD: threshold,
        KEY_NUM_QUERIES: config.num_queries,
        KEY_NUM_CLASSES: config.num_classes,
        KEY_INPUTS: tensor_info(shapes, input_names),
        KEY_OUTPUTS: tensor_info(shapes, output_names),
        "source_checkpoint": {"file": checkpoint_name, "sha256": checkpoint_sha256},
        "exporter": {"tool": EXPORTER, "opset": opset, "simplified_with": "onnxslim" if simplified else None,
                     "torch": _version("torch"), "onnx": _version("onnx"), "onnxslim": _version("onnxslim")},
        "panseg_version": _version("panseg"),
        "model_config": config.to_dict(),
    }
    if config.masks:
        meta[KEY_MASK_STRIDE] = MASK_STRIDE
    return meta


def add_query_sparse(meta: dict[str, Any], mask_graph_file: str, mask_graph_sha256: str,
                     mask_shapes: Mapping[str, Any], mask_inputs: list[str], mask_outputs: list[str]) -> None:
    """Mark a detector graph's metadata as query-sparse: the runtime finds its mask graph by this file name."""
    meta[KEY_VERSION] = QUERY_SPARSE_VERSION
    meta[KEY_QUERY_SPARSE] = {
        "mask_graph": mask_graph_file,
        "mask_graph_sha256": mask_graph_sha256,
        KEY_INPUTS: tensor_info(mask_shapes, mask_inputs),
        KEY_OUTPUTS: tensor_info(mask_shapes, mask_outputs),
        "selection": "runtime: select_queries on pred_logits at the run's threshold, then the mask graph on the kept "
                     "(image, query) pairs of the whole batch",
    }


def mask_graph_metadata(detector_file: str, opset: int) -> dict[str, Any]:
    """The mask graph's own metadata: only what it is part of (it is never run on its own)."""
    return {KEY_MASK_GRAPH_OF: detector_file, "exporter": {"tool": EXPORTER, "opset": opset}}


def write_metadata(model: onnx.ModelProto, metadata: Mapping[str, Any]) -> None:
    """Replace the model's ``metadata_props`` by ``metadata``, every value JSON-encoded."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = dumps_json(value)


def read_metadata(model_or_path: onnx.ModelProto | str | os.PathLike) -> dict[str, Any]:
    """``metadata_props`` of a model (or .onnx file), every value JSON-decoded."""
    if isinstance(model_or_path, onnx.ModelProto):
        model, source = model_or_path, "model"
    else:
        source = os.fspath(model_or_path)
        try:
            model = onnx.load(source, load_external_data=False)
        except (OSError, ValueError) as exc:
            raise PansegError(f"{source}: not a readable ONNX model ({exc})") from exc
    return decode_metadata_props(((e.key, e.value) for e in model.metadata_props), source)

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
from runtime.errors import PansegError
from runtime.metadata_props import decode_metadata_props
from runtime.postprocess import DEFAULT_THRESHOLD, MASK_STRIDE
from runtime.preprocess import DEFAULT_MAX_SIZE, DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD
from train.models.config import DETRConfig

METADATA_VERSION = 1
EXPORTER = "torch.onnx.export (TorchScript tracer, dynamo=False)"

_DESCRIPTIONS = {
    "images": "float32, normalized with 'normalization' after the 'resize' policy; zero on padding",
    "padding_mask": "bool, True on padding (detr's NestedTensor mask); images padded at the bottom/right",
    "pred_logits": "class logits; the last one is 'no object'; index = category id",
    "pred_boxes": "cx, cy, w, h in [0, 1] of each image's unpadded region",
    "pred_masks": "mask logits at stride 4 of the padded batch: ceil(H/4) x ceil(W/4)",
    "hs": "last decoder layer's output per query (query-sparse detector: the mask graph's hs_kept rows)",
    "attn_keys": "key projection (bbox_attention.k_linear) of the encoder memory, at the backbone's stride 32",
    "memory_mask": "bool, True on padding, at the backbone's stride 32",
    "lay1_image": "image-feature half of the mask head's first conv plus its bias (same for every query)",
    "fpn_s16": "mask head adapter1 on the stride-16 backbone feature",
    "fpn_s8": "mask head adapter2 on the stride-8 backbone feature",
    "fpn_s4": "mask head adapter3 on the stride-4 backbone feature (its size is the mask size)",
    "hs_kept": "hs rows of the kept queries, image by image",
    "image_index": "int64, the batch image each kept query belongs to",
    "masks_kept": "mask logits of the kept queries at stride 4 of the padded batch",
}
_LAYOUTS = {
    "images": "NCHW", "padding_mask": "NHW", "pred_logits": "N,queries,classes+1", "pred_boxes": "N,queries,4",
    "pred_masks": "N,queries,H/4,W/4", "hs": "N,queries,D", "attn_keys": "NCHW", "memory_mask": "NHW",
    "lay1_image": "NCHW", "fpn_s16": "NCHW", "fpn_s8": "NCHW", "fpn_s4": "NCHW", "hs_kept": "kept,D",
    "image_index": "kept", "masks_kept": "kept,H/4,W/4",
}
_DTYPES = {"padding_mask": "bool", "memory_mask": "bool", "image_index": "int64"}
SPARSE_METADATA_VERSION = 2  # a query-sparse model: older runtimes cannot run it and must say so


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensor_info(shapes: Mapping[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"dtype": _DTYPES.get(n, "float32"), "shape": list(shapes[n]), "layout": _LAYOUTS[n],
                "description": _DESCRIPTIONS[n]} for n in names}


def build_metadata(*, config: DETRConfig, categories: Mapping[int, Category], categories_source: str,
                   shapes: Mapping[str, Any], input_names: list[str], output_names: list[str],
                   checkpoint_name: str, checkpoint_sha256: str, opset: int, simplified: bool,
                   threshold: float = DEFAULT_THRESHOLD, resize_size: int = DEFAULT_SIZE,
                   resize_max_size: int | None = DEFAULT_MAX_SIZE) -> dict[str, Any]:
    """The metadata as plain values (each becomes one JSON string in ``metadata_props``)."""
    meta: dict[str, Any] = {
        "panseg_metadata_version": METADATA_VERSION,
        "model_kind": "panoptic" if config.masks else "detection",
        "categories": categories_to_json(categories),
        "categories_source": categories_source,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "resize": {"size": resize_size, "max_size": resize_max_size},
        "threshold": threshold,
        "num_queries": config.num_queries,
        "num_classes": config.num_classes,
        "inputs": tensor_info(shapes, input_names),
        "outputs": tensor_info(shapes, output_names),
        "source_checkpoint": {"file": checkpoint_name, "sha256": checkpoint_sha256},
        "exporter": {"tool": EXPORTER, "opset": opset, "simplified_with": "onnxslim" if simplified else None,
                     "torch": _version("torch"), "onnx": _version("onnx"), "onnxslim": _version("onnxslim")},
        "panseg_version": _version("panseg"),
        "model_config": config.to_dict(),
    }
    if config.masks:
        meta["mask_stride"] = MASK_STRIDE
    return meta


def add_query_sparse(meta: dict[str, Any], mask_graph_file: str, mask_graph_sha256: str,
                     mask_shapes: Mapping[str, Any], mask_inputs: list[str], mask_outputs: list[str]) -> None:
    """Mark a detector graph's metadata as query-sparse: the runtime finds its mask graph by this file name."""
    meta["panseg_metadata_version"] = SPARSE_METADATA_VERSION
    meta["query_sparse"] = {
        "mask_graph": mask_graph_file,
        "mask_graph_sha256": mask_graph_sha256,
        "inputs": tensor_info(mask_shapes, mask_inputs),
        "outputs": tensor_info(mask_shapes, mask_outputs),
        "selection": "runtime: select_queries on pred_logits at the run's threshold, then the mask graph on the kept "
                     "(image, query) pairs of the whole batch",
    }


def mask_graph_metadata(detector_file: str, opset: int) -> dict[str, Any]:
    """The mask graph's own metadata: only what it is part of (it is never run on its own)."""
    return {"panseg_mask_graph_of": detector_file, "exporter": {"tool": EXPORTER, "opset": opset}}


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

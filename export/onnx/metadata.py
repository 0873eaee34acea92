"""What the runtime needs to use an exported model, stored inside the .onnx (``metadata_props``, values JSON).

One file is the whole deployable: categories, the preprocessing (normalization, resize policy), the default score
threshold, the input/output layouts and where the weights came from. ONNX Runtime returns these through
``InferenceSession.get_modelmeta().custom_metadata_map``; runtime/backends exposes them as ``Backend.metadata()``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Mapping
from typing import Any

import onnx

from runtime.atomic import dumps_json
from runtime.categories import Category, categories_to_json
from runtime.errors import PansegError
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
}
_LAYOUTS = {
    "images": "NCHW", "padding_mask": "NHW", "pred_logits": "N,queries,classes+1", "pred_boxes": "N,queries,4",
    "pred_masks": "N,queries,H/4,W/4",
}
_DTYPES = {"padding_mask": "bool"}


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
    out: dict[str, Any] = {}
    for entry in model.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError as exc:
            raise PansegError(f"{source}: metadata {entry.key!r} is not JSON ({exc})") from exc
    return out

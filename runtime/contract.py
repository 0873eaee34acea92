"""The exported model's contract: tensor names, metadata keys and versions, file suffixes, image extensions.

One place for every name that the export writes and the runtime reads, so the two cannot drift apart: the export,
its verification, the backends, the benchmarks and the tests import these constants, and no tensor name appears as
a string literal anywhere else. It lives at the bottom layer (runtime) because the runtime must not import export.

Two graph layouts exist (see export/onnx/graph.py and export/onnx/sparse.py):

- the single graph (``--full``, detr's model): ``images, padding_mask -> pred_logits, pred_boxes, pred_masks``;
- the query-sparse pair (the default for panoptic models): a detector ``images, padding_mask -> pred_logits,
  pred_boxes, hs`` plus the mask head's per-image inputs, and a mask graph that computes masks only for the kept
  (image, query) pairs: ``hs_kept, image_index, <per-image inputs> -> masks_kept``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------- tensor names

IMAGES = "images"
PADDING_MASK = "padding_mask"
PRED_LOGITS = "pred_logits"
PRED_BOXES = "pred_boxes"
PRED_MASKS = "pred_masks"
HS = "hs"
ATTN_KEYS = "attn_keys"
MEMORY_MASK = "memory_mask"
LAY1_IMAGE = "lay1_image"
FPN_S16 = "fpn_s16"
FPN_S8 = "fpn_s8"
FPN_S4 = "fpn_s4"
HS_KEPT = "hs_kept"
IMAGE_INDEX = "image_index"
MASKS_KEPT = "masks_kept"

MODEL_INPUTS = (IMAGES, PADDING_MASK)  # of the single graph and of the query-sparse detector
DETECTION_OUTPUTS = (PRED_LOGITS, PRED_BOXES)
PANOPTIC_OUTPUTS = (PRED_LOGITS, PRED_BOXES, PRED_MASKS)  # the single graph's, in this order
PER_IMAGE_INPUTS = (ATTN_KEYS, MEMORY_MASK, LAY1_IMAGE, FPN_S16, FPN_S8, FPN_S4)  # detector -> mask graph, per image
DETECTOR_OUTPUTS = (PRED_LOGITS, PRED_BOXES, HS, *PER_IMAGE_INPUTS)  # the query-sparse detector's, in this order
MASK_GRAPH_INPUTS = (HS_KEPT, IMAGE_INDEX, *PER_IMAGE_INPUTS)
MASK_GRAPH_OUTPUT = MASKS_KEPT
MASK_GRAPH_OUTPUTS = (MASKS_KEPT,)
KEPT_DIM = "kept"  # the mask graph's dynamic first dimension: kept (image, query) pairs of the whole batch


@dataclass(frozen=True)
class TensorDoc:
    """What the export writes into the model's metadata about one tensor (its shape comes from the graph)."""

    dtype: str
    layout: str
    description: str


TENSORS: dict[str, TensorDoc] = {
    IMAGES: TensorDoc("float32", "NCHW", "float32, normalized with 'normalization' after the 'resize' policy; zero on "
                      "padding"),
    PADDING_MASK: TensorDoc("bool", "NHW", "bool, True on padding (detr's NestedTensor mask); images padded at the "
                            "bottom/right"),
    PRED_LOGITS: TensorDoc("float32", "N,queries,classes+1", "class logits; the last one is 'no object'; index = "
                           "category id"),
    PRED_BOXES: TensorDoc("float32", "N,queries,4", "cx, cy, w, h in [0, 1] of each image's unpadded region"),
    PRED_MASKS: TensorDoc("float32", "N,queries,H/4,W/4", "mask logits at stride 4 of the padded batch: ceil(H/4) x "
                          "ceil(W/4)"),
    HS: TensorDoc("float32", "N,queries,D", "last decoder layer's output per query (query-sparse detector: the mask "
                  "graph's hs_kept rows)"),
    ATTN_KEYS: TensorDoc("float32", "NCHW", "key projection (bbox_attention.k_linear) of the encoder memory, at the "
                         "backbone's stride 32"),
    MEMORY_MASK: TensorDoc("bool", "NHW", "bool, True on padding, at the backbone's stride 32"),
    LAY1_IMAGE: TensorDoc("float32", "NCHW", "image-feature half of the mask head's first conv plus its bias (same "
                          "for every query)"),
    FPN_S16: TensorDoc("float32", "NCHW", "mask head adapter1 on the stride-16 backbone feature"),
    FPN_S8: TensorDoc("float32", "NCHW", "mask head adapter2 on the stride-8 backbone feature"),
    FPN_S4: TensorDoc("float32", "NCHW", "mask head adapter3 on the stride-4 backbone feature (its size is the mask "
                      "size)"),
    HS_KEPT: TensorDoc("float32", "kept,D", "hs rows of the kept queries, image by image"),
    IMAGE_INDEX: TensorDoc("int64", "kept", "int64, the batch image each kept query belongs to"),
    MASKS_KEPT: TensorDoc("float32", "kept,H/4,W/4", "mask logits of the kept queries at stride 4 of the padded "
                          "batch"),
}

# ---------------------------------------------------------------------------------------------- metadata

# Every value is stored JSON-encoded: in the .onnx's metadata_props, and in a TensorRT plan's side file.
KEY_VERSION = "panseg_metadata_version"
KEY_KIND = "model_kind"
KEY_CATEGORIES = "categories"
KEY_CATEGORIES_SOURCE = "categories_source"
KEY_NORMALIZATION = "normalization"
KEY_RESIZE = "resize"
KEY_THRESHOLD = "threshold"
KEY_NUM_QUERIES = "num_queries"
KEY_NUM_CLASSES = "num_classes"
KEY_INPUTS = "inputs"
KEY_OUTPUTS = "outputs"
KEY_MASK_STRIDE = "mask_stride"
KEY_QUERY_SPARSE = "query_sparse"  # on a query-sparse detector: {"mask_graph": file name, ...}
KEY_MASK_GRAPH_OF = "panseg_mask_graph_of"  # on a mask graph: the detector it belongs to
KEY_TENSORRT = "tensorrt"  # a plan's side file: the build section (runtime/trt_sidecar.py)

SINGLE_GRAPH_VERSION = 1
QUERY_SPARSE_VERSION = 2  # older runtimes cannot run a query-sparse model and must say so
SUPPORTED_VERSION = QUERY_SPARSE_VERSION

PANOPTIC = "panoptic"
DETECTION = "detection"
DEFAULT_MASK_STRIDE = 4  # the mask head's output stride (ResNet layer1 = ceil(H / 4))

# ---------------------------------------------------------------------------------------------- files

ONNX_SUFFIX = ".onnx"
TENSORRT_SUFFIXES = (".plan", ".engine")  # what the TensorRT backend runs; the first is what the build writes
SIDECAR_SUFFIX = ".json"  # model.plan -> model.plan.json (TensorRT plans have no room for metadata)
MASK_GRAPH_INFIX = ".masks"  # model.onnx -> model.masks.onnx, model.plan -> model.masks.plan

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm"})


def is_tensorrt_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in TENSORRT_SUFFIXES


def sidecar_path(engine_path: str | Path) -> Path:
    """Where engines without room for metadata (TensorRT plans) keep it: ``model.plan`` -> ``model.plan.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def mask_graph_name(detector_path: str | Path) -> str:
    """The file name the export gives a detector's mask graph: ``model.onnx`` -> ``model.masks.onnx``."""
    detector_path = Path(detector_path)
    return f"{detector_path.stem}{MASK_GRAPH_INFIX}{detector_path.suffix}"

# ---------------------------------------------------------------------------------------------- precision

# A reduced-precision variant (python -m export.precision) records what it is under this key, on the detector (or
# single graph) and on its mask graph: {"precision": ..., "int8_target": ..., "calibration": {...}, ...}. A model
# without the key is float32 (every export before precision variants existed).
KEY_PRECISION = "precision"
FP32 = "fp32"
FP16 = "fp16"
INT8 = "int8"
PRECISIONS = (FP32, FP16, INT8)
INT8_TENSORRT = "tensorrt"  # S8S8: symmetric int8 activations and weights, zero points 0 (what TensorRT builds)
INT8_CPU = "cpu"  # U8S8: uint8 activations, int8 weights (what CPU integer kernels run fastest; not for TensorRT)
INT8_TARGETS = (INT8_TENSORRT, INT8_CPU)

"""FP16 variant of one graph: float16 weights and compute, float32 where DETR overflows or loses accuracy.

Kept in float32, by ONNX operator type (every instance in DETR's graphs is one of the listed layers):
``LayerNormalization`` (the transformer's norms), ``Softmax`` (every attention softmax, MHAttentionMap's included)
and ``InstanceNormalization`` (how the mask head's GroupNorm exports). Inputs and outputs stay float32, so the
runtime feeds and reads the variant exactly like the fp32 model.
"""

from __future__ import annotations

import logging

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

FLOAT32_OPS = ("LayerNormalization", "Softmax", "InstanceNormalization")


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The float16 graph, and the names of the nodes left in float32."""
    kept = [node.name for node in model.graph.node if node.op_type in FLOAT32_OPS]
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        converted = convert_float_to_float16(model, keep_io_types=True,
                                             op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FLOAT32_OPS])
    finally:
        logging.getLogger().setLevel(quiet)
    return converted, kept

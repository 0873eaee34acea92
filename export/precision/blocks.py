"""The blocks of a DETR graph that the sensitivity sweep keeps in float one at a time, found from ONNX node names.

Why names: torch.onnx names each node after the module that made it (``/backbone/backbone.0/body/layer2/...``,
``/transformer/decoder/...``; ``/model/...`` in the single graph), so a node's block needs no mapping file. The mask
head spans both graphs of a query-sparse pair (the detector's FPN adapters and attention keys, the whole mask graph).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import onnx

# Operators that the INT8 variants quantize (QDQ on their inputs): where the time is, as measured in the issue.
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")

BACKBONE_STAGES = tuple(f"backbone.layer{k}" for k in range(1, 5))
ENCODER, DECODER, HEADS, MASK_HEAD = "encoder", "decoder", "heads", "mask head"
BLOCKS = (*BACKBONE_STAGES, ENCODER, DECODER, HEADS, MASK_HEAD)  # in the order of the forward pass

_STAGE = re.compile(r"/body/(layer[1-4])/")


def block_of(node_name: str, in_mask_graph: bool = False) -> str:
    """The block a node belongs to (every node of a mask graph is in the mask head)."""
    if in_mask_graph:
        return MASK_HEAD
    name = node_name.removeprefix("/model")
    stage = _STAGE.search(name)
    if stage:
        return f"backbone.{stage.group(1)}"
    if name.startswith("/backbone/backbone.0/body/"):  # the stem (conv1, bn1) runs with layer1
        return BACKBONE_STAGES[0]
    if name.startswith(("/transformer/encoder/", "/input_proj/")):
        return ENCODER
    if name.startswith("/transformer/decoder/"):
        return DECODER
    if name.startswith(("/class_embed/", "/bbox_embed/")):
        return HEADS
    return MASK_HEAD  # adapters, bbox_attention, the mask head's convs; whatever else is left


def quantizable_nodes(model: onnx.ModelProto, in_mask_graph: bool = False) -> dict[str, list[str]]:
    """Block -> names of the nodes the INT8 variant would quantize in it (blocks without any are left out)."""
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            found.setdefault(block_of(node.name, in_mask_graph), []).append(node.name)
    return {block: found[block] for block in BLOCKS if block in found}


def nodes_in(blocks: Iterable[str], by_block: dict[str, list[str]]) -> list[str]:
    """The node names of ``blocks`` in one graph's ``quantizable_nodes`` table."""
    return [name for block in blocks for name in by_block.get(block, [])]

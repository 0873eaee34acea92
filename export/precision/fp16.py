"""FP16 variant of one graph: float16 weights and compute, float32 where DETR overflows or loses accuracy.

Kept in float32, by ONNX operator type (every instance in DETR's graphs is one of the listed layers):
``LayerNormalization`` (the transformer's norms), ``Softmax`` (every attention softmax, MHAttentionMap's included)
and ``InstanceNormalization`` (how the mask head's GroupNorm exports). Inputs and outputs stay float32, so the
runtime feeds and reads the variant exactly like the fp32 model.

ONNX Runtime's converter stores every tensor as float16, also between two nodes it keeps in float32: it casts the
first node's output to float16 and back (``Cast``, ``Cast``), so a float32 chain was rounded to float16 at every
step anyway: in DETR's detector each decoder layer's last LayerNorm into the decoder's final LayerNorm (6 round
trips), and every step of whatever else is kept (``keep``). :func:`drop_float16_round_trips` removes those pairs, so
what is kept in float32 stays float32 from node to node.

The mask graph also keeps its attention logits in float32 (:func:`softmax_inputs`: the query projection, the dot
products with the keys and the padding mask, everything its Softmax reads; a few small nodes): they are
exponentiated, so float16's relative error becomes an absolute error in the maps that decide every mask pixel.
Measured on the R50 export (4 photos at 800, against fp32): category agreement 0.9806 -> 0.9907; the whole mask graph
in float32 gives 0.9938 (benchmarks/results/precision-r50/README.md).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

FLOAT32_OPS = ("LayerNormalization", "Softmax", "InstanceNormalization")
BLOCKED_OPS = (*DEFAULT_OP_BLOCK_LIST, *FLOAT32_OPS)


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def float32_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors of ``model`` (graph inputs, initializers, and values ONNX shape inference types)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    found = {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return found | {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}


def drop_float16_round_trips(model: onnx.ModelProto) -> int:
    """Remove every ``Cast(to float16) -> Cast(to float32)`` round trip of a float32 tensor: its float32 consumers
    read the tensor itself. Returns the number of Casts removed."""
    float32 = float32_tensors(model)
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    graph_outputs = {o.name for o in graph.output}
    replace: dict[str, str] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if _cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        down = producer.get(node.input[0])
        if down is None or _cast_to(down) != onnx.TensorProto.FLOAT16 or down.input[0] not in float32:
            continue
        if node.output[0] in graph_outputs:  # keep the output's name: cast float32 to float32, a copy
            node.input[0] = down.input[0]
        else:
            replace[node.output[0]] = down.input[0]
            dropped.add(id(node))
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in replace:
                node.input[k] = replace[name]
    consumers: dict[str, int] = defaultdict(int)
    for node in graph.node:
        if id(node) not in dropped:
            for name in node.input:
                consumers[name] += 1
    unused = {id(n) for n in graph.node if _cast_to(n) == onnx.TensorProto.FLOAT16 and id(n) not in dropped
              and n.input[0] in float32 and not consumers[n.output[0]] and n.output[0] not in graph_outputs}
    kept = [n for n in graph.node if id(n) not in dropped | unused]
    gone = {o for n in graph.node if id(n) in dropped | unused for o in n.output}
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    values = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(values)
    return removed


def softmax_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes the graph's Softmax nodes read from, directly or not, in graph order (not the Softmax)."""
    producer = {output: node for node in model.graph.node for output in node.output}
    found: set[str] = set()
    pending = [name for node in model.graph.node if node.op_type == "Softmax" for name in node.input]
    while pending:
        node = producer.get(pending.pop())
        if node is not None and node.name not in found:
            found.add(node.name)
            pending.extend(node.input)
    return [node.name for node in model.graph.node if node.name in found]


def to_fp16(model: onnx.ModelProto, keep: Sequence[str] = ()) -> tuple[onnx.ModelProto, list[str]]:
    """The float16 graph, and the names of the nodes left in float32 by operator type; the nodes named in ``keep``
    are left in float32 too."""
    kept = [node.name for node in model.graph.node if node.op_type in FLOAT32_OPS]
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(BLOCKED_OPS),
                                             node_block_list=list(keep))
    finally:
        logging.getLogger().setLevel(quiet)
    drop_float16_round_trips(converted)
    return converted, kept

"""export/precision/fp16.py, graphs read back node by node: what is kept in float32 stays float32 between two kept
nodes (ONNX Runtime's converter alone rounds it to float16 and back; checked against a float64 numpy reference), and
the mask graph keeps its attention logits in float32."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import torch
from conftest import TINY_CONFIG as TINY
from conftest import separable
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.float16 import convert_float_to_float16

from export.onnx.graph import ShapePolicy, sample_inputs
from export.onnx.sparse import DetectorGraph, export_sparse_model, trace_mask_inputs
from export.precision.fp16 import BLOCKED_OPS, float32_tensors, softmax_inputs, to_fp16
from runtime.contract import DETECTOR_OUTPUTS, MASK_GRAPH_INPUTS
from train.models import build_model

ROWS, WIDTH = 4, 64


def _norm_softmax_matmul() -> onnx.ModelProto:
    """x -> LayerNormalization -> Softmax -> y (both kept in float32, one after the other); the norm's output also
    goes through Mul and MatMul (float16) to z."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, WIDTH).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.uniform(-1, 1, WIDTH).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal((WIDTH, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(-1, 1, WIDTH).astype(np.float32), "factor")]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="norm", axis=-1),
             helper.make_node("Mul", ["n", "factor"], ["scaled"], name="scale"),
             helper.make_node("Softmax", ["n"], ["y"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["scaled", "w"], ["z"], name="matmul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, WIDTH]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [ROWS, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _reference(x: np.ndarray, model: onnx.ModelProto) -> np.ndarray:
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    x = x.astype(np.float64)
    n = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * weights["gamma"] + weights["beta"]
    e = np.exp(n - n.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(["y", "z"], session.run(["y", "z"], {"x": x}), strict=True))


def _round_trips(model: onnx.ModelProto) -> list[str]:
    """Cast(to float32) nodes reading a Cast(to float16) of a float32 tensor."""
    producer = {o: n for n in model.graph.node for o in n.output}
    float32 = float32_tensors(model)

    def cast_to(node: onnx.NodeProto | None) -> int | None:
        return None if node is None or node.op_type != "Cast" else node.attribute[0].i

    return [n.name for n in model.graph.node if cast_to(n) == TensorProto.FLOAT
            and cast_to(producer.get(n.input[0])) == TensorProto.FLOAT16
            and producer[n.input[0]].input[0] in float32]


def test_float32_nodes_read_and_write_float32_without_a_float16_round_trip():
    source = _norm_softmax_matmul()
    x = (1000.0 + np.random.default_rng(1).standard_normal((ROWS, WIDTH))).astype(np.float32)  # fp16 step: 0.5
    logging.getLogger().setLevel(logging.ERROR)
    plain = convert_float_to_float16(_norm_softmax_matmul(), keep_io_types=True, op_block_list=list(BLOCKED_OPS))
    converted, kept = to_fp16(source)
    assert kept == ["norm", "softmax"]
    assert _round_trips(plain) and not _round_trips(converted)
    reference = _reference(x, source)
    float32 = _run(source, x)
    float32_error = np.abs(float32["y"] - reference).max()  # float32's own rounding, the best an fp32 node can do
    plain_error = np.abs(_run(plain, x)["y"] - reference).max()
    fixed = _run(converted, x)
    assert np.abs(fixed["y"] - float32["y"]).max() < 1e-7
    assert np.abs(fixed["y"] - reference).max() <= 1.01 * float32_error < 0.1 * plain_error
    # the float16 part is still float16: the MatMul's weight and input
    types = {t.name: t.data_type for t in converted.graph.initializer}
    assert types["w"] == TensorProto.FLOAT16
    scaled = float32_tensors(converted)
    matmul = next(n for n in converted.graph.node if n.op_type == "MatMul")
    assert matmul.input[0] not in scaled
    assert 0 < np.abs(fixed["z"] - float32["z"]).max() < 0.05 * np.abs(float32["z"]).max()


def test_mask_graph_keeps_its_attention_logits_in_float32_and_its_convolutions_in_float16():
    torch.manual_seed(0)
    model = separable(build_model(TINY)).eval()
    _, masks, _, _ = export_sparse_model(model, ShapePolicy())
    attention = softmax_inputs(masks)
    ops = {n.name: n.op_type for n in masks.graph.node}
    assert {"Gemm", "MatMul", "Where"} <= {ops[name] for name in attention}
    assert "Softmax" not in {ops[name] for name in attention} and "Conv" not in {ops[name] for name in attention}
    converted, kept = to_fp16(masks, keep=attention)
    inferred = onnx.shape_inference.infer_shapes(converted).graph
    float16 = {v.name for v in [*inferred.value_info, *inferred.input]
               if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    float16 |= {t.name for t in converted.graph.initializer if t.data_type == TensorProto.FLOAT16}
    nodes = {n.name: n for n in converted.graph.node}
    for name in attention:
        assert not float16.intersection([*nodes[name].input, *nodes[name].output]), name
    assert "hs_kept" in float32_tensors(converted) and nodes["/q_linear/Gemm"].input[0] == "hs_kept"
    weights = {t.name: t.data_type for t in converted.graph.initializer}
    convs = [n for n in converted.graph.node if n.op_type == "Conv"]
    assert convs and all(weights[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    assert kept == [n.name for n in masks.graph.node if n.op_type in ("Softmax", "InstanceNormalization")]
    with torch.no_grad():
        traced = dict(zip(DETECTOR_OUTPUTS, DetectorGraph(model)(*sample_inputs(ShapePolicy())), strict=True))
    feeds = {name: t.numpy() for name, t in zip(MASK_GRAPH_INPUTS, trace_mask_inputs(traced), strict=True)}
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
           for m in (masks, converted)]
    assert np.abs(run[1] - run[0]).max() < 0.05 * np.abs(run[0]).max()

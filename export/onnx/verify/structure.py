"""Structural checks of the exported graph(s), before any number is compared.

``onnx.checker`` with full (strict) shape inference; no float64 anywhere (TensorRT has none); every operator parseable
by TensorRT (export/trt_operators.py); the inputs meant dynamic really symbolic, and a mask graph's kept-query
dimension too. Each check is "ok" or the problem, so the report can show all of them at once.
"""

from __future__ import annotations

import onnx

from export.onnx.graph import ShapePolicy
from export.trt_operators import check_tensorrt_compatible
from runtime.contract import HS_KEPT, IMAGE_INDEX, IMAGES, KEPT_DIM, MASK_GRAPH_OUTPUTS, PADDING_MASK
from runtime.errors import PansegError

# (batch, height, width) axes of each model input
_INPUT_AXES = {IMAGES: (0, 2, 3), PADDING_MASK: (0, 1, 2)}


def float64_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of float64 initializers, constants, casts and typed values (TensorRT has no float64)."""
    double = onnx.TensorProto.DOUBLE
    found = [t.name for t in model.graph.initializer if t.data_type == double]
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == double:
                found.append(node.name or node.op_type)
            if node.op_type == "Cast" and attr.name == "to" and attr.i == double:
                found.append(node.name or "Cast")
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if value.type.tensor_type.elem_type == double:
            found.append(value.name)
    return found


def structural_checks(model: onnx.ModelProto, policy: ShapePolicy) -> dict[str, str]:
    """The checks of one graph: name -> "ok" or the problem."""
    checks: dict[str, str] = {}
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        checks["onnx_checker"] = "ok"
    except Exception as exc:  # noqa: BLE001 - checker and inference raise several types
        checks["onnx_checker"] = " ".join(str(exc).split())[:300]
        inferred = model
    doubles = float64_tensors(inferred)
    checks["no_float64"] = "ok" if not doubles else f"float64 in {', '.join(doubles[:5])}"
    try:
        check_tensorrt_compatible(model)
        checks["tensorrt_operators"] = "ok"
    except PansegError as exc:
        checks["tensorrt_operators"] = str(exc)
    wanted = (policy.dynamic_batch, policy.dynamic_size, policy.dynamic_size)
    frozen = []
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, dynamic in zip(_INPUT_AXES.get(value.name, ()), wanted, strict=False):
            if dynamic and axis < len(dims) and not dims[axis].dim_param:
                frozen.append(f"{value.name}[{axis}]")
    checks["dynamic_dims"] = "ok" if not frozen else f"fixed but meant dynamic: {', '.join(sorted(set(frozen)))}"
    return checks


def kept_dims_frozen(mask_graph: onnx.ModelProto) -> list[str]:
    """Mask-graph tensors whose kept-query dimension (axis 0) is not symbolic."""
    frozen = []
    for value in list(mask_graph.graph.input) + list(mask_graph.graph.output):
        if value.name in (HS_KEPT, IMAGE_INDEX, *MASK_GRAPH_OUTPUTS):
            dims = value.type.tensor_type.shape.dim
            if not dims or dims[0].dim_param != KEPT_DIM:
                frozen.append(value.name)
    return frozen


def graph_checks(model: onnx.ModelProto, mask_graph: onnx.ModelProto | None, policy: ShapePolicy) -> dict[str, str]:
    """The checks of a single graph, or of a query-sparse pair: a check is ok only if ok for both graphs, and the
    mask graph's kept-query dimension must be symbolic."""
    checks = structural_checks(model, policy)
    if mask_graph is None:
        return checks
    theirs = structural_checks(mask_graph, policy)
    merged = {}
    for name in checks:
        problems = [f"{graph}: {found[name]}" for graph, found in (("detector", checks), ("mask graph", theirs))
                    if found[name] != "ok"]
        merged[name] = "ok" if not problems else "; ".join(problems)
    frozen = kept_dims_frozen(mask_graph)
    if frozen:
        problem = f"mask graph: kept-query dimension fixed in {', '.join(frozen)}"
        merged["dynamic_dims"] = problem if merged["dynamic_dims"] == "ok" else f"{merged['dynamic_dims']}; {problem}"
    return merged

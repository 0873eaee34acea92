"""The TensorRT operator table and the check that an ONNX graph only uses what TensorRT parses."""

import fnmatch
import json
import tomllib
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from export.trt_operators import (
    MAX_LISTED,
    TABLE_RESOURCE,
    OperatorTable,
    check_before_build,
    check_tensorrt_compatible,
    load_supported_operators,
    unsupported_nodes,
)
from runtime.errors import PansegError

# Ops a DETR panoptic export uses (backbone, transformer, sine positional encoding, mask head, post-processing).
DETR_OPS = [
    "Conv", "MatMul", "Gemm", "Softmax", "LayerNormalization", "GroupNormalization", "Resize", "Relu", "Add",
    "Reshape", "Transpose", "Concat", "Gather", "Slice", "Shape", "Cast", "Sigmoid", "ReduceMean", "Where", "Expand",
    "Unsqueeze", "Tile", "CumSum", "Sin", "Cos", "Pow", "Div", "Sqrt", "Not", "Equal", "Range", "ConstantOfShape",
]
# Names in onnx-tensorrt's matrix that are not (or no longer) in ONNX's own operator registry.
LEGACY_OPS = {"ImageScaler", "ParametricSoftplus", "ScaledTanh"}
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])


def make_model(nodes, opset=17, functions=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", [X], [Y])
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def relu_add(name_prefix="n"):
    return [helper.make_node("Relu", ["x"], ["r"], name=f"{name_prefix}_relu"),
            helper.make_node("Add", ["r", "x"], ["y"], name=f"{name_prefix}_add")]


@pytest.fixture(scope="module")
def table() -> OperatorTable:
    return load_supported_operators()


# --- the table -------------------------------------------------------------------------------------------------

def test_table_is_sane(table):
    assert table.tensorrt_version.startswith("10.")
    assert "onnx-tensorrt" in table.source
    assert len(table.supported) > 100
    assert len(table.unsupported) > 10
    assert not set(table.supported) & table.unsupported
    low, high = table.opset_range
    assert low <= 17 <= high  # the opset torch.onnx exports by default


def test_table_is_shipped_with_export_in_the_wheel():
    # Only export reads the table, so it is export's package data; pyproject must cover it or an install lacks it.
    assert (Path(__file__).parents[1] / "export" / TABLE_RESOURCE).is_file()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["export"]
    assert any(fnmatch.fnmatch(TABLE_RESOURCE, pattern) for pattern in patterns)


def test_table_names_are_real_onnx_ops(table):
    # Catches transcription typos: every name must be an op in ONNX's own registry (or a known legacy one).
    registry = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain == ""}
    unknown = (set(table.supported) | table.unsupported) - registry - LEGACY_OPS
    assert not unknown


@pytest.mark.parametrize("op", DETR_OPS)
def test_detr_ops_are_supported(table, op):
    assert table.is_supported(op)


def test_restrictions_are_kept(table):
    assert "axes" in table.supported["Unsqueeze"]
    assert table.supported["Add"] == ""


def test_bad_table_file_is_a_clear_error(tmp_path):
    path = tmp_path / "ops.json"
    path.write_text(json.dumps({"tensorrt_version": "10.0", "opset_range": [20, 9], "supported": {},
                                "unsupported": []}))
    with pytest.raises(PansegError, match=rf"{path.name}.*opset_range"):
        load_supported_operators(path)
    with pytest.raises(PansegError, match="no such file"):
        load_supported_operators(tmp_path / "missing.json")


# --- the check -------------------------------------------------------------------------------------------------

def test_supported_model_passes(table):
    model = make_model(relu_add())
    assert unsupported_nodes(model, table) == []
    check_tensorrt_compatible(model, table)  # must not raise


def test_unsupported_default_op_fails(table):
    assert "Unique" in table.unsupported  # the table marks it N, so this test means something
    nodes = [helper.make_node("Unique", ["x"], ["u"], name="dedupe"), *relu_add()]
    model = make_model(nodes)
    assert unsupported_nodes(model, table) == [("dedupe", "Unique", "")]
    with pytest.raises(PansegError, match=r"'dedupe' \(Unique, unsupported\)"):
        check_tensorrt_compatible(model, table)


def test_op_missing_from_table_fails(table):
    model = make_model([helper.make_node("NotARealOp", ["x"], ["z"], name="mystery"), *relu_add()])
    with pytest.raises(PansegError, match=r"'mystery' \(NotARealOp, not in TensorRT's operator table\)"):
        check_tensorrt_compatible(model, table)


def test_custom_domain_op_fails(table):
    # Even an op named like a supported one is a plugin when it lives in another domain.
    nodes = [helper.make_node("Relu", ["x"], ["c"], name="fused", domain="com.example"), *relu_add()]
    model = make_model(nodes, extra_opsets=[helper.make_opsetid("com.example", 1)])
    assert unsupported_nodes(model, table) == [("fused", "Relu", "com.example")]
    with pytest.raises(PansegError, match=r"'fused' \(com\.example::Relu, custom domain\)"):
        check_tensorrt_compatible(model, table)


def test_ai_onnx_domain_counts_as_default(table):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r", domain="ai.onnx")]
    assert unsupported_nodes(make_model(nodes), table) == []


def test_nodes_inside_subgraphs_are_checked(table):
    out = helper.make_tensor_value_info("u", TensorProto.FLOAT, None)
    then_branch = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="inner")], "then", [], [out])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["u"], name="ok")], "else", [], [out])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    nodes = [helper.make_node("Constant", [], ["c"], name="cond", value=cond),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)]
    found = unsupported_nodes(make_model(nodes), table)
    assert found == [("branch/then_branch/inner", "Unique", "")]


def test_local_functions_are_checked_only_when_called(table):
    def function(name, op):
        return helper.make_function("local", name, ["a"], ["b"], [helper.make_node(op, ["a"], ["b"], name="body")],
                                    [helper.make_opsetid("", 17)])

    ok, bad = function("ok_fn", "Relu"), function("bad_fn", "Unique")
    local = [helper.make_opsetid("local", 1)]
    call_ok = [helper.make_node("ok_fn", ["x"], ["y"], name="call", domain="local")]
    # A call to a local function is not a custom op; an unused bad function is never parsed by TensorRT.
    assert unsupported_nodes(make_model(call_ok, functions=[ok, bad], extra_opsets=local), table) == []
    call_bad = [helper.make_node("bad_fn", ["x"], ["y"], name="call", domain="local")]
    found = unsupported_nodes(make_model(call_bad, functions=[ok, bad], extra_opsets=local), table)
    assert found == [("local.bad_fn/body", "Unique", "")]


@pytest.mark.parametrize("opset", [8, 25])
def test_opset_out_of_range_fails(table, opset):
    low, high = table.opset_range
    assert not low <= opset <= high
    with pytest.raises(PansegError, match=rf"opset {opset}, outside TensorRT .*range {low}-{high}"):
        check_tensorrt_compatible(make_model(relu_add(), opset=opset), table)


def test_another_installed_release_turns_the_tables_doubts_into_a_warning(table):
    """Opsets outside the table's range and ops it refuses only warn when another TensorRT release is installed
    (its parser decides at build time); with none installed, or the table's own release, they still refuse."""
    opset = table.opset_range[1] + 1
    model = make_model([helper.make_node("Unique", ["x"], ["y"], name="uniq")], opset=opset)
    warning = check_before_build(model, table, installed=lambda: "99.1.0")
    assert warning is not None and "\n" not in warning
    assert f"opset {opset}" in warning and "'uniq' (Unique, unsupported)" in warning
    assert f"TensorRT {table.tensorrt_version}'s operator table doubts it" in warning
    assert "TensorRT 99.1.0 is installed, so its ONNX parser decides" in warning
    assert check_before_build(make_model(relu_add()), table, installed=lambda: "99.1.0") is None
    for installed in (None, table.tensorrt_version, f"{table.tensorrt_version}.7.3"):
        with pytest.raises(PansegError, match=r"would refuse it .*'uniq' \(Unique, unsupported\)"):
            check_before_build(model, table, installed=lambda v=installed: v)


def test_many_offenders_are_counted_not_all_listed(table):
    count = MAX_LISTED + 5
    nodes = [helper.make_node("Unique", ["x"], [f"u{i}"], name=f"u{i}") for i in range(count)]
    with pytest.raises(PansegError) as info:
        check_tensorrt_compatible(make_model([*nodes, *relu_add()]), table)
    message = str(info.value)
    assert f"{count} node(s)" in message and "and 5 more" in message and "\n" not in message
    assert f"'u{MAX_LISTED - 1}'" in message and f"'u{MAX_LISTED}'" not in message


def test_checks_a_file_by_path(tmp_path, table):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(make_model(relu_add()), good)
    onnx.save(make_model([helper.make_node("Unique", ["x"], ["u"], name="dedupe"), *relu_add()]), bad)
    check_tensorrt_compatible(good, table)
    with pytest.raises(PansegError, match=rf"{bad.name}: .*'dedupe'"):
        check_tensorrt_compatible(str(bad), table)


def test_unreadable_files_are_clear_errors(tmp_path, table):
    with pytest.raises(PansegError, match="missing.onnx: no such file"):
        check_tensorrt_compatible(tmp_path / "missing.onnx", table)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\x00 definitely not protobuf \x12")
    with pytest.raises(PansegError, match="junk.onnx: not a readable ONNX model"):
        check_tensorrt_compatible(junk, table)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Converting a tensor to a Python boolean")
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_real_torch_export_passes(tmp_path, table, dynamo):
    # What torch.onnx actually emits for DETR-like building blocks must pass (and be parsed from disk).
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gn, self.ln = torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.LayerNorm(8)

        def forward(self, x):
            y = torch.nn.functional.interpolate(self.gn(self.conv(x)), scale_factor=2.0, mode="bilinear")
            y = self.ln(y.flatten(2).transpose(1, 2))
            return y.softmax(-1), y.sigmoid().cumsum(1)

    path = tmp_path / "block.onnx"
    torch.onnx.export(Block().eval(), (torch.rand(1, 3, 8, 8),), str(path), dynamo=dynamo, opset_version=17)
    assert unsupported_nodes(onnx.load(path), table) == []
    check_tensorrt_compatible(path, table)

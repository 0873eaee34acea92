"""TensorRT engines, the parts that run without a GPU: profile, trtexec line, side file, compatibility and shape checks,
the CLI's errors and --dry-run, and the static operator check of a real export.

Nothing here builds or runs an engine. The tests marked "plumbing" replace the ``tensorrt`` module with a recording
stub to check which TensorRT calls the builder code makes with which arguments; they say nothing about what TensorRT
would do with them (tests/test_tensorrt_gpu.py does, on a GPU).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_CONFIG
from onnx import TensorProto, helper
from PIL import Image

from export.onnx import export_checkpoint
from export.tensorrt import BuildOptions, build_engine_file, plan_engine
from export.tensorrt.__main__ import main
from export.tensorrt.build import build_plan, format_command, network_flags, trtexec_command
from export.tensorrt.masks import feature_strides
from export.tensorrt.profile import MIN_SIDE, ShapeRange, default_range, graph_inputs, resolve_range
from export.tensorrt.sidecar import engine_info, write_sidecar
from export.trt_operators import check_tensorrt_compatible, load_supported_operators, unsupported_nodes
from runtime.backends.tensorrt_backend import TensorRTBackend
from runtime.categories import categories_to_json
from runtime.contract import sidecar_path
from runtime.errors import PansegError
from runtime.preprocess import preprocess, target_size
from runtime.subcommands import bhw_type
from runtime.trt_sidecar import (
    EngineInfo,
    GpuInfo,
    TensorProfile,
    check_engine_compatible,
    check_plan_digest,
    check_shapes_in_profile,
    hardware_problem,
    read_engine_sidecar,
    read_sidecar_metadata,
    shape_outside_profile,
    version_problem,
)
from train.checkpoint import save_checkpoint
from train.models import build_model
from train.prepare.synthetic import categories as synthetic_categories

TINY = TINY_CONFIG.replace(dec_layers=1, dim_feedforward=128, num_queries=4)
A100 = GpuInfo("NVIDIA A100-SXM4-40GB", (8, 0))
A10 = GpuInfo("NVIDIA A10", (8, 6))
A6000 = GpuInfo("NVIDIA RTX A6000", (8, 6))
T4 = GpuInfo("Tesla T4", (7, 5))
L4 = GpuInfo("NVIDIA L4", (8, 9))


# ---------------------------------------------------------------- models


def synthetic_onnx(path: Path, dims: tuple = ("batch", "height", "width"), metadata: dict | None = None,
                   extra_node: onnx.NodeProto | None = None) -> Path:
    """A two-input graph with our export's input names, layouts and metadata, small enough to write in milliseconds."""
    b, h, w = dims
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [b, 3, h, w])
    mask = helper.make_tensor_value_info("padding_mask", TensorProto.BOOL, [b, h, w])
    out = helper.make_tensor_value_info("pred_masks", TensorProto.FLOAT, [b, 3, h, w])
    nodes = [helper.make_node("Identity", ["images"], ["pred_masks"], name="copy")]
    if extra_node is not None:
        nodes.append(extra_node)
    graph = helper.make_graph(nodes, "synthetic", [images, mask], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"panseg_metadata_version": 1, "resize": {"size": 800, "max_size": 1333}, "threshold": 0.85,
            "categories": [{"id": 1, "name": "thing", "isthing": 1, "color": [1, 2, 3]}],
            "inputs": {"images": {"shape": [b, 3, h, w]}, "padding_mask": {"shape": [b, h, w]}}}
    if metadata is not None:
        meta = metadata
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """A real export of a (random, tiny) DETR panoptic model, with its metadata."""
    folder = tmp_path_factory.mktemp("trt_cpu")
    torch.manual_seed(0)
    model = build_model(TINY)
    ckpt = folder / "tiny.pth"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": TINY.to_dict(),
                           "categories": categories_to_json(synthetic_categories())})
    return export_checkpoint(ckpt, folder / "tiny.onnx", run_verification=False, progress=False).path


@pytest.fixture
def onnx_path(tmp_path) -> Path:
    return synthetic_onnx(tmp_path / "model.onnx")


def _profiles(min_bhw=(1, 800, 800), opt_bhw=(1, 800, 1066), max_bhw=(1, 1333, 1333)) -> dict[str, TensorProfile]:
    def image(bhw):
        return (bhw[0], 3, bhw[1], bhw[2])

    return {"images": TensorProfile(image(min_bhw), image(opt_bhw), image(max_bhw)),
            "padding_mask": TensorProfile(min_bhw, opt_bhw, max_bhw)}


def _info(**changes) -> EngineInfo:
    fields = dict(tensorrt_version="10.15.1.29", gpu=A10, version_compatible=False, hardware_compatibility="none",
                  profile=_profiles(), onnx_file="model.onnx", onnx_sha256="ab" * 32,
                  plan_sha256=hashlib.sha256(b"plan").hexdigest(), plan_bytes=4)
    fields.update(changes)
    return EngineInfo(**fields)


# ---------------------------------------------------------------- the static check of our exported graph


def test_every_operator_of_an_exported_model_is_in_tensorrts_onnx_operator_list(tiny_export):
    model = onnx.load(str(tiny_export), load_external_data=False)
    table = load_supported_operators()
    op_types = {n.op_type for n in model.graph.node}
    assert {"Conv", "MatMul", "Softmax"} <= op_types  # it is the real network, not an empty graph
    assert sorted(op for op in op_types if not table.is_supported(op)) == []
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert unsupported_nodes(model) == []
    check_tensorrt_compatible(tiny_export)


def test_dry_run_on_a_real_export_prints_the_profile_and_the_trtexec_line(tiny_export, tmp_path, capsys):
    plan = tmp_path / "tiny.plan"
    assert main([str(tiny_export), "-o", str(plan), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "min 1x571x571, opt 1x800x1066, max 1x1335x1335" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("trtexec "))
    args = shlex.split(line)
    assert f"--onnx={tiny_export}" in args and f"--saveEngine={plan}" in args
    assert "--minShapes=images:1x3x571x571,padding_mask:1x571x571" in args
    assert "--maxShapes=images:1x3x1335x1335,padding_mask:1x1335x1335" in args
    assert "--stronglyTyped" in args
    assert not plan.exists() and not sidecar_path(plan).exists()


# ---------------------------------------------------------------- profile


parse_bhw = bhw_type(MIN_SIDE)  # the shape flags' parser (runtime/subcommands.py, shared by every command)


@pytest.mark.parametrize("text,expected", [("1x800x1333", (1, 800, 1333)), ("4X64x 96", (4, 64, 96))])
def test_shape_flags_parse_batch_height_width(text, expected):
    assert parse_bhw(text) == expected


@pytest.mark.parametrize("text,message", [("1x3x800x800", "3 numbers"), ("800x800", "3 numbers"),
                                          ("1xaxb", "expected BxHxW"), ("0x800x800", "at least"),
                                          ("1x16x800", "at least 32"), ("", "expected BxHxW")])
def test_bad_shape_flags_are_refused_with_the_reason(text, message):
    with pytest.raises(Exception, match=message):
        parse_bhw(text)


def test_default_profile_covers_portrait_and_landscape_images_of_the_resize_policy():
    shape_range = default_range({"size": 800, "max_size": 1333}, "m.onnx")
    # 571 = 1333 / (21/9); 1335: detr's rounding can overshoot max_size (e.g. 174x75 -> 575x1334)
    assert shape_range.min == (1, 571, 571) and shape_range.max == (1, 1335, 1335)
    # opt is what the runtime's own preprocessing makes of a 640 x 480 (4:3 landscape) picture
    assert shape_range.opt[1:] == preprocess(Image.new("RGB", (640, 480))).shape[1:] == (800, 1066)
    for width in range(100, 4000, 37):
        for height in (round(width * r) for r in (0.43, 0.5, 0.5625, 0.61, 0.75, 1.0, 1.33, 1.6, 1.78, 2.0, 2.33)):
            h, w = target_size(width, height, 800, 1333)
            if max(width, height) / min(width, height) <= 21 / 9:
                assert 571 <= h <= 1335 and 571 <= w <= 1335, (width, height, h, w)


def test_flags_override_defaults_and_bad_orders_name_the_flags_and_axis(onnx_path):
    plan = plan_engine(onnx_path, max_shape=(8, 1333, 1333), min_shape=(1, 512, 512))
    assert (plan.shape_range.min, plan.shape_range.opt, plan.shape_range.max) == \
        ((1, 512, 512), (1, 800, 1066), (8, 1333, 1333))
    assert plan.profiles["images"] == TensorProfile((1, 3, 512, 512), (1, 3, 800, 1066), (8, 3, 1333, 1333))
    assert plan.profiles["padding_mask"] == TensorProfile((1, 512, 512), (1, 800, 1066), (8, 1333, 1333))
    assert plan.note is None  # 512 covers 16:9 pictures (750 x 1333)
    with pytest.raises(PansegError, match=r"--min-shape 1x900x900 is above --opt-shape 1x800x1066 in height"):
        plan_engine(onnx_path, min_shape=(1, 900, 900))
    with pytest.raises(PansegError, match=r"--opt-shape 4x800x800 is above --max-shape 2x1333x1333 in batch"):
        plan_engine(onnx_path, opt_shape=(4, 800, 800), max_shape=(2, 1333, 1333))


def test_a_profile_that_refuses_16_9_pictures_says_so(onnx_path):
    h, w = target_size(1920, 1080, 800, 1333)  # a 16:9 photo
    default = plan_engine(onnx_path)
    assert default.shape_range.min[1] <= h and default.note is None
    narrow = plan_engine(onnx_path, min_shape=(1, 800, 800))
    assert h < narrow.shape_range.min[1]
    assert narrow.note is not None and f"{h} x {w}" in narrow.note


def test_dimensions_fixed_by_the_graph_are_taken_and_conflicting_flags_refused(tmp_path):
    fixed = synthetic_onnx(tmp_path / "static.onnx", dims=(2, 64, 96))
    plan = plan_engine(fixed)
    assert plan.shape_range == ShapeRange((2, 64, 96), (2, 64, 96), (2, 64, 96))
    with pytest.raises(PansegError, match="fixed batch of 2, but --max-shape 4x64x96"):
        plan_engine(fixed, max_shape=(4, 64, 96))
    batch_only = synthetic_onnx(tmp_path / "batch.onnx", dims=(1, "height", "width"))
    assert plan_engine(batch_only).shape_range.max == (1, 1335, 1335)


def test_a_resize_policy_without_a_maximum_needs_explicit_shapes(tmp_path):
    meta = {"panseg_metadata_version": 1, "resize": {"size": 800, "max_size": None}}
    model = synthetic_onnx(tmp_path / "nomax.onnx", metadata=meta)
    with pytest.raises(PansegError, match="no maximum size"):
        plan_engine(model)
    with pytest.raises(PansegError, match="no maximum size"):
        plan_engine(model, max_shape=(1, 1333, 1333))
    plan = plan_engine(model, min_shape=(1, 64, 64), opt_shape=(1, 64, 64), max_shape=(1, 96, 96))
    assert plan.profiles["padding_mask"].max == (1, 96, 96)


def test_inputs_of_other_ranks_are_refused():
    inputs = [("images", ("batch", 3, "height", "width")), ("tokens", ("batch", "n"))]
    with pytest.raises(PansegError, match="input tokens has rank 2"):
        resolve_range({}, default_range({"size": 800, "max_size": 1333}, "m"), inputs, "m.onnx")


# ---------------------------------------------------------------- trtexec


def test_trtexec_command_spells_every_option_as_trtexec_does():
    options = BuildOptions(workspace_bytes=1536 << 20, timing_cache=Path("cache dir/t.cache"),
                           builder_optimization_level=4, version_compatible=True, hardware_compatibility="same",
                           verbose=True)
    args = trtexec_command("m.onnx", "out/m.plan", _profiles(), options)
    assert args == [
        "trtexec", "--onnx=m.onnx", "--saveEngine=out/m.plan",
        "--minShapes=images:1x3x800x800,padding_mask:1x800x800",
        "--optShapes=images:1x3x800x1066,padding_mask:1x800x1066",
        "--maxShapes=images:1x3x1333x1333,padding_mask:1x1333x1333",
        "--memPoolSize=workspace:1536M", "--timingCacheFile=cache dir/t.cache", "--builderOptimizationLevel=4",
        "--stronglyTyped", "--versionCompatible", "--hardwareCompatibilityLevel=sameComputeCapability", "--verbose",
        "--skipInference"]
    assert shlex.split(format_command(args)) == args  # the printed line survives the shell
    minimal = trtexec_command("m.onnx", "m.plan", {"in:0": TensorProfile((1, 2), (1, 2), (4, 2))},
                              BuildOptions(hardware_compatibility="ampere+"))
    assert "--minShapes='in:0':1x2" in minimal and "--hardwareCompatibilityLevel=ampere+" in minimal
    assert not any(a.startswith(("--memPoolSize", "--timingCacheFile", "--builderOptimizationLevel",
                                 "--versionCompatible")) for a in minimal)


# ---------------------------------------------------------------- shapes against the profile


def test_shapes_inside_the_profile_pass_and_outside_name_the_allowed_range():
    profile = _profiles()["images"]
    assert shape_outside_profile("images", (1, 3, 800, 800), profile) is None
    assert shape_outside_profile("images", (1, 3, 1333, 1333), profile) is None
    message = shape_outside_profile("images", (1, 3, 750, 1333), profile)
    assert "axis 2 is 750, allowed 800..1333" in message and "1x3x800x800 .. 1x3x1333x1333" in message
    message = shape_outside_profile("images", (2, 3, 800, 1400), profile)
    assert "axis 0 is 2, allowed 1..1" in message and "axis 3 is 1400, allowed 800..1333" in message
    assert "rank 3" in shape_outside_profile("images", (1, 800, 800), profile)
    with pytest.raises(PansegError, match=r"^m\.plan: input padding_mask has shape 1x700x900"):
        check_shapes_in_profile({"images": (1, 3, 800, 900), "padding_mask": (1, 700, 900)}, _profiles(), "m.plan")
    check_shapes_in_profile({"images": (1, 3, 900, 900), "static": (5,)}, _profiles(), "m.plan")


# ---------------------------------------------------------------- side file


def test_side_file_round_trips_and_keeps_the_onnx_metadata_as_is(tmp_path, onnx_path):
    plan_bytes = b"\x00pure TensorRT plan bytes"
    plan_path = tmp_path / "model.plan"
    plan_path.write_bytes(plan_bytes)
    metadata = {"threshold": 0.85, "categories": [{"id": 1, "name": "a"}], "resize": {"size": 800, "max_size": 1333}}
    info = engine_info(plan=plan_bytes, onnx_path=onnx_path, onnx_sha256="cd" * 32, tensorrt_version="10.15.1.29",
                       gpu=A10, profiles=_profiles(), version_compatible=True, hardware_compatibility="ampere+",
                       builder={"workspace_bytes": 1 << 30})
    written = write_sidecar(plan_path, metadata, info)
    assert written == tmp_path / "model.plan.json"
    assert plan_path.read_bytes() == plan_bytes  # the plan itself is never touched
    strings, read_back = read_engine_sidecar(plan_path)
    assert read_back == info
    assert read_back.plan_sha256 == hashlib.sha256(plan_bytes).hexdigest() and read_back.plan_bytes == len(plan_bytes)
    assert {k: json.loads(v) for k, v in strings.items() if k != "tensorrt"} == metadata
    assert read_sidecar_metadata(plan_path) == strings  # what Backend.metadata() returns
    raw = json.loads(written.read_text())
    assert raw["tensorrt"]["gpu"] == {"name": "NVIDIA A10", "compute_capability": "8.6"}
    assert raw["tensorrt"]["profile"]["padding_mask"] == {"min": [1, 800, 800], "opt": [1, 800, 1066],
                                                         "max": [1, 1333, 1333]}
    check_plan_digest(read_back, plan_bytes, plan_path)
    with pytest.raises(PansegError, match="does not match its side file"):
        check_plan_digest(read_back, plan_bytes + b"!", plan_path)


def test_side_file_problems_are_one_line_errors_naming_the_file_and_key(tmp_path):
    plan = tmp_path / "m.plan"
    side = sidecar_path(plan)
    good = _info().to_json()
    cases = {
        "no section": ({"threshold": 0.5}, "no 'tensorrt' section"),
        "old format": ({"tensorrt": {**good, "sidecar_version": 99}}, "unsupported sidecar_version 99"),
        "no version": ({"tensorrt": {k: v for k, v in good.items() if k != "tensorrt_version"}},
                       "tensorrt_version missing"),
        "bad cc": ({"tensorrt": {**good, "gpu": {"name": "x", "compute_capability": "eight"}}},
                   "not a compute capability"),
        "bad level": ({"tensorrt": {**good, "hardware_compatibility": "turing+"}}, "hardware_compatibility must be"),
        "bad profile": ({"tensorrt": {**good, "profile": {"images": {"min": [2], "opt": [1], "max": [3]}}}},
                        r"profile\.images"),
        "flag as int": ({"tensorrt": {**good, "version_compatible": 1}}, "version_compatible missing or not a bool"),
    }
    for name, (content, message) in cases.items():
        side.write_text(json.dumps(content))
        with pytest.raises(PansegError, match=message) as info:
            read_engine_sidecar(plan)
        assert str(info.value).startswith(str(side)) and "\n" not in str(info.value), name
    side.unlink()
    with pytest.raises(PansegError, match="side file missing"):
        read_engine_sidecar(plan)


# ---------------------------------------------------------------- compatibility


def test_a_plan_runs_only_under_the_tensorrt_version_that_built_it():
    assert version_problem("10.15.1.29", "10.15.1.29", False) is None
    for other in ("10.15.1.30", "10.16.0", "10.14.1.48", "11.0.0"):
        message = version_problem("10.15.1.29", other, False)
        assert "built with TensorRT 10.15.1.29" in message and f"this is TensorRT {other}" in message
        assert "--version-compatible" in message


def test_version_compatible_plans_run_under_newer_versions_of_the_same_line():
    for newer in ("10.15.1.29", "10.16.0", "11.2.0"):
        assert version_problem("10.15.1.29", newer, True) is None, newer
    for refused in ("10.14.0", "9.3.0", "12.0.0"):
        assert version_problem("10.15.1.29", refused, True) is not None, refused
    assert version_problem("11.1.0", "10.16.0", True) is not None


def test_a_plan_runs_only_on_its_compute_capability_unless_built_compatible():
    refusal, warning = hardware_problem(A10, "none", L4)
    assert "NVIDIA A10 (compute capability 8.6)" in refusal and "NVIDIA L4 (compute capability 8.9)" in refusal
    assert "ampere+" in refusal and warning is None
    refusal, _ = hardware_problem(A10, "none", T4)
    assert "7.5" in refusal and "ampere+" not in refusal  # no point suggesting it for a pre-Ampere GPU
    assert hardware_problem(A10, "same", L4)[0] is not None
    # same compute capability, another model: runs, with a warning unless built for "same"
    refusal, warning = hardware_problem(A10, "none", A6000)
    assert refusal is None and "NVIDIA RTX A6000" in warning
    assert hardware_problem(A10, "same", A6000) == (None, None)
    # ampere+: any compute capability 8.0 or newer, nothing older
    for gpu in (A100, A10, L4, GpuInfo("H100", (9, 0)), GpuInfo("B200", (10, 0))):
        assert hardware_problem(A10, "ampere+", gpu) == (None, None), gpu
    refusal, _ = hardware_problem(A10, "ampere+", T4)
    assert "Ampere and newer" in refusal and "Tesla T4" in refusal


def test_check_engine_compatible_raises_naming_the_file_or_returns_warnings():
    with pytest.raises(PansegError, match=r"^m\.plan: cannot run this engine: built with TensorRT 10\.15\.1\.29"):
        check_engine_compatible(_info(), "10.16.0", A10, "m.plan")
    with pytest.raises(PansegError, match=r"^m\.plan: cannot run this engine: built for NVIDIA A10"):
        check_engine_compatible(_info(), "10.15.1.29", L4, "m.plan")
    assert check_engine_compatible(_info(), "10.15.1.29", A10, "m.plan") == []
    assert check_engine_compatible(_info(version_compatible=True, hardware_compatibility="ampere+"), "10.16.0", L4,
                                   "m.plan") == []
    [warning] = check_engine_compatible(_info(), "10.15.1.29", A6000, "m.plan")
    assert warning.startswith("m.plan: built on NVIDIA A10, running on NVIDIA RTX A6000")


def test_the_backend_without_tensorrt_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(PansegError, match="TensorRT backend not available: tensorrt is not installed"):
        TensorRTBackend(plan)


# ---------------------------------------------------------------- command line


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tensorrt_missing_fails_with_one_line_after_checking_everything_else(onnx_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, out, err = _run([onnx_path, "--max-shape", "2x1333x1333"], capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("python -m export.tensorrt: error: tensorrt is not installed")
    assert "--dry-run" in err
    assert "trtexec --onnx=" in out  # the profile and command were worked out first
    assert not (tmp_path / "model.plan").exists()
    # an ONNX problem is reported as such, not hidden behind the missing TensorRT
    code, _, err = _run([synthetic_onnx(tmp_path / "plain.onnx", metadata={})], capsys)
    assert code == 1 and "no panseg metadata" in err


def test_command_line_errors_are_one_line_naming_the_problem(onnx_path, tmp_path, capsys):
    custom = helper.make_node("FancyOp", ["images"], ["extra"], name="my_fancy_node", domain="com.example")
    cases = [
        ([tmp_path / "missing.onnx"], "missing.onnx: no such ONNX file"),
        ([tmp_path], "is not a file"),
        ([onnx_path, "-o", tmp_path / "model.trt"], "must end in .plan or .engine"),
        ([onnx_path, "--min-shape", "1x900x900"], "--min-shape 1x900x900 is above"),
        ([synthetic_onnx(tmp_path / "custom.onnx", extra_node=custom)], "'my_fancy_node' (com.example::FancyOp"),
        ([onnx_path, "--timing-cache", tmp_path], "must be a file"),
    ]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all \xff\xfe")
    cases.append(([garbage], "garbage.onnx: not a readable ONNX model"))
    for argv, message in cases:
        code, _, err = _run(argv + ["--dry-run"], capsys)
        assert code == 1, argv
        assert message in err and err.count("\n") == 1, (argv, err)


@pytest.mark.parametrize("flag,value,message", [("--min-shape", "1x3x800x800", "3 numbers"),
                                                ("--max-shape", "big", "expected BxHxW"),
                                                ("--workspace", "0", "at least 1 MiB"),
                                                ("--builder-optimization-level", "9", "0..5"),
                                                ("--hardware-compatibility", "turing", "invalid choice")])
def test_malformed_flags_are_usage_errors(onnx_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as info:
        main([str(onnx_path), flag, value, "--dry-run"])
    assert info.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------- builder plumbing (a recording stub, not TensorRT)


class StubTensorRT:
    """Records what the builder code asks of TensorRT. Plumbing only: it builds nothing and checks nothing."""

    __version__ = "10.15.1.29"
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    BuilderFlag = SimpleNamespace(VERSION_COMPATIBLE="VERSION_COMPATIBLE")
    HardwareCompatibilityLevel = SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS", SAME_COMPUTE_CAPABILITY="SAME_CC")

    class Logger:
        WARNING, VERBOSE = "WARNING", "VERBOSE"

        def __init__(self, severity):
            self.severity = severity

    def __init__(self, inputs=(("images", (-1, 3, -1, -1)), ("padding_mask", (-1, -1, -1))), parse_ok=True,
                 parser_errors=(), plan=b"serialized plan"):
        """``inputs=None``: the network's inputs are the parsed ONNX file's (-1 where dynamic); ``plan`` a list:
        one result per build, in order."""
        self.calls: list[tuple] = []
        self.inputs, self.parse_ok, self.errors, self.plan = inputs, parse_ok, parser_errors, plan
        self.timing_cache_in: bytes | None = None
        stub = self

        class Network:
            def __init__(self):
                self.inputs = list(stub.inputs or ())

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return SimpleNamespace(name=self.inputs[i][0], shape=self.inputs[i][1])

        class Builder:
            def __init__(self, logger):
                stub.calls.append(("Builder", logger.severity))

            def create_network(self, flags):
                stub.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                stub.calls.append(("build",))
                return stub.plan.pop(0) if isinstance(stub.plan, list) else stub.plan

        class Config:
            def set_memory_pool_limit(self, pool, size):
                stub.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                stub.calls.append(("set_flag", flag))

            def __setattr__(self, name, value):
                stub.calls.append(("config." + name, value))

            def add_optimization_profile(self, profile):
                stub.calls.append(("add_optimization_profile", profile.shapes))

            def create_timing_cache(self, data):
                stub.calls.append(("create_timing_cache", bytes(data)))
                return SimpleNamespace(serialize=lambda: b"cache after build")

            def set_timing_cache(self, cache, ignore_mismatch):
                stub.calls.append(("set_timing_cache", ignore_mismatch))
                return True

            def get_timing_cache(self):
                return SimpleNamespace(serialize=lambda: b"cache after build")

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = len(stub.errors)
                self.network = network

            def parse_from_file(self, path):
                stub.calls.append(("parse_from_file", path))
                if stub.inputs is None:
                    self.network.inputs = [(name, tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims))
                                           for name, dims in graph_inputs(onnx.load(path))]
                return stub.parse_ok

            def get_error(self, index):
                name, op, desc = stub.errors[index]
                return SimpleNamespace(node_name=lambda: name, node_operator=lambda: op, desc=lambda: desc,
                                       code=lambda: "UNSUPPORTED_NODE", node=lambda: index)

        self.Builder, self.OnnxParser = Builder, OnnxParser

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


def test_plumbing_strongly_typed_network_workspace_profile_and_flags_reach_tensorrt(tmp_path):
    stub = StubTensorRT()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old cache")
    options = BuildOptions(workspace_bytes=3 << 30, timing_cache=cache, builder_optimization_level=5,
                           version_compatible=True, hardware_compatibility="ampere+", verbose=True)
    plan = build_plan(stub, tmp_path / "m.onnx", _profiles(max_bhw=(4, 1333, 1333)), options, progress=False)
    assert plan == b"serialized plan"
    assert stub.named("Builder") == [("Builder", "VERBOSE")]
    assert stub.named("create_network") == [("create_network", 1 << 1)]  # the STRONGLY_TYPED bit, nothing else
    assert stub.named("parse_from_file") == [("parse_from_file", str(tmp_path / "m.onnx"))]
    assert stub.named("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 3 << 30)]
    assert stub.named("set_flag") == [("set_flag", "VERSION_COMPATIBLE")]  # no precision flag, ever
    assert ("config.builder_optimization_level", 5) in stub.calls
    assert ("config.hardware_compatibility_level", "AMPERE_PLUS") in stub.calls
    [(_, shapes)] = stub.named("add_optimization_profile")
    assert shapes == {"images": ((1, 3, 800, 800), (1, 3, 800, 1066), (4, 3, 1333, 1333)),
                      "padding_mask": ((1, 800, 800), (1, 800, 1066), (4, 1333, 1333))}
    assert stub.named("create_timing_cache") == [("create_timing_cache", b"old cache")]
    assert stub.named("set_timing_cache") == [("set_timing_cache", False)]
    assert cache.read_bytes() == b"cache after build"
    order = [c[0] for c in stub.calls]
    assert order.index("parse_from_file") < order.index("add_optimization_profile") < order.index("build")


def test_plumbing_defaults_leave_tensorrts_own_defaults_alone(tmp_path):
    stub = StubTensorRT()
    build_plan(stub, tmp_path / "m.onnx", _profiles(), BuildOptions(), progress=False)
    assert stub.named("Builder") == [("Builder", "WARNING")]
    assert not stub.named("set_memory_pool_limit") and not stub.named("set_flag")
    assert not stub.named("create_timing_cache")
    assert not any(c[0].startswith("config.") for c in stub.calls)


def test_plumbing_parser_errors_name_every_node_and_operator(tmp_path):
    stub = StubTensorRT(parse_ok=False, parser_errors=[("/backbone/Conv_3", "Conv", "weights must be constant"),
                                                       ("/mask/Resize_1", "Resize", "unsupported mode")])
    with pytest.raises(PansegError) as info:
        build_plan(stub, tmp_path / "m.onnx", _profiles(), BuildOptions(), progress=False)
    message = str(info.value)
    assert "node '/backbone/Conv_3' (Conv): weights must be constant" in message
    assert "node '/mask/Resize_1' (Resize): unsupported mode" in message and "\n" not in message
    assert not stub.named("build")


def test_plumbing_build_failure_and_input_mismatch_are_errors(tmp_path):
    with pytest.raises(PansegError, match="failed to build the engine"):
        build_plan(StubTensorRT(plan=None), tmp_path / "m.onnx", _profiles(), BuildOptions(), progress=False)
    stub = StubTensorRT(inputs=(("images", (-1, 3, -1, -1)), ("extra", (-1, 4))))
    with pytest.raises(PansegError, match="no such input padding_mask; no profile for extra"):
        build_plan(stub, tmp_path / "m.onnx", _profiles(), BuildOptions(), progress=False)


def test_plumbing_network_flags_follow_the_tensorrt_version():
    assert network_flags(StubTensorRT()) == 2
    no_flag = StubTensorRT()
    no_flag.NetworkDefinitionCreationFlag = SimpleNamespace()
    no_flag.__version__ = "11.0.0"
    assert network_flags(no_flag) == 0  # strongly typed by default from 11 on
    no_flag.__version__ = "10.3.0"
    with pytest.raises(PansegError, match="no STRONGLY_TYPED"):
        network_flags(no_flag)


def test_plumbing_the_command_line_writes_plan_and_side_file_together(onnx_path, tmp_path, capsys, monkeypatch):
    import runtime.backends.tensorrt_backend as backend_module

    stub = StubTensorRT(plan=b"stub plan bytes")
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    monkeypatch.setattr(backend_module, "import_cudart", lambda: object())
    monkeypatch.setattr(backend_module, "current_gpu", lambda cudart=None, device=0: L4)
    plan = tmp_path / "out" / "m.plan"
    code, out, err = _run([onnx_path, "-o", plan, "--hardware-compatibility", "same", "--no-progress"], capsys)
    assert code == 0, err
    assert plan.read_bytes() == b"stub plan bytes"
    metadata, info = read_engine_sidecar(plan)
    assert json.loads(metadata["threshold"]) == 0.85
    assert (info.tensorrt_version, info.gpu, info.hardware_compatibility) == ("10.15.1.29", L4, "same")
    assert info.onnx_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    check_plan_digest(info, plan.read_bytes(), plan)
    assert check_engine_compatible(info, "10.15.1.29", L4, plan) == []
    assert f"wrote {plan}" in out
    # a failed build leaves neither file behind
    failed = tmp_path / "failed.plan"
    monkeypatch.setitem(sys.modules, "tensorrt", StubTensorRT(plan=None))
    code, _, err = _run([onnx_path, "-o", failed, "--no-progress"], capsys)
    assert code == 1 and "failed to build" in err
    assert not failed.exists() and not sidecar_path(failed).exists()


def test_plumbing_build_engine_file_needs_a_gpu_identity(onnx_path, monkeypatch):
    import runtime.backends.tensorrt_backend as backend_module

    monkeypatch.setitem(sys.modules, "tensorrt", StubTensorRT())

    def no_gpu(cudart=None, device=0):
        raise PansegError("CUDA cudaSetDevice(0) failed: cudaErrorNoDevice")

    monkeypatch.setattr(backend_module, "import_cudart", lambda: object())
    monkeypatch.setattr(backend_module, "current_gpu", no_gpu)
    with pytest.raises(PansegError, match="cudaErrorNoDevice"):
        build_engine_file(plan_engine(onnx_path), progress=False)
    assert not onnx_path.with_suffix(".plan").exists()


def test_profile_shapes_cover_the_batches_the_runtime_pads_together():
    """A portrait and a landscape image padded together (runtime.preprocess.pad_batch) still fit the default range."""
    from runtime.preprocess import pad_batch

    shapes = [target_size(480, 640), target_size(640, 480)]
    batch, mask = pad_batch([np.zeros((3, h, w), np.float32) for h, w in shapes])
    profiles = _profiles(max_bhw=(2, 1333, 1333))
    check_shapes_in_profile({"images": batch.shape, "padding_mask": mask.shape}, profiles, "m.plan")
    assert batch.shape == (2, 3, 1066, 1066)


# ---------------------------------------------------------------- query-sparse pair: detector engine + mask engine

PAIR_FLAGS = dict(min_shape=(1, 33, 61), opt_shape=(1, 64, 96), max_shape=(2, 97, 130))  # odd sizes: ceil matters
PER_IMAGE = ("attn_keys", "memory_mask", "lay1_image", "fpn_s16", "fpn_s8", "fpn_s4")


def _images(b: int, h: int, w: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"images": rng.standard_normal((b, 3, h, w)).astype(np.float32),
            "padding_mask": np.zeros((b, h, w), bool)}


def test_mask_engine_profile_holds_exactly_what_the_detector_produces(tiny_export, tmp_path):
    """The detector run by ONNX Runtime at the profile's min, opt and max images gives per-image tensors of exactly
    the derived min, opt and max shapes; sizes in between fit; the mask graph runs at the largest kept batch."""
    from runtime.backends import OnnxRuntimeBackend

    plan = plan_engine(tiny_export, tmp_path / "tiny.plan", **PAIR_FLAGS)
    mask = plan.mask
    assert mask is not None and mask.onnx_path == tiny_export.with_name("tiny.masks.onnx")
    assert mask.output == tmp_path / "tiny.masks.plan"
    with OnnxRuntimeBackend(tiny_export, optimized_cache=False) as detector, \
            OnnxRuntimeBackend(mask.onnx_path, optimized_cache=False) as masks:
        for corner in ("min", "opt", "max"):
            out = detector.infer(_images(*getattr(plan.shape_range, corner), seed=1), PER_IMAGE)
            for name in PER_IMAGE:
                assert out[name].shape == getattr(mask.profiles[name], corner), (corner, name)
        for b, h, w in ((1, 40, 129), (2, 97, 61), (1, 64, 64)):
            out = detector.infer(_images(b, h, w, seed=2), ["hs", *PER_IMAGE])
            check_shapes_in_profile({n: out[n].shape for n in PER_IMAGE}, mask.profiles, "tiny.masks.plan")
        # every query of both images of the largest batch: the most the runtime can keep in one call
        out = detector.infer(_images(*plan.shape_range.max, seed=3), ["hs", *PER_IMAGE])
        b, q = out["hs"].shape[:2]
        feeds = {"hs_kept": out["hs"].reshape(b * q, -1), "image_index": np.repeat(np.arange(b, dtype=np.int64), q),
                 **{n: out[n] for n in PER_IMAGE}}
        assert mask.profiles["hs_kept"].max == feeds["hs_kept"].shape and mask.profiles["image_index"].min == (1,)
        check_shapes_in_profile({n: a.shape for n, a in feeds.items()}, mask.profiles, "tiny.masks.plan")
        kept = masks.infer(feeds)["masks_kept"]
        assert kept.shape == (b * q, *out["fpn_s4"].shape[-2:])
    assert mask.kept == (1, TINY.num_queries, 2 * TINY.num_queries)


@pytest.mark.parametrize("backbone,dilation", [("resnet18", False), ("resnet50", True)])
def test_feature_strides_match_torchvisions_resnet(backbone, dilation):
    """Independent reference: torchvision's ResNet (DC5 dilates layer4) at odd sizes gives ceil(size / stride)."""
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    net = getattr(torchvision.models, backbone)(weights=None, replace_stride_with_dilation=[False, False, dilation])
    body = IntermediateLayerGetter(net, {"layer1": "s4", "layer2": "s8", "layer3": "s16", "layer4": "feat"}).eval()
    strides = feature_strides({"model_config": {"dilation": dilation}, "mask_stride": 4}, "m.onnx")
    names = {"s4": "mask", "s8": "s8", "s16": "s16", "feat": "feat"}
    with torch.no_grad():
        for h, w in ((33, 61), (65, 97)):
            out = body(torch.zeros(1, 3, h, w))
            for key, name in names.items():
                assert tuple(out[key].shape[-2:]) == (-(-h // strides[name]), -(-w // strides[name])), (key, h, w)


def test_dry_run_prints_both_engines_and_their_trtexec_lines(tiny_export, tmp_path, capsys):
    plan = tmp_path / "out" / "pair.plan"
    plan.parent.mkdir()
    assert main([str(tiny_export), "-o", str(plan), "--dry-run", "--max-shape", "2x1333x1333"]) == 0
    out = capsys.readouterr().out
    lines = [shlex.split(x) for x in out.splitlines() if x.strip().startswith("trtexec ")]
    assert len(lines) == 2
    detector, masks = lines
    assert f"--onnx={tiny_export}" in detector and f"--saveEngine={plan}" in detector
    assert f"--onnx={tiny_export.with_name('tiny.masks.onnx')}" in masks
    assert f"--saveEngine={plan.with_name('pair.masks.plan')}" in masks
    flags = {a.split("=", 1)[0]: dict(s.split(":") for s in a.split("=", 1)[1].split(",")) for a in masks
             if a.startswith(("--minShapes", "--optShapes", "--maxShapes"))}
    q = TINY.num_queries
    assert (flags["--minShapes"]["hs_kept"], flags["--maxShapes"]["hs_kept"]) == ("1x128", f"{2 * q}x128")
    assert flags["--maxShapes"]["image_index"] == str(2 * q)
    # 1335 / 32 -> 42 (rounded up), 571 / 4 -> 143: the default image range through the backbone's strides
    assert flags["--maxShapes"]["memory_mask"] == "2x42x42" and flags["--minShapes"]["fpn_s4"].endswith("x143x143")
    assert "mask engine profile: kept queries min 1" in out
    assert not any(plan.parent.iterdir())


def test_a_single_graph_model_plans_one_engine(onnx_path):
    plan = plan_engine(onnx_path)
    assert plan.mask is None and plan.kept is None


def test_a_missing_or_foreign_mask_graph_is_refused(tiny_export, tmp_path):
    lonely = tmp_path / "tiny.onnx"
    lonely.write_bytes(tiny_export.read_bytes())
    with pytest.raises(PansegError, match=r"mask graph .*tiny\.masks\.onnx is missing"):
        plan_engine(lonely)
    foreign = tmp_path / "tiny.masks.onnx"
    model = onnx.load(str(tiny_export.with_name("tiny.masks.onnx")))
    model.doc_string = "edited"
    onnx.save(model, foreign)
    with pytest.raises(PansegError, match="is not the mask graph exported with"):
        plan_engine(lonely)


def _build_pair(tiny_export, out_dir, capsys, monkeypatch, plans) -> tuple[int, str, StubTensorRT]:
    import runtime.backends.tensorrt_backend as backend_module

    stub = StubTensorRT(inputs=None, plan=plans)
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    monkeypatch.setattr(backend_module, "import_cudart", lambda: object())
    monkeypatch.setattr(backend_module, "current_gpu", lambda cudart=None, device=0: L4)
    flags = [f"--{k.replace('_', '-')}={'x'.join(map(str, v))}" for k, v in PAIR_FLAGS.items()]
    code, _, err = _run([tiny_export, "-o", out_dir / "tiny.plan", *flags, "--no-progress"], capsys)
    return code, err, stub


def test_plumbing_the_pair_is_built_and_the_side_files_link_it(tiny_export, tmp_path, capsys, monkeypatch):
    from runtime.model_info import parse_model_info
    from runtime.sparse import mask_graph_path

    code, err, stub = _build_pair(tiny_export, tmp_path, capsys, monkeypatch, [b"detector plan", b"mask plan"])
    assert code == 0, err
    detector, masks = tmp_path / "tiny.plan", tmp_path / "tiny.masks.plan"
    assert (detector.read_bytes(), masks.read_bytes()) == (b"detector plan", b"mask plan")
    mask_onnx = tiny_export.with_name("tiny.masks.onnx")
    assert stub.named("parse_from_file") == [("parse_from_file", str(tiny_export)), ("parse_from_file", str(mask_onnx))]
    expected = plan_engine(tiny_export, detector, **PAIR_FLAGS).mask.profiles
    assert stub.named("add_optimization_profile")[1][1] == {n: (p.min, p.opt, p.max) for n, p in expected.items()}
    # the detector's side file names its mask engine (and the ONNX it came from); the mask's names its detector
    strings, info = read_engine_sidecar(detector)
    entry = json.loads(strings["query_sparse"])
    assert entry["mask_graph"] == "tiny.masks.plan"
    assert entry["mask_graph_sha256"] == hashlib.sha256(b"mask plan").hexdigest()
    assert entry["onnx_mask_graph"] == {"file": "tiny.masks.onnx",
                                        "sha256": hashlib.sha256(mask_onnx.read_bytes()).hexdigest()}
    assert info.onnx_file == "tiny.onnx"
    mask_strings, mask_info = read_engine_sidecar(masks)
    assert json.loads(mask_strings["panseg_mask_graph_of"]) == "tiny.plan"  # every value JSON, as in metadata_props
    assert mask_info.onnx_file == "tiny.masks.onnx" and mask_info.profile == expected
    check_plan_digest(mask_info, masks.read_bytes(), masks)
    assert json.loads(mask_strings["inputs"])["hs_kept"]["shape"] == ["kept", TINY.hidden_dim]
    # what panseg-rt infer tiny.plan does: metadata -> mask graph name -> the file next to the plan
    model_info = parse_model_info(read_sidecar_metadata(detector), str(detector))
    assert model_info.mask_graph == "tiny.masks.plan"
    assert mask_graph_path(detector, model_info.mask_graph) == masks


def test_plumbing_a_failed_mask_build_writes_neither_engine(tiny_export, tmp_path, capsys, monkeypatch):
    code, err, _ = _build_pair(tiny_export, tmp_path, capsys, monkeypatch, [b"detector plan", None])
    assert code == 1 and "tiny.masks.onnx" in err and "failed to build" in err
    assert list(tmp_path.iterdir()) == []


def test_model_info_finds_the_mask_engine_next_to_a_plan_and_refuses_an_onnx_one(tiny_export, tmp_path):
    """Stub files: a detector side file as python -m export.tensorrt writes it, and an old-style one that still
    names the ONNX mask graph."""
    from export.onnx.metadata import read_metadata
    from export.tensorrt.masks import detector_sidecar_metadata
    from runtime.model_info import parse_model_info
    from runtime.sparse import mask_graph_path

    detector = tmp_path / "m.plan"
    detector.write_bytes(b"plan")
    metadata = read_metadata(tiny_export)
    write_sidecar(detector, detector_sidecar_metadata(metadata, tmp_path / "m.masks.plan", "ab" * 32), _info())
    info = parse_model_info(read_sidecar_metadata(detector), str(detector))
    assert info.mask_graph == "m.masks.plan"
    with pytest.raises(PansegError, match=r"m\.masks\.plan is missing"):
        mask_graph_path(detector, info.mask_graph)
    (tmp_path / "m.masks.plan").write_bytes(b"mask plan")
    assert mask_graph_path(detector, info.mask_graph) == tmp_path / "m.masks.plan"
    write_sidecar(detector, metadata, _info())  # the ONNX metadata copied as is
    with pytest.raises(PansegError, match=r"m\.plan: metadata 'query_sparse' names the mask graph tiny\.masks\.onnx, "
                                          r"not a TensorRT engine"):
        parse_model_info(read_sidecar_metadata(detector), str(detector))
    # the ONNX detector itself still names its ONNX mask graph
    assert parse_model_info({k: json.dumps(v) for k, v in metadata.items()}, str(tiny_export)).mask_graph == \
        "tiny.masks.onnx"

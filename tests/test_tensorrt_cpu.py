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
from conftest import TINY_CONFIG, random_padded_batch
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
from runtime.contract import IMAGES, PADDING_MASK, sidecar_path
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
    BuilderFlag = SimpleNamespace(VERSION_COMPATIBLE="VERSION_COMPATIBLE", TF32="TF32")
    ProfilingVerbosity = SimpleNamespace(DETAILED="DETAILED")
    LayerInformationFormat = SimpleNamespace(JSON="JSON")
    HardwareCompatibilityLevel = SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS", SAME_COMPUTE_CAPABILITY="SAME_CC")

    class Logger:
        WARNING, VERBOSE = "WARNING", "VERBOSE"

        def __init__(self, severity):
            self.severity = severity

    def __init__(self, inputs=(("images", (-1, 3, -1, -1)), ("padding_mask", (-1, -1, -1))), parse_ok=True,
                 parser_errors=(), plan=b"serialized plan", supports=None):
        """``inputs=None``: the network's inputs are the parsed ONNX file's (-1 where dynamic); ``plan`` a list:
        one result per build, in order; ``supports``: the parser's ``supports_operator`` (op type -> bool), which
        the parser lacks when None."""
        self.calls: list[tuple] = []
        self.inputs, self.parse_ok, self.errors, self.plan = inputs, parse_ok, parser_errors, plan
        self.supports = supports
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

            def clear_flag(self, flag):
                stub.calls.append(("clear_flag", flag))

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
                if stub.supports is not None:
                    self.supports_operator = self._supports_operator

            def _supports_operator(self, op_name):
                stub.calls.append(("supports_operator", op_name))
                return stub.supports(op_name)

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

        class Runtime:  # what --inspect deserializes the plan just built with
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, plan):
                stub.calls.append(("deserialize", bytes(plan)))
                info = json.dumps({"plan": bytes(plan).decode(errors="replace"), "Layers": ["conv1"]})
                inspector = SimpleNamespace(get_engine_information=lambda fmt: info if fmt == "JSON" else None)
                return SimpleNamespace(create_engine_inspector=lambda: inspector)

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

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


# ---------------------------------------------------------------- the runtime on a fake GPU: a fake cudart + engines
#
# FakeCudart follows cuda-python's convention (every call returns ``(error, *values)``); its "device memory" is ctypes
# host memory, each allocation tagged with the device that was current when it was made, and every copy checks that
# its addresses lie inside allocations of the right kind on the current device. FakeEngine computes its outputs with
# numpy from the bytes at the addresses bound with set_tensor_address. Together they run the backend's buffer,
# binding and hand-off logic for real; what TensorRT and CUDA would do on a GPU is tests/test_tensorrt_gpu.py's job.

import ctypes  # noqa: E402
import gc  # noqa: E402
import threading  # noqa: E402
import weakref  # noqa: E402

from runtime.contract import KEY_QUERY_SPARSE  # noqa: E402
from runtime.sparse import run_query_sparse  # noqa: E402


class FakeError(int):
    @property
    def value(self) -> int:
        return int(self)


OK = FakeError(0)
INVALID_DEVICE = FakeError(101)


class FakeCudart:
    """cuda.bindings.runtime stand-in: two "GPUs", per-thread current device, ctypes memory, a log of every call."""

    class cudaMemcpyKind:  # noqa: N801 - cuda-python's spelling
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = "h2d", "d2h", "d2d"

    def __init__(self, devices=(("NVIDIA L4", 8, 9), ("NVIDIA L4", 8, 9)), fail: dict | None = None):
        self.devices = devices
        self.fail = dict(fail or {})  # call name -> error code to return
        self._local = threading.local()
        self.memory: dict[int, tuple[object, str, int, int]] = {}  # address -> (ctypes buffer, kind, device, size)
        self.streams: dict[int, int] = {}
        self.log: list[tuple] = []  # (call, device current in the calling thread, details...)
        self._next_stream = 1

    # -- bookkeeping
    @property
    def current(self) -> int:
        return getattr(self._local, "device", 0)

    def live(self, kind: str | None = None) -> list[int]:
        return [a for a, (_, k, _, _) in self.memory.items() if kind is None or k == kind]

    def calls(self, name: str) -> list[tuple]:
        return [c for c in self.log if c[0] == name]

    def copies(self, kind: str) -> list[int]:
        return [c[2] for c in self.log if c[0] == "cudaMemcpyAsync" and c[3] == kind]

    def allocation(self, address: int, nbytes: int, kind: str) -> tuple:
        for start, (buf, k, device, size) in self.memory.items():
            if start <= address and address + nbytes <= start + size:
                assert k == kind, f"address {address:#x} is {k} memory, expected {kind}"
                return buf, k, device, size
        raise AssertionError(f"{nbytes} bytes at {address:#x} are not inside any {kind} allocation")

    def _call(self, name, *details):
        self.log.append((name, self.current, *details))
        return FakeError(self.fail[name]) if name in self.fail else OK

    def _alloc(self, name, kind, nbytes):
        err = self._call(name, nbytes)
        if err:
            return err, 0
        buf = ctypes.create_string_buffer(int(nbytes))
        address = ctypes.addressof(buf)
        self.memory[address] = (buf, kind, self.current, int(nbytes))
        return OK, address

    def _free(self, name, kind, address):
        self._call(name, address)
        assert address in self.memory and self.memory[address][1] == kind, f"{name} of {address:#x}"
        del self.memory[address]
        return (OK,)

    # -- the API
    def cudaSetDevice(self, device):  # noqa: N802
        err = self._call("cudaSetDevice", device)
        if err or not 0 <= device < len(self.devices):
            return (err or INVALID_DEVICE,)
        self._local.device = device
        return (OK,)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        name, major, minor = self.devices[device]
        return self._call("cudaGetDeviceProperties", device), SimpleNamespace(name=name.encode() + b"\0\0",
                                                                              major=major, minor=minor)

    def cudaGetErrorName(self, error):  # noqa: N802
        names = {35: b"cudaErrorInsufficientDriver", 101: b"cudaErrorInvalidDevice", 2: b"cudaErrorMemoryAllocation"}
        return OK, names.get(int(error), b"cudaErrorUnknown")

    def cudaMalloc(self, nbytes):  # noqa: N802
        return self._alloc("cudaMalloc", "device", nbytes)

    def cudaMallocHost(self, nbytes):  # noqa: N802
        return self._alloc("cudaMallocHost", "pinned", nbytes)

    def cudaFree(self, address):  # noqa: N802
        return self._free("cudaFree", "device", address)

    def cudaFreeHost(self, address):  # noqa: N802
        return self._free("cudaFreeHost", "pinned", address)

    def cudaStreamCreate(self):  # noqa: N802
        handle, self._next_stream = self._next_stream, self._next_stream + 1
        self.streams[handle] = self.current
        return self._call("cudaStreamCreate", handle), handle

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (self._call("cudaStreamSynchronize", stream),)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        del self.streams[stream]
        return (self._call("cudaStreamDestroy", stream),)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        err = self._call("cudaMemcpyAsync", nbytes, kind, stream)
        src_kind, dst_kind = {"h2d": ("pinned", "device"), "d2h": ("device", "pinned"),
                              "d2d": ("device", "device")}[kind]
        for address, want in ((src, src_kind), (dst, dst_kind)):
            _, _, device, _ = self.allocation(address, nbytes, want)
            if want == "device":
                assert device == self.current, f"device memory of GPU {device} used while GPU {self.current} is current"
        assert self.streams[stream] == self.current, "a stream of another device"
        ctypes.memmove(dst, src, nbytes)
        return (err,)


class FakeDataType:
    def __init__(self, name, dtype):
        self.name, self.np, self.itemsize = name, np.dtype(dtype), np.dtype(dtype).itemsize

    def __repr__(self):
        return f"DataType.{self.name}"


FLOAT, BOOL, INT64 = FakeDataType("FLOAT", np.float32), FakeDataType("BOOL", np.bool_), FakeDataType("INT64", np.int64)
_FAKE_TYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.bool_): BOOL, np.dtype(np.int64): INT64}


class FakeNetwork:
    """What a fake plan computes: inputs (name -> dtype, declared dims with -1, profile), and a numpy function giving
    every output from the inputs (output shapes follow from running it on zeros of the input shapes)."""

    def __init__(self, inputs: dict, outputs: dict, compute):
        self.inputs, self.outputs, self.compute = inputs, outputs, compute  # outputs: name -> dtype

    def output_shapes(self, shapes: dict) -> dict:
        zeros = {n: np.zeros(shapes[n], self.inputs[n][0]) for n in self.inputs}
        return {n: a.shape for n, a in self.compute(zeros).items()}


class FakeEngine:
    def __init__(self, network: FakeNetwork, cudart: FakeCudart, max_output_size: bool):
        self.network, self.cudart, self.max_output_size = network, cudart, max_output_size
        self.names = [*network.inputs, *network.outputs]
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_dtype(self, name):
        dtype = self.network.inputs[name][0] if name in self.network.inputs else self.network.outputs[name]
        return _FAKE_TYPES[np.dtype(dtype)]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.network.inputs else "OUTPUT"

    def get_tensor_shape(self, name):
        if name in self.network.inputs:
            return self.network.inputs[name][1]
        largest = self.network.output_shapes({n: p[2].max for n, p in self.network.inputs.items()})
        return tuple(-1 for _ in largest[name])

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        p = self.network.inputs[name][2]
        return [p.min, p.opt, p.max]

    def create_execution_context(self):
        context = (FakeContext if self.max_output_size else FakeContextWithoutMaxSize)(self)
        self.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shapes, self.addresses, self.runs = engine, {}, {}, []

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(int(d) for d in shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.network.inputs:
            return self.shapes[name]
        return self.engine.network.output_shapes(self.shapes)[name]

    def get_max_output_size(self, name):
        network = self.engine.network
        shape = network.output_shapes({n: p[2].max for n, p in network.inputs.items()})[name]
        return int(np.prod(shape)) * np.dtype(network.outputs[name]).itemsize

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream):
        network, cudart = self.engine.network, self.engine.cudart
        inputs = {}
        for name, (dtype, _, _) in network.inputs.items():
            count = int(np.prod(self.shapes[name]))
            nbytes = count * np.dtype(dtype).itemsize
            _, _, device, _ = cudart.allocation(self.addresses[name], nbytes, "device")
            assert device == cudart.current, f"input {name} on GPU {device}, GPU {cudart.current} current"
            raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(self.addresses[name])
            inputs[name] = np.frombuffer(raw, dtype, count).reshape(self.shapes[name]).copy()
        outputs = network.compute(inputs)
        for name, array in outputs.items():
            array = np.ascontiguousarray(array, network.outputs[name])
            cudart.allocation(self.addresses[name], array.nbytes, "device")
            ctypes.memmove(self.addresses[name], array.ctypes.data, array.nbytes)
        self.runs.append({"stream": stream, "device": cudart.current, "addresses": dict(self.addresses)})
        return True


class FakeContextWithoutMaxSize(FakeContext):
    def __getattribute__(self, name):
        if name == "get_max_output_size":
            raise AttributeError(name)
        return super().__getattribute__(name)


class FakeTensorRT:
    """The ``tensorrt`` module as the runtime uses it: deserializing a plan gives the FakeNetwork registered for its
    bytes."""

    __version__ = "10.15.1.29"
    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            self.severity = severity

    def __init__(self, cudart: FakeCudart, max_output_size: bool = True):
        self.plans: dict[bytes, FakeNetwork] = {}
        self.engines: list[FakeEngine] = []
        fake = self

        class Runtime:
            def __init__(self, logger):
                self.engine_host_code_allowed = False

            def deserialize_cuda_engine(self, plan):
                engine = FakeEngine(fake.plans[bytes(plan)], cudart, max_output_size)
                fake.engines.append(engine)
                return engine

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype):
        return dtype.np


# ---- the fake models: a detector and its mask head, plain numpy (the same functions are the reference)

FAKE_DIM, FAKE_CLASSES = 16, 6


def fake_detector_compute(queries: int, dim: int = FAKE_DIM, classes: int = FAKE_CLASSES):
    rng = np.random.default_rng(7)
    table = rng.standard_normal((queries, dim)).astype(np.float32)
    project = rng.standard_normal((dim, classes + 1)).astype(np.float32)

    def compute(f):
        images, mask = f["images"], f["padding_mask"]
        level = images.mean(axis=(1, 2, 3), dtype=np.float32)
        hs = (table[None] * (1 + level[:, None, None])).astype(np.float32)
        return {"pred_logits": (hs @ project * 3).astype(np.float32),
                "pred_boxes": (1 / (1 + np.exp(-hs[..., :4]))).astype(np.float32),
                "hs": hs,
                "attn_keys": images[:, :2, ::32, ::32] * 2,
                "memory_mask": mask[:, ::32, ::32].copy(),
                "lay1_image": images[:, :1, ::32, ::32] + 1,
                "fpn_s16": images[:, :1, ::16, ::16] - 1,
                "fpn_s8": images[:, :2, ::8, ::8] * 0.5,
                "fpn_s4": images[:, :2, ::4, ::4] * 1.5}

    return compute


def fake_masks_compute(f):
    idx, hs = f["image_index"], f["hs_kept"]
    fpn = f["fpn_s4"][idx]
    extra = (f["attn_keys"][idx].sum(axis=(1, 2, 3)) + f["lay1_image"][idx].sum(axis=(1, 2, 3))
             + f["fpn_s16"][idx].sum(axis=(1, 2, 3)) + f["fpn_s8"][idx].sum(axis=(1, 2, 3))
             + f["memory_mask"][idx].sum(axis=(1, 2)))
    masks = fpn[:, 0] * hs[:, 0, None, None] + fpn[:, 1] * hs[:, 1, None, None] + extra[:, None, None]
    return {"masks_kept": masks.astype(np.float32)}


def fake_pair_networks(queries: int, min_bhw, opt_bhw, max_bhw, classes: int = FAKE_CLASSES):
    def image(bhw, c=3):
        return (bhw[0], c, bhw[1], bhw[2])

    def strided(bhw, c, s):
        return (bhw[0], c, -(-bhw[1] // s), -(-bhw[2] // s))

    det_inputs = {"images": (np.float32, (-1, 3, -1, -1), TensorProfile(image(min_bhw), image(opt_bhw),
                                                                          image(max_bhw))),
                  "padding_mask": (np.bool_, (-1, -1, -1), TensorProfile(min_bhw, opt_bhw, max_bhw))}
    detector = FakeNetwork(det_inputs, {"pred_logits": np.float32, "pred_boxes": np.float32, "hs": np.float32,
                                        "attn_keys": np.float32, "memory_mask": np.bool_, "lay1_image": np.float32,
                                        "fpn_s16": np.float32, "fpn_s8": np.float32, "fpn_s4": np.float32},
                           fake_detector_compute(queries, classes=classes))
    per_image = {"attn_keys": (2, 32), "lay1_image": (1, 32), "fpn_s16": (1, 16), "fpn_s8": (2, 8), "fpn_s4": (2, 4)}
    kept = (1, min(20, queries) * opt_bhw[0], queries * max_bhw[0])
    mask_inputs = {"hs_kept": (np.float32, (-1, FAKE_DIM), TensorProfile((kept[0], FAKE_DIM), (kept[1], FAKE_DIM),
                                                                         (kept[2], FAKE_DIM))),
                   "image_index": (np.int64, (-1,), TensorProfile((kept[0],), (kept[1],), (kept[2],)))}
    for name, (c, s) in per_image.items():
        mask_inputs[name] = (np.float32, (-1, c, -1, -1),
                             TensorProfile(*(strided(b, c, s) for b in (min_bhw, opt_bhw, max_bhw))))
    mask_inputs["memory_mask"] = (np.bool_, (-1, -1, -1),
                                  TensorProfile(*(strided(b, 1, 32)[:1] + strided(b, 1, 32)[2:]
                                                  for b in (min_bhw, opt_bhw, max_bhw))))
    masks = FakeNetwork(mask_inputs, {"masks_kept": np.float32}, fake_masks_compute)
    return detector, masks


def numpy_graph(network: FakeNetwork):
    """The reference: the same computation as a numpy RunGraph (what runtime/sparse.py calls)."""
    return lambda feeds, names: {n: v for n, v in network.compute(dict(feeds)).items() if n in names}


def write_fake_plan(path: Path, fake_trt: FakeTensorRT, network: FakeNetwork, metadata: dict | None = None) -> Path:
    plan = f"fake plan {path.name}".encode()
    fake_trt.plans[plan] = network
    path.write_bytes(plan)
    profile = {n: p for n, (_, _, p) in network.inputs.items()}
    write_sidecar(path, metadata or {"threshold": 0.5}, _info(gpu=L4, profile=profile,
                                                              plan_sha256=hashlib.sha256(plan).hexdigest(),
                                                              plan_bytes=len(plan)))
    return path


@pytest.fixture
def fake_gpu(monkeypatch):
    """A fake cudart and tensorrt installed where the backend imports them."""
    import runtime.backends.tensorrt_backend as backend_module

    cudart = FakeCudart()
    trt = FakeTensorRT(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(backend_module, "import_cudart", lambda: cudart)
    return SimpleNamespace(cudart=cudart, trt=trt)


SMALL = dict(min_bhw=(1, 64, 64), opt_bhw=(1, 64, 96), max_bhw=(2, 128, 160))


def _fake_images(shapes, seed):
    images, mask = random_padded_batch(shapes, seed)
    return {IMAGES: images, PADDING_MASK: mask}


def test_fake_gpu_buffers_are_allocated_once_at_the_profile_maximum_for_growing_and_shrinking_batches(fake_gpu,
                                                                                                     tmp_path):
    detector, _ = fake_pair_networks(5, **SMALL)
    plan = write_fake_plan(tmp_path / "d.plan", fake_gpu.trt, detector)
    reference = numpy_graph(detector)
    cudart = fake_gpu.cudart
    with TensorRTBackend(plan) as backend:
        for shapes, seed in (([(64, 64)], 1), ([(128, 160), (100, 64)], 2), ([(64, 96)], 3), ([(128, 128)], 4)):
            feeds = _fake_images(shapes, seed)
            got = backend.infer(feeds)
            want = reference(feeds, list(got))
            assert set(got) == set(detector.outputs)
            for name in want:
                assert got[name].tobytes() == want[name].tobytes() and got[name].shape == want[name].shape, name
        mallocs = [c[2] for c in cudart.calls("cudaMalloc")]
        # one device buffer per tensor, each sized for the profile's maximum (2 x 3 x 128 x 160 images, ...)
        assert len(mallocs) == len(detector.inputs) + len(detector.outputs)
        assert 2 * 3 * 128 * 160 * 4 in mallocs and 2 * 128 * 160 in mallocs
        assert len(cudart.calls("cudaMallocHost")) == len(mallocs)
        assert not cudart.calls("cudaFree") and not cudart.calls("cudaFreeHost")
    assert cudart.live() == [] and not cudart.streams


def test_fake_gpu_buffers_without_get_max_output_size_come_from_the_output_shapes_at_the_profile_maximum(
        monkeypatch, tmp_path):
    import runtime.backends.tensorrt_backend as backend_module

    cudart = FakeCudart()
    trt = FakeTensorRT(cudart, max_output_size=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(backend_module, "import_cudart", lambda: cudart)
    detector, _ = fake_pair_networks(5, **SMALL)
    plan = write_fake_plan(tmp_path / "d.plan", trt, detector)
    with TensorRTBackend(plan) as backend:
        assert not hasattr(trt.engines[0].contexts[0], "get_max_output_size")
        out = backend.infer(_fake_images([(128, 160), (64, 64)], 5), ["fpn_s4"])
        assert out["fpn_s4"].shape == (2, 2, 32, 40)
        assert 2 * 2 * 32 * 40 * 4 in [c[2] for c in cudart.calls("cudaMalloc")]


def test_fake_gpu_only_the_requested_outputs_are_copied_back(fake_gpu, tmp_path):
    detector, _ = fake_pair_networks(5, **SMALL)
    plan = write_fake_plan(tmp_path / "d.plan", fake_gpu.trt, detector)
    cudart = fake_gpu.cudart
    feeds = _fake_images([(64, 96)], 6)
    with TensorRTBackend(plan) as backend:
        out = backend.infer(feeds, ["pred_boxes"])
        assert set(out) == {"pred_boxes"}
        assert out["pred_boxes"].tobytes() == numpy_graph(detector)(feeds, ["pred_boxes"])["pred_boxes"].tobytes()
        assert cudart.copies("d2h") == [out["pred_boxes"].nbytes]
        assert cudart.copies("h2d") == [feeds["images"].nbytes, feeds["padding_mask"].nbytes]
        # pinned memory only for what crosses: the two inputs and the one output
        assert len(cudart.calls("cudaMallocHost")) == 3
        assert backend.transfers.as_dict() == {"h2d_bytes": feeds["images"].nbytes + feeds["padding_mask"].nbytes,
                                               "h2d_copies": 2, "d2h_bytes": out["pred_boxes"].nbytes,
                                               "d2h_copies": 1, "d2d_bytes": 0, "d2d_copies": 0}


def test_fake_gpu_close_and_the_finalizer_free_everything(fake_gpu, tmp_path):
    detector, _ = fake_pair_networks(5, **SMALL)
    plan = write_fake_plan(tmp_path / "d.plan", fake_gpu.trt, detector)
    cudart = fake_gpu.cudart
    backend = TensorRTBackend(plan)
    backend.infer(_fake_images([(64, 64)], 1))
    assert cudart.live("device") and cudart.live("pinned") and cudart.streams
    backend.close()
    assert cudart.live() == [] and not cudart.streams
    backend.close()  # twice is harmless
    with pytest.raises(PansegError, match="used after close"):
        backend.infer(_fake_images([(64, 64)], 1))
    # never closed: dropping the last reference frees the memory too
    dropped = TensorRTBackend(plan)
    dropped.infer(_fake_images([(64, 64)], 1))
    assert cudart.live()
    alive = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert alive() is None
    assert cudart.live() == [] and not cudart.streams


def test_fake_gpu_a_call_from_another_thread_runs_on_the_backends_device(fake_gpu, tmp_path):
    detector, _ = fake_pair_networks(5, **SMALL)
    plan = write_fake_plan(tmp_path / "d.plan", fake_gpu.trt, detector)
    cudart = fake_gpu.cudart
    feeds = _fake_images([(64, 96)], 8)
    with TensorRTBackend(plan, device=1) as backend:
        cudart.cudaSetDevice(0)  # this thread moves on to GPU 0 (e.g. another library, another backend)
        results, errors = [], []

        def worker():  # a fresh thread starts on device 0
            try:
                results.append(backend.infer(feeds, ["pred_logits"]))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert not errors, errors
        assert results[0]["pred_logits"].tobytes() == \
            numpy_graph(detector)(feeds, ["pred_logits"])["pred_logits"].tobytes()
        allocations = {device for (_, _, device, _) in cudart.memory.values()}
        assert allocations == {1}  # every buffer on the backend's GPU, none on the thread's default
        assert {r["device"] for r in fake_gpu.trt.engines[0].contexts[0].runs} == {1}
        assert backend.infer(feeds, ["pred_logits"])["pred_logits"].tobytes() == \
            results[0]["pred_logits"].tobytes()  # and back in this thread, whose current device is 0
    assert cudart.live() == []


def test_fake_gpu_an_unknown_device_and_an_old_driver_are_one_line_errors(fake_gpu, tmp_path):
    detector, _ = fake_pair_networks(5, **SMALL)
    plan = write_fake_plan(tmp_path / "d.plan", fake_gpu.trt, detector)
    with pytest.raises(PansegError, match=r"cudaSetDevice\(2\) failed: cudaErrorInvalidDevice"):
        TensorRTBackend(plan, device=2)
    fake_gpu.cudart.fail["cudaSetDevice"] = 35
    with pytest.raises(PansegError, match=r"cudaErrorInsufficientDriver \(no NVIDIA driver, or one older .*cu12"):
        TensorRTBackend(plan)


def _fake_pair(fake_gpu, tmp_path, queries, flags, classes=FAKE_CLASSES, metadata=None):
    detector, masks = fake_pair_networks(queries, **flags, classes=classes)
    det_plan = write_fake_plan(tmp_path / "m.plan", fake_gpu.trt, detector, metadata)
    mask_plan = write_fake_plan(tmp_path / "m.masks.plan", fake_gpu.trt, masks)
    return detector, masks, det_plan, mask_plan


def _same_outputs(got, want):
    assert got.pred_logits.tobytes() == want.pred_logits.tobytes()
    assert got.pred_boxes.tobytes() == want.pred_boxes.tobytes()
    assert got.kept_counts == want.kept_counts
    for g, w in zip(got.kept, want.kept, strict=True):
        for field_name in ("indices", "scores", "labels", "masks"):
            a, b = getattr(g, field_name), getattr(w, field_name)
            assert a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes(), field_name


def test_fake_gpu_pair_hands_the_per_image_tensors_over_on_the_device(fake_gpu, tmp_path):
    """The device-resident pair gives byte for byte what runtime/sparse.py gives on the numpy graphs, and the mask
    engine reads the detector's own buffers: no per-image tensor crosses, none is allocated twice."""
    from runtime.backends.tensorrt_pair import TensorRTPair

    detector, masks, det_plan, mask_plan = _fake_pair(fake_gpu, tmp_path, 5, SMALL)
    cudart = fake_gpu.cudart
    with TensorRTBackend(det_plan) as det, TensorRTBackend(mask_plan) as mask_backend:
        pair = TensorRTPair(det, mask_backend)
        for shapes, seed, threshold in (([(64, 64)], 1, 0.2), ([(128, 160), (96, 64)], 2, 0.0),
                                        ([(64, 96)], 3, 0.99999), ([(100, 100), (64, 64)], 4, 0.3)):
            feeds = _fake_images(shapes, seed)
            pair.reset_transfers()
            log_start = len(cudart.log)
            got = pair.run(feeds, threshold)
            want = run_query_sparse(numpy_graph(detector), numpy_graph(masks), feeds, threshold)
            _same_outputs(got, want)
            kept = sum(got.kept_counts)
            copies = [c for c in cudart.log[log_start:] if c[0] == "cudaMemcpyAsync"]
            # up: images, padding_mask (+ image_index); down: logits, boxes (+ the kept masks); nothing else crosses
            assert [c[3] for c in copies if c[3] != "d2d"] == ["h2d", "h2d", "d2h", "d2h"] + (
                ["h2d", "d2h"] if kept else [])
            expected_h2d = feeds["images"].nbytes + feeds["padding_mask"].nbytes + kept * 8
            expected_d2h = want.pred_logits.nbytes + want.pred_boxes.nbytes + sum(k.masks.nbytes for k in want.kept)
            assert pair.transfers().h2d_bytes == expected_h2d
            assert pair.transfers().d2h_bytes == expected_d2h
            assert pair.transfers().d2d_bytes == kept * FAKE_DIM * 4  # the kept hs rows, gathered on the device
            if kept:
                run = fake_gpu.trt.engines[1].contexts[0].runs[-1]
                for name in PER_IMAGE:
                    assert run["addresses"][name] == det.device_output(name).address, name
        # the mask engine never allocated its own per-image buffers: it only ever read the detector's
        mask_buffers = mask_backend._resources.buffers
        assert set(mask_buffers) == {"hs_kept", "image_index", "masks_kept"}
    assert cudart.live() == []


def test_fake_gpu_pair_traffic_per_image_at_800x1066_with_20_kept_queries(fake_gpu, tmp_path):
    """The issue's target: host <-> device bytes per image, excluding the model's inputs and the returned masks,
    <= 0.5 MB at 800 x 1066 with 20 kept queries (100 queries, 250 classes + no-object, as detr's COCO model)."""
    from runtime.backends.tensorrt_pair import TensorRTPair

    flags = dict(min_bhw=(1, 800, 1066), opt_bhw=(1, 800, 1066), max_bhw=(1, 800, 1066))
    detector, masks, det_plan, mask_plan = _fake_pair(fake_gpu, tmp_path, 100, flags, classes=250)

    def top20(logits, boxes):
        order = np.sort(np.argsort(-logits[:, :-1].max(-1))[:20])
        return order, logits[order, :-1].max(-1), logits[order, :-1].argmax(-1)

    feeds = _fake_images([(800, 1066)], 9)
    with TensorRTBackend(det_plan) as det, TensorRTBackend(mask_plan) as mask_backend:
        pair = TensorRTPair(det, mask_backend)
        got = pair.run(feeds, 0.5, select=top20)
        traffic = pair.transfers()
    want = run_query_sparse(numpy_graph(detector), numpy_graph(masks), feeds, 0.5, select=top20)
    _same_outputs(got, want)
    assert got.kept_counts == [20]
    inputs = feeds["images"].nbytes + feeds["padding_mask"].nbytes
    returned_masks = got.kept[0].masks.nbytes
    other = traffic.crossed_bytes - inputs - returned_masks
    # logits 100 x 251 x 4 + boxes 100 x 4 x 4 down, image_index 20 x 8 up; hs rows gathered on the device
    assert other == 100 * 251 * 4 + 100 * 4 * 4 + 20 * 8
    assert other <= 0.5e6
    assert traffic.d2d_bytes == 20 * FAKE_DIM * 4


def test_fake_gpu_load_model_runs_a_tensorrt_pair_on_the_device(fake_gpu, tiny_export, tmp_path):
    """load_model: both graphs TensorRT plans -> PanopticModel.run goes through the device-resident pair and returns
    what the numpy path returns."""
    from export.onnx.metadata import read_metadata
    from export.tensorrt.masks import detector_sidecar_metadata
    from runtime.model import load_model

    onnx_meta = read_metadata(tiny_export)
    queries, classes = onnx_meta["num_queries"], onnx_meta["num_classes"]
    metadata = detector_sidecar_metadata(onnx_meta, tmp_path / "m.masks.plan", "ab" * 32)
    detector, masks, det_plan, _ = _fake_pair(fake_gpu, tmp_path, queries, SMALL, classes=classes,
                                              metadata=metadata)
    assert KEY_QUERY_SPARSE in metadata
    feeds = _fake_images([(96, 128), (64, 64)], 11)
    with load_model(det_plan) as model:
        assert model.device_pair is not None and model.query_sparse
        got = model.run(feeds["images"], feeds["padding_mask"], threshold=0.0)
        traffic = model.device_pair.transfers()
    want = run_query_sparse(numpy_graph(detector), numpy_graph(masks), feeds, 0.0, model.info.is_thing)
    _same_outputs(got, want)
    assert sum(got.kept_counts) > 0 and traffic.d2d_copies > 0
    assert fake_gpu.cudart.live() == []


# ---------------------------------------------------------------- --device, --no-tf32, --inspect (builder plumbing)


def test_plumbing_device_tf32_and_inspect_reach_the_builder_and_the_trtexec_line(onnx_path, tmp_path, capsys,
                                                                                 monkeypatch):
    import runtime.backends.tensorrt_backend as backend_module

    stub = StubTensorRT(plan=b"stub plan bytes")
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    monkeypatch.setattr(backend_module, "import_cudart", lambda: object())
    devices = []
    monkeypatch.setattr(backend_module, "current_gpu", lambda cudart=None, device=0: devices.append(device) or L4)
    plan = tmp_path / "m.plan"
    code, out, err = _run([onnx_path, "-o", plan, "--device", "1", "--no-tf32", "--inspect", "--quiet"], capsys)
    assert code == 0, err
    assert devices == [1]  # the GPU identified for the side file, and made current for the build, is device 1
    assert stub.named("clear_flag") == [("clear_flag", "TF32")]
    assert ("config.profiling_verbosity", "DETAILED") in stub.calls
    layers = json.loads(plan.with_name("m.plan.layers.json").read_text())
    assert layers == {"plan": "stub plan bytes", "Layers": ["conv1"]}
    line = shlex.split(next(x for x in out.splitlines() if x.strip().startswith("trtexec ")))
    assert {"--noTF32", "--device=1", "--profilingVerbosity=detailed",
            f"--exportLayerInfo={plan.with_name('m.plan.layers.json')}"} <= set(line)
    _, info = read_engine_sidecar(plan)
    assert info.builder["tf32"] is False
    # the defaults add none of it
    default = trtexec_command("m.onnx", "m.plan", _profiles(), BuildOptions())
    assert not any(a.startswith(("--noTF32", "--device", "--profilingVerbosity", "--exportLayerInfo")) for a in default)
    code, _, err = _run([onnx_path, "-o", tmp_path / "n.plan", "--device", "-1", "--dry-run"], capsys)
    assert code == 1 and "CUDA device must be an index" in err


# ---------------------------------------------------------------- ONNX Runtime's TensorRT and CUDA providers


class RecordingSession:
    """onnxruntime.InferenceSession that records the providers and options it was given, then runs the model with
    the CPU provider (no GPU here) while reporting the requested providers as active."""

    created: list[dict] = []

    def __init__(self, path, sess_options=None, providers=None, provider_options=None):
        import onnxruntime as ort

        RecordingSession.created.append({"path": path, "providers": list(providers or []),
                                         "provider_options": provider_options})
        self._session = ort.capi.onnxruntime_inference_collection.InferenceSession(
            path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        self._providers = list(providers or ["CPUExecutionProvider"])

    def get_providers(self):
        return self._providers

    def __getattr__(self, name):
        return getattr(self._session, name)


@pytest.fixture
def gpu_providers(monkeypatch):
    import onnxruntime as ort

    RecordingSession.created = []
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", RecordingSession)
    return RecordingSession.created


def test_tensorrt_provider_gets_the_profile_export_builds_for_and_cuda_as_its_fallback(tiny_export, tmp_path,
                                                                                      gpu_providers):
    from runtime.backends import OnnxRuntimeBackend
    from runtime.backends.tensorrt_ep import profile_options

    plan = plan_engine(tiny_export)  # export's own reading of the ONNX graphs: the independent reference
    mask_onnx = tiny_export.with_name("tiny.masks.onnx")
    for path, expected in ((tiny_export, plan.profiles), (mask_onnx, plan.mask.profiles)):
        backend = OnnxRuntimeBackend(path, providers=("tensorrt",), device=1, cache_root=tmp_path / "cache")
        assert backend.providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        session = gpu_providers[-1]
        assert session["path"] == str(path) and session["providers"] == backend.providers
        trt_options, cuda_options, cpu_options = session["provider_options"]
        assert cuda_options == {"device_id": 1} and cpu_options == {}
        assert trt_options["device_id"] == 1
        assert {k: v for k, v in trt_options.items() if k.startswith("trt_profile_")} == profile_options(expected)
        assert trt_options["trt_engine_cache_path"] == trt_options["trt_timing_cache_path"] == \
            str(backend.tensorrt_cache_dir)
        assert backend.tensorrt_cache_dir.is_relative_to(tmp_path / "cache")  # never beside the model
    assert profile_options(plan.profiles)["trt_profile_min_shapes"] == "images:1x3x571x571,padding_mask:1x571x571"
    assert "hs_kept:1x128" in profile_options(plan.mask.profiles)["trt_profile_min_shapes"]


def test_tensorrt_provider_engine_cache_follows_the_model_contents(tiny_export, tmp_path, gpu_providers):
    from runtime.backends import OnnxRuntimeBackend

    model = tmp_path / "model" / "tiny.onnx"
    model.parent.mkdir()
    model.write_bytes(tiny_export.read_bytes())
    first = OnnxRuntimeBackend(model, providers=("tensorrt",), cache_root=tmp_path / "cache")
    first_path = gpu_providers[-1]["provider_options"][0]["trt_engine_cache_path"]
    edited = onnx.load(str(model))
    edited.doc_string = "retrained"  # same file name, tensor names and versions: only the contents differ
    onnx.save(edited, model)
    second = OnnxRuntimeBackend(model, providers=("tensorrt",), cache_root=tmp_path / "cache")
    second_path = gpu_providers[-1]["provider_options"][0]["trt_engine_cache_path"]
    assert first_path != second_path and first.tensorrt_cache_dir.parent == second.tensorrt_cache_dir.parent
    assert not Path(first_path).exists() and Path(second_path).is_dir()  # the old engines were pruned


def test_tensorrt_provider_with_an_unwritable_cache_still_loads_and_writes_nothing_beside_the_model(
        tiny_export, tmp_path, gpu_providers):
    from runtime.backends import OnnxRuntimeBackend

    model_dir = tmp_path / "read-only models"
    model_dir.mkdir()
    model = model_dir / "tiny.onnx"
    model.write_bytes(tiny_export.read_bytes())
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("")
    with pytest.warns(RuntimeWarning, match="cannot create the TensorRT engine cache"):
        OnnxRuntimeBackend(model, providers=("tensorrt",), cache_root=blocked)
    trt_options = gpu_providers[-1]["provider_options"][0]
    assert "trt_engine_cache_path" not in trt_options and "trt_profile_max_shapes" in trt_options
    assert sorted(p.name for p in model_dir.iterdir()) == ["tiny.onnx"]


def test_tensorrt_provider_without_a_resize_policy_warns_and_builds_per_shape(onnx_path, tmp_path, gpu_providers):
    from runtime.backends import OnnxRuntimeBackend

    model = synthetic_onnx(tmp_path / "nopolicy.onnx", metadata={"panseg_metadata_version": 1})
    with pytest.warns(RuntimeWarning, match="no resize policy"):
        OnnxRuntimeBackend(model, providers=("tensorrt",), cache_root=tmp_path / "cache")
    assert not any(k.startswith("trt_profile_") for k in gpu_providers[-1]["provider_options"][0])


def test_device_flag_reaches_tensorrt_and_the_gpu_providers_only(onnx_path, tmp_path):
    import argparse

    from runtime.backends import add_backend_arguments, backend_options_from_args

    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    plan = tmp_path / "m.plan"
    assert backend_options_from_args(plan, parser.parse_args(["--device", "1"])) == {"device": 1}
    assert backend_options_from_args(plan, parser.parse_args([])) == {"device": 0}
    assert "device" not in backend_options_from_args(onnx_path, parser.parse_args(["--device", "1"]))
    gpu = backend_options_from_args(onnx_path, parser.parse_args(["--device", "1", "--providers", "tensorrt"]))
    assert gpu["device"] == 1 and gpu["providers"] == ("tensorrt",)
    with pytest.raises(PansegError, match="--device must be a CUDA device index"):
        backend_options_from_args(plan, parser.parse_args(["--device", "-1"]))


# ---------------------------------------------------------------- which TensorRT the operator check speaks for


def test_operator_check_names_the_tables_release_and_the_installed_one_when_it_differs(tmp_path):
    from export.trt_operators import installed_tensorrt_version

    table = load_supported_operators()
    custom = helper.make_node("FancyOp", ["images"], ["extra"], name="fancy", domain="com.example")
    model = synthetic_onnx(tmp_path / "custom.onnx", extra_node=custom)
    release = table.tensorrt_version
    for installed, says_installed in ((None, False), (f"{release}.1.29", False), ("11.4.0.12", True)):
        with pytest.raises(PansegError) as info:
            check_tensorrt_compatible(model, table, installed=lambda v=installed: v)
        message = str(info.value)
        assert f"TensorRT {release}'s operator table" in message and "'fancy'" in message and "\n" not in message
        assert ("TensorRT 11.4.0.12 is installed" in message) == says_installed, installed
    # the installed release is read from the wheels' metadata: the meta package or a CUDA-specific build
    assert installed_tensorrt_version({"tensorrt-cu13": "11.4.0.12"}.get) == "11.4.0.12"
    assert installed_tensorrt_version({}.get) is None


# ---------------------------------------------------------------- the installed TensorRT is the authority


def _graph_for_the_parser(path: Path) -> Path:
    """Ops in the main graph (Col2Im: unsupported in the 10.15 table), in an If branch, in a called local function;
    a custom-domain node; and a local function nobody calls."""
    def value(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])

    then_branch = helper.make_graph([helper.make_node("Resize", ["x"], ["t"], name="resize_in_then")], "then", [],
                                    [value("t")])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="copy_in_else")], "else", [],
                                    [value("e")])
    nodes = [helper.make_node("Identity", ["x"], ["a"], name="copy"),
             helper.make_node("Col2Im", ["a", "s", "k"], ["b"], name="col2im"),
             helper.make_node("If", ["cond"], ["c"], name="branch", then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Block", ["c"], ["d"], name="call_block", domain="my"),
             helper.make_node("FancyOp", ["d"], ["y"], name="fancy", domain="com.example")]
    called = helper.make_function("my", "Block", ["i"], ["o"], [helper.make_node("GridSample", ["i", "i"], ["o"],
                                                                                 name="grid")],
                                  [helper.make_opsetid("", 17)])
    unused = helper.make_function("my", "Unused", ["i"], ["o"], [helper.make_node("Unique", ["i"], ["o"], name="u")],
                                  [helper.make_opsetid("", 17)])
    graph = helper.make_graph(nodes, "parser_check", [value("x"), value("cond")], [value("y")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my", 1)],
                                functions=[called, unused]), path)
    return path


def test_plumbing_the_installed_parser_is_asked_about_every_operator_before_parsing(tmp_path):
    path = _graph_for_the_parser(tmp_path / "m.onnx")
    stub = StubTensorRT(supports=lambda op: op not in {"Resize", "GridSample"})
    stub.__version__ = "11.4.0.12"
    with pytest.raises(PansegError) as info:
        build_plan(stub, path, _profiles(), BuildOptions(), progress=False)
    message = str(info.value)
    assert "TensorRT 11.4.0.12's ONNX parser does not support 2 node(s)" in message and "\n" not in message
    assert "'branch/then_branch/resize_in_then' (Resize)" in message and "'my.Block/grid' (GridSample)" in message
    assert "col2im" not in message and "fancy" not in message
    assert not stub.named("parse_from_file") and not stub.named("build")
    # each default-domain op type of the graph, its branches and the called function once; not the call itself, not
    # the custom-domain node (the parse decides those), not the body of a function nobody calls
    assert sorted(op for _, op in stub.named("supports_operator")) == ["Col2Im", "GridSample", "Identity", "If",
                                                                       "Resize"]


def test_plumbing_an_op_the_old_table_refuses_builds_when_the_installed_parser_accepts_it(tmp_path):
    path = _graph_for_the_parser(tmp_path / "m.onnx")
    assert not load_supported_operators().is_supported("Col2Im")  # the 10.15 table would have refused it
    stub = StubTensorRT(supports=lambda op: True)
    stub.__version__ = "11.4.0.12"
    assert build_plan(stub, path, _profiles(), BuildOptions(), progress=False) == b"serialized plan"
    order = [c[0] for c in stub.calls]
    assert order.index("supports_operator") < order.index("parse_from_file") < order.index("build")
    # a parser without supports_operator is not asked: its parse decides (and reports its own errors)
    stub = StubTensorRT(parse_ok=False, parser_errors=[("col2im", "Col2Im", "no importer registered")])
    with pytest.raises(PansegError, match=r"parser failed: node 'col2im' \(Col2Im\): no importer registered"):
        build_plan(stub, path, _profiles(), BuildOptions(), progress=False)


def test_plan_engine_warns_instead_of_refusing_when_another_tensorrt_is_installed(tmp_path, capsys, monkeypatch):
    import export.trt_operators as operators

    release = load_supported_operators().tensorrt_version
    col2im = helper.make_node("Col2Im", ["images", "s", "k"], ["extra"], name="col2im")
    model = synthetic_onnx(tmp_path / "model.onnx", extra_node=col2im)
    monkeypatch.setattr(operators, "installed_tensorrt_version", lambda: "11.4.0.12")
    code, out, err = _run([model, "--dry-run"], capsys)
    assert code == 0 and "trtexec --onnx=" in out
    assert err.count("\n") == 1 and err.startswith("warning: "), err
    assert f"TensorRT {release}'s operator table doubts it" in err and "'col2im' (Col2Im, unsupported)" in err
    assert "TensorRT 11.4.0.12 is installed, so its ONNX parser decides" in err
    # no TensorRT installed (a dry-run machine), or the table's own release: the table still refuses
    for installed in (None, f"{release}.1.29"):
        monkeypatch.setattr(operators, "installed_tensorrt_version", lambda v=installed: v)
        with pytest.raises(PansegError, match=r"would refuse it .*'col2im' \(Col2Im, unsupported\)"):
            plan_engine(model)
        assert capsys.readouterr().err == ""
    # a custom-domain node needs a plugin in any release: refused whatever is installed
    monkeypatch.setattr(operators, "installed_tensorrt_version", lambda: "11.4.0.12")
    custom = helper.make_node("FancyOp", ["images"], ["extra"], name="fancy", domain="com.example")
    with pytest.raises(PansegError, match=r"custom domain.*'fancy' \(com.example::FancyOp"):
        plan_engine(synthetic_onnx(tmp_path / "custom.onnx", extra_node=custom))


def test_plumbing_with_another_tensorrt_installed_its_parser_decides_the_build(tmp_path, capsys, monkeypatch):
    import export.trt_operators as operators
    import runtime.backends.tensorrt_backend as backend_module

    col2im = helper.make_node("Col2Im", ["images", "s", "k"], ["extra"], name="col2im")
    model = synthetic_onnx(tmp_path / "model.onnx", extra_node=col2im)
    monkeypatch.setattr(operators, "installed_tensorrt_version", lambda: "11.4.0.12")
    monkeypatch.setattr(backend_module, "import_cudart", lambda: object())
    monkeypatch.setattr(backend_module, "current_gpu", lambda cudart=None, device=0: L4)
    for accepts, plan in ((True, tmp_path / "yes.plan"), (False, tmp_path / "no.plan")):
        stub = StubTensorRT(plan=b"stub plan bytes", supports=lambda op, a=accepts: a or op != "Col2Im")
        stub.__version__ = "11.4.0.12"
        monkeypatch.setitem(sys.modules, "tensorrt", stub)
        code, _, err = _run([model, "-o", plan, "--no-progress"], capsys)
        assert err.startswith("warning: ") and "'col2im' (Col2Im" in err
        if accepts:
            assert code == 0 and plan.read_bytes() == b"stub plan bytes"
        else:
            assert code == 1 and not plan.exists() and not sidecar_path(plan).exists()
            assert err.count("\n") == 2 and "error: " in err
            assert "TensorRT 11.4.0.12's ONNX parser does not support 1 node(s) (asked before parsing): 'col2im' " \
                   "(Col2Im)" in err


def test_fake_gpu_pair_refuses_more_kept_queries_than_the_mask_engine_holds_before_writing_to_it(fake_gpu, tmp_path):
    from runtime.backends.tensorrt_pair import TensorRTPair

    _, _, det_plan, mask_plan = _fake_pair(fake_gpu, tmp_path, 5, SMALL)

    def keep_every_query_twice(logits, boxes):  # a selection rule gone wrong: more pairs than the profile allows
        q = np.repeat(np.arange(logits.shape[0]), 2)
        return q, np.ones(q.size, np.float32), np.zeros(q.size, np.int64)

    with TensorRTBackend(det_plan) as det, TensorRTBackend(mask_plan) as mask_backend:
        pair = TensorRTPair(det, mask_backend)
        with pytest.raises(PansegError, match=r"m\.masks\.plan: input hs_kept has shape 20x16, .*allowed 1\.\.10"):
            pair.run(_fake_images([(64, 64), (64, 64)], 1), 0.5, select=keep_every_query_twice)
        assert pair.transfers().d2d_copies == 0

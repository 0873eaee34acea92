"""`python -m export.precision`: FP16 and INT8 variants of a tiny export, read back from their graphs, calibrated
deterministically with a reusable cache, compared with fp32, gated, and run by the torch-free runtime.

The tiny model's exports get a small resize policy (shorter side 128) written into their metadata, so that
calibration, the sweep and verification (all at the model's own policy) take seconds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import run_without_torch, separable, synthetic_images
from onnx import numpy_helper

from export.onnx import export_checkpoint, read_metadata
from export.onnx.metadata import write_metadata
from export.onnx.verify.images import list_images
from export.precision.__main__ import main
from export.precision.agreement import compare_runs, run_images
from export.precision.calibration import MIN_KEPT, CalibrationImages, cache_path, kept_for_calibration
from export.precision.fp16 import FLOAT32_OPS
from export.precision.int8 import Int8Flavour, cpu_flags
from export.precision.sensitivity import sensitivity_sweep
from export.precision.variant import Int8Plan, Source, write_int8
from export.tensorrt import plan_engine
from runtime.categories import categories_to_json
from runtime.contract import KEY_PRECISION, mask_graph_name
from runtime.errors import PansegError
from runtime.model import load_model
from runtime.model_info import PrecisionInfo, parse_precision
from runtime.postprocess import PanopticResult
from train.checkpoint import save_checkpoint
from train.models import build_model
from train.prepare.synthetic import categories as synthetic_categories

SIZE, MAX_SIZE = 128, 213
# Category-map agreement with fp32 each variant of the tiny confident model keeps on the test images (mean).
FLOORS = {"fp16": 0.99, "int8-cpu": 0.8, "int8-tensorrt": 0.8}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("precision")


@pytest.fixture(scope="module")
def images(workdir) -> Path:
    return synthetic_images(workdir / "images")


def _small_policy(path: Path) -> Path:
    model = onnx.load(str(path))
    metadata = read_metadata(model)
    metadata["resize"] = {"size": SIZE, "max_size": MAX_SIZE}
    write_metadata(model, metadata)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def exports(workdir) -> dict[str, Path]:
    torch.manual_seed(0)
    model = separable(build_model(TINY))
    ckpt = workdir / "tiny.pth"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": TINY.to_dict(), "epoch": 3,
                           "categories": categories_to_json(synthetic_categories())})
    pair = export_checkpoint(ckpt, workdir / "pair.onnx", run_verification=False, progress=False).path
    full = export_checkpoint(ckpt, workdir / "full.onnx", run_verification=False, progress=False, full=True).path
    return {"pair": _small_policy(pair), "full": _small_policy(full)}


def _variant(exports, images, workdir, name: str, *flags: str, source: str = "pair") -> Path:
    output = workdir / f"{name}-{source}.onnx"
    if not output.exists():
        code = main([str(exports[source]), "-o", str(output), "--no-progress", "--cache-dir", str(workdir / "cache"),
                     "--json", str(output.with_suffix(".json")), *flags])
        assert code == 0
    return output


@pytest.fixture(scope="module")
def variants(exports, images, workdir) -> dict[str, Path]:
    calib = ["--calibration-images", str(images)]
    return {
        "fp16": _variant(exports, images, workdir, "fp16", "--precision", "fp16", "--verify-images", str(images)),
        "int8-cpu": _variant(exports, images, workdir, "int8-cpu", "--precision", "int8", "--int8-target", "cpu",
                             *calib),  # with the sensitivity sweep
        "int8-tensorrt": _variant(exports, images, workdir, "int8-trt", "--precision", "int8", "--int8-target",
                                  "tensorrt", "--float-blocks", *calib),  # everything quantized
    }


def _graphs(path: Path) -> list[onnx.ModelProto]:
    return [onnx.load(str(path)), onnx.load(str(path.with_name(mask_graph_name(path))))]


def _zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [init[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]


def test_tensorrt_flavour_is_symmetric_qdq_with_per_channel_conv_weights(variants):
    for graph in _graphs(variants["int8-tensorrt"]):
        zero_points = _zero_points(graph)
        assert zero_points, "no QuantizeLinear in the graph"
        assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
        init = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
        conv_weights = [n for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init
                        and init[n.input[0]].ndim == 4]
        assert conv_weights
        for node in conv_weights:
            axis = {a.name: a.i for a in node.attribute}.get("axis", 1)
            weight, scale = init[node.input[0]], init[node.input[1]]
            assert axis == 0 and weight.dtype == np.int8 and scale.shape == (weight.shape[0],)
            assert not init[node.input[2]].any()


def test_cpu_flavour_has_uint8_activations(variants):
    for graph in _graphs(variants["int8-cpu"]):
        zero_points = _zero_points(graph)
        assert zero_points and all(z.dtype == np.uint8 for z in zero_points)


def test_fp16_keeps_the_listed_operators_in_float32(variants):
    for graph in _graphs(variants["fp16"]):
        inferred = onnx.shape_inference.infer_shapes(graph)
        types = {v.name: v.type.tensor_type.elem_type for v in
                 [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
        types.update({t.name: t.data_type for t in graph.graph.initializer})
        blocked = [n for n in graph.graph.node if n.op_type in FLOAT32_OPS]
        assert blocked
        for node in blocked:
            assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
            assert types[node.output[0]] == onnx.TensorProto.FLOAT, node.name
        convs = [n for n in graph.graph.node if n.op_type == "Conv"]
        assert convs and all(types[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)
        assert all(v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL,
                                                    onnx.TensorProto.INT64)
                   for v in [*graph.graph.input, *graph.graph.output])


def test_metadata_records_the_precision(variants, images):
    for name, path in variants.items():
        for graph in _graphs(path):
            entry = read_metadata(graph)[KEY_PRECISION]
            assert entry["precision"] == name.split("-")[0]
        with load_model(path) as model:
            info = model.info.precision
        assert info.precision == name.split("-")[0]
        if info.precision == "int8":
            assert info.int8_target == name.split("-")[1]
            assert info.calibration_method == "minmax" and info.calibration_images == 3
            assert info.calibration_digest == CalibrationImages.load(list_images(images), model.info).digest
        else:
            assert {n.split("/")[-1].split("_")[0] for n in info.float_nodes} == set(FLOAT32_OPS)


def test_sweep_table_lists_every_block(variants):
    report = json.loads(variants["int8-cpu"].with_suffix(".json").read_text())
    rows = report["sensitivity"]["rows"]
    assert rows[0]["step"] == "all quantized"
    if rows[0]["category_agreement"] < report["sensitivity"]["target_category_agreement"]:
        singles = {r["float_blocks"][0] for r in rows if r["step"] == "one block in float"}
        assert singles == {"backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4", "encoder",
                           "decoder", "heads", "mask head"}
    assert report["int8"]["float_blocks"] == report["sensitivity"]["chosen"]


def test_each_variant_agrees_with_fp32(variants, exports, images):
    paths = list_images(images)
    reference = run_images(exports["pair"], paths)
    with load_model(exports["pair"]) as model:
        categories = model.info.categories
    for name, path in variants.items():
        agreement = compare_runs(reference, run_images(path, paths), categories)
        assert agreement.category_agreement >= FLOORS[name], (name, agreement)
    # and agreement can fail: fp32 against itself with the first image's segments dropped
    damaged = [replace(reference[0], result=PanopticResult(np.zeros_like(reference[0].result.id_map))),
               *reference[1:]]
    worse = compare_runs(reference, damaged, categories)
    assert worse.worst_category_agreement == 0.0 and worse.pq < 100.0


def test_full_graph_int8(exports, images, workdir):
    path = _variant(exports, images, workdir, "int8-trt", "--precision", "int8", "--float-blocks",
                    "--calibration-images", str(images), source="full")
    graph = onnx.load(str(path))
    assert not path.with_name(mask_graph_name(path)).exists()
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.graph.node}
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["verification"]["category_agreement"] >= FLOORS["int8-tensorrt"]


def test_calibration_is_deterministic_and_cached(exports, images, workdir):
    with load_model(exports["pair"]) as model:
        info = model.info
    source = Source.open(exports["pair"], info)
    paths = list_images(images)
    calib = CalibrationImages.load(paths, info)
    flavour = Int8Flavour.for_target("tensorrt")

    def scales(folder: str, method: str = "minmax", use: CalibrationImages = calib) -> tuple[dict, bool]:
        plan = Int8Plan(flavour, method, use, workdir / folder)
        out_dir = workdir / f"det-{folder}-{method}"
        out_dir.mkdir(exist_ok=True)
        files, cached = write_int8(source, plan, [], out_dir / "m.onnx", out_dir)
        graphs = [onnx.load(str(f)) for f in files]
        return {t.name: t.SerializeToString() for g in graphs for t in g.graph.initializer
                if t.name.endswith("_scale")}, cached

    first, cached_first = scales("cache-a")
    second, cached_second = scales("cache-b")  # a fresh cache: calibrated again
    assert not cached_first and not cached_second
    assert first and first == second
    third, cached_third = scales("cache-a")  # the same images and method: from the cache
    assert cached_third and third == first
    _, cached_method = scales("cache-a", "percentile")  # another method: calibrated again
    assert not cached_method
    fewer = CalibrationImages.load(paths[:2], info)
    assert cache_path(exports["pair"], fewer, "minmax", "tensorrt", workdir / "cache-a") != \
        cache_path(exports["pair"], calib, "minmax", "tensorrt", workdir / "cache-a")
    _, cached_images = scales("cache-a", use=fewer)
    assert not cached_images


def test_gate_fails_with_one_line(exports, images, workdir, capsys):
    output = workdir / "gated.onnx"
    code = main([str(exports["pair"]), "-o", str(output), "--precision", "fp16", "--verify-images", str(images),
                 "--max-pq-drop", "-1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "gate failed" in err[0] and "--max-pq-drop" in err[0]
    assert not output.exists()


def test_bad_input_is_one_line(exports, workdir, capsys):
    code = main([str(exports["pair"]), "-o", str(workdir / "x.onnx"), "--precision", "int8", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--calibration-images" in err[0]
    code = main([str(workdir / "missing.onnx"), "-o", str(workdir / "x.onnx"), "--precision", "fp16"])
    assert code == 1 and "no such model file" in capsys.readouterr().err


def test_tensorrt_refuses_the_cpu_flavour_only(variants):
    with pytest.raises(PansegError, match="CPU-flavour"):
        plan_engine(variants["int8-cpu"])
    for name in ("int8-tensorrt", "fp16"):  # planned (operators, metadata, mask graph digest) without complaint
        assert plan_engine(variants[name]).mask is not None


def test_runtime_runs_every_variant_without_torch(variants, images):
    code = f"""
        import numpy as np
        from runtime.model import load_model
        from runtime.model_info import read_precision
        from runtime.preprocess import load_and_preprocess, pad_batch
        for path in {[str(p) for p in variants.values()]!r}:
            with load_model(path) as model:
                array, _ = load_and_preprocess({str(next(images.iterdir()))!r}, 128, 213)
                out = model.run(*pad_batch([array]), model.info.threshold)
                assert np.isfinite(out.pred_logits).all()
                print(read_precision(path).precision, model.info.precision.precision, len(out.kept[0].indices))
    """
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [["fp16", "fp16"], ["int8", "int8"],
                                                                         ["int8", "int8"]]


def test_precision_metadata_parsing():
    assert parse_precision(None) == PrecisionInfo()
    assert parse_precision({"precision": "fp16"}).precision == "fp16"
    with pytest.raises(PansegError, match="int8 target"):
        parse_precision({"precision": "int8", "int8_target": "gpu"}, "m.onnx")
    with pytest.raises(PansegError, match="m.onnx"):
        parse_precision({"precision": "int4"}, "m.onnx")


def test_kept_for_calibration_falls_back_to_top_k():
    logits = np.zeros((10, 4), np.float32)
    logits[:, -1] = 5.0  # every query says "no object"
    logits[7, 1] = 9.0  # one confident query
    keep = kept_for_calibration(logits, 0.85)
    assert keep.size == MIN_KEPT and 7 in keep.tolist()
    logits[:6, 2] = 20.0
    assert kept_for_calibration(logits, 0.85).tolist() == [0, 1, 2, 3, 4, 5, 7]


def test_sweep_keeps_the_most_helpful_blocks_until_the_target():
    from export.precision.agreement import Agreement

    helps = {"a": 0.02, "b": 0.05, "c": 0.0}

    def measure(blocks):
        return Agreement(images=1, category_agreement=0.9 + sum(helps[b] for b in blocks))

    chosen, rows = sensitivity_sweep(["a", "b", "c"], {"a": 1, "b": 2, "c": 3}, measure, target=0.96, budget=2)
    assert chosen == ["b", "a"]
    assert [r.step for r in rows] == ["all quantized"] + ["one block in float"] * 3 + ["chosen so far"]
    chosen, _ = sensitivity_sweep(["a", "b", "c"], {}, measure, target=0.94, budget=2)
    assert chosen == ["b"]
    chosen, rows = sensitivity_sweep(["a", "b", "c"], {}, measure, target=0.5, budget=2)
    assert chosen == [] and len(rows) == 1


def test_cpu_flavour_reduces_range_only_without_vnni(tmp_path):
    assert Int8Flavour.for_target("cpu", {"avx2"}).reduce_range
    assert not Int8Flavour.for_target("cpu", {"avx2", "avx512_vnni"}).reduce_range
    tensorrt = Int8Flavour.for_target("tensorrt", {"avx2"})
    assert tensorrt.activation_type == "int8" and tensorrt.symmetric_activations and not tensorrt.reduce_range
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n")
    assert "avx_vnni" in cpu_flags(cpuinfo) and cpu_flags(tmp_path / "missing") == set()

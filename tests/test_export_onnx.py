"""`python -m export.onnx`: export, metadata, verification and bad input, checked against PyTorch eager directly."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import random_padded_batch as _padded_batch
from conftest import separable as _separable
from conftest import synthetic_images
from PIL import Image

import export.onnx.__main__ as export_cli
import runtime.postprocess
from export.onnx import Tolerances, export_checkpoint, read_metadata, verification_is_thing
from export.onnx.__main__ import main
from export.onnx.graph import FullModel, ShapePolicy
from export.onnx.loading import load_for_export
from export.onnx.verify import compare_panoptic, list_images, runners, verify
from export.trt_operators import check_tensorrt_compatible, unsupported_nodes
from runtime.backends import OnnxRuntimeBackend
from runtime.categories import Category, categories_to_json
from runtime.coco_categories import coco_panoptic_categories
from runtime.errors import PansegError
from runtime.model import PanopticModel
from runtime.postprocess import PanopticResult
from runtime.preprocess import DEFAULT_MAX_SIZE, DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD
from train.checkpoint import save_checkpoint
from train.models import DETRConfig, build_model
from train.prepare.synthetic import categories as synthetic_categories

REPO = Path(__file__).resolve().parents[1]
R50_LAYOUT = Path(__file__).parent / "fixtures" / "detr_r50_panoptic_state_dict.json"
TINY_DET = TINY.replace(masks=False, hidden_dim=64)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export_onnx")


@pytest.fixture(scope="module")
def images_dir(workdir) -> Path:
    return synthetic_images(workdir / "images")


@pytest.fixture(scope="module")
def tiny_ckpt(workdir) -> Path:
    torch.manual_seed(0)
    model = _separable(build_model(TINY))
    path = workdir / "tiny.pth"
    save_checkpoint(path, {"model": model.state_dict(), "config": TINY.to_dict(), "epoch": 3,
                           "categories": categories_to_json(synthetic_categories())})
    return path


@pytest.fixture(scope="module")
def tiny_export(tiny_ckpt, workdir, images_dir):
    # detr's single graph (--full): the query-sparse default has its own tests in test_sparse.py
    return export_checkpoint(tiny_ckpt, workdir / "tiny.onnx", verify_images=images_dir, verify_sizes=(64, 80),
                             verify_max_images=2, progress=False, full=True)


@pytest.fixture(scope="module")
def tiny_eager(tiny_ckpt) -> FullModel:
    return FullModel(load_for_export(tiny_ckpt).model, panoptic=True).eval()


# ---------------------------------------------------------------- round trip of a small panoptic model


def test_export_verifies_and_reports_every_case(tiny_export):
    report = tiny_export.report
    assert tiny_export.path.name == "tiny.onnx" and tiny_export.path.is_file()
    assert report.verdict == "PASSED", report.problems
    assert report.checks == {"onnx_checker": "ok", "no_float64": "ok", "tensorrt_operators": "ok",
                             "dynamic_dims": "ok"}
    assert {r.case for r in report.runs} == {"64 b1", "64 b2", "80 b1", "80 b2"}
    padded = [r for r in report.runs if r.case.endswith("b2")]
    assert padded and all(r.input_shape[0] == 2 for r in padded)
    # the panoptic comparison compared real segments, not two empty results
    assert sum(n for r in report.runs for n in r.segments) > 0
    assert all(p > 0.999 for r in report.runs for p in r.pixel_agreement)


@pytest.mark.parametrize("shapes", [[(64, 64)], [(64, 96)], [(96, 80)], [(96, 80), (64, 96)],
                                    [(64, 64), (48, 64), (64, 40)]],
                         ids=["64x64", "64x96", "96x80", "b2-padded", "b3-padded"])
def test_onnxruntime_matches_eager_at_any_size_and_batch(tiny_export, tiny_eager, shapes):
    """Traced at batch 2 and 96x128: other sizes and batch sizes 1 and 3 must give eager's outputs on the very same
    padded batch (a batch size frozen into a Reshape/Tile constant would break batch 1 and 3)."""
    images, mask = _padded_batch(shapes, seed=len(shapes))
    session = ort.InferenceSession(str(tiny_export.path), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"images": images, "padding_mask": mask}), strict=True))
    with torch.no_grad():
        ref = tiny_eager(torch.from_numpy(images), torch.from_numpy(mask))
    for name, expected, atol in zip(("pred_logits", "pred_boxes", "pred_masks"), ref, (1e-4, 1e-5, 1e-3),
                                    strict=True):
        assert got[name].shape == tuple(expected.shape)
        np.testing.assert_allclose(got[name], expected.numpy(), atol=atol, rtol=1e-4, err_msg=name)
    h, w = images.shape[2:]
    assert got["pred_masks"].shape[2:] == (-(-h // 4), -(-w // 4))


def test_graph_inputs_are_symbolic_and_operators_tensorrt_parseable(tiny_export):
    model = onnx.load(str(tiny_export.path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert dims["images"] == ["batch", 3, "height", "width"]
    assert dims["padding_mask"] == ["batch", "height", "width"]
    assert dims["pred_logits"] == ["batch", TINY.num_queries, TINY.num_classes + 1]
    assert dims["pred_masks"] == ["batch", TINY.num_queries, "mask_height", "mask_width"]
    assert model.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    assert unsupported_nodes(model) == []
    check_tensorrt_compatible(tiny_export.path)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert all(t.data_type != onnx.TensorProto.DOUBLE for t in model.graph.initializer)


def test_metadata_describes_the_model(tiny_export, tiny_ckpt):
    meta = read_metadata(tiny_export.path)
    assert meta["categories"] == categories_to_json(synthetic_categories())
    assert meta["categories_source"] == "checkpoint"
    assert meta["normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert meta["resize"] == {"size": DEFAULT_SIZE, "max_size": DEFAULT_MAX_SIZE}
    assert meta["threshold"] == 0.85
    assert (meta["num_queries"], meta["num_classes"], meta["model_kind"]) == (10, 12, "panoptic")
    assert meta["source_checkpoint"] == {"file": "tiny.pth",
                                         "sha256": hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()}
    assert DETRConfig.from_dict(meta["model_config"]) == TINY
    assert list(meta["inputs"]) == ["images", "padding_mask"]
    assert meta["inputs"]["padding_mask"]["dtype"] == "bool"
    assert list(meta["outputs"]) == ["pred_logits", "pred_boxes", "pred_masks"]
    assert meta["outputs"]["pred_masks"]["shape"] == ["batch", 10, "mask_height", "mask_width"]
    assert meta["exporter"]["opset"] == 17 and meta["exporter"]["torch"] == torch.__version__.split("+")[0]
    assert meta["panseg_version"]
    # the runtime reads the same values without any side file
    with OnnxRuntimeBackend(tiny_export.path, optimized_cache=False) as backend:
        assert json.loads(backend.metadata()["categories"]) == meta["categories"]
        assert [s.name for s in backend.output_specs()] == ["pred_logits", "pred_boxes", "pred_masks"]


def test_compare_panoptic_counts_relabelled_segments_as_equal_and_spots_changes():
    a = np.array([[1, 1, 2], [1, 2, 2]], np.uint32)
    seg = [{"id": 1, "category_id": 3}, {"id": 2, "category_id": 7}]
    relabelled = PanopticResult(np.where(a == 1, 5, 9).astype(np.uint32),
                                [{"id": 5, "category_id": 3}, {"id": 9, "category_id": 7}])
    assert compare_panoptic(PanopticResult(a, seg), relabelled) == (1.0, True)
    moved = PanopticResult(np.array([[1, 1, 1], [1, 2, 2]], np.uint32), seg)
    agreement, same = compare_panoptic(PanopticResult(a, seg), moved)
    assert agreement == pytest.approx(5 / 6) and same
    recat = PanopticResult(a, [{"id": 1, "category_id": 3}, {"id": 2, "category_id": 8}])
    assert compare_panoptic(PanopticResult(a, seg), recat) == (1.0, False)


# ---------------------------------------------------------------- verification runs the deployed path


@pytest.fixture(scope="module")
def tiny_pair(tiny_ckpt, workdir) -> Path:
    """The default query-sparse pair, exported unverified: the tests below verify it themselves."""
    return export_checkpoint(tiny_ckpt, workdir / "pair.onnx", run_verification=False, progress=False).path


@pytest.mark.parametrize("layout", ["single graph", "query-sparse pair"])
def test_verification_runs_the_deployed_functions_on_every_image(layout, tiny_export, tiny_pair, tiny_ckpt,
                                                                 images_dir, monkeypatch):
    """Every verified batch goes through PanopticModel.run and every image through the runtime's segment_kept, fed
    with exactly what that engine stage kept; the report's panoptic comparison is of their results; and nothing is
    written next to the model (no optimized-model cache)."""
    path = tiny_export.path if layout == "single graph" else tiny_pair
    assert runners.segment_kept is runtime.postprocess.segment_kept  # the runtime's own function, not a copy
    real_run, real_segment = PanopticModel.run, runtime.postprocess.segment_kept
    engine_calls: list[tuple[PanopticModel, int, object]] = []
    segmented: list[object] = []

    def spy_run(self, images, padding_mask, threshold, nms_iou=None):
        out = real_run(self, images, padding_mask, threshold, nms_iou)
        engine_calls.append((self, len(images), out))
        return out

    def spy_segment(kept, *args, **kwargs):
        segmented.append(kept)
        return real_segment(kept, *args, **kwargs)

    monkeypatch.setattr(PanopticModel, "run", spy_run)
    monkeypatch.setattr(runners, "segment_kept", spy_segment)
    loaded = load_for_export(tiny_ckpt)
    before = sorted(p.name for p in path.parent.iterdir())

    def run_verification():
        return verify(path, loaded.model, True, ShapePolicy(), verification_is_thing(loaded),
                      list_images(images_dir, 2), sizes=(64,), progress=False)

    report = run_verification()
    assert report.passed, report.problems
    assert sorted(p.name for p in path.parent.iterdir()) == before
    assert [n for _, n, _ in engine_calls] == [len(r.images) for r in report.runs]
    assert {model.query_sparse for model, _, _ in engine_calls} == {layout == "query-sparse pair"}
    kept_by_engine = [kept for _, _, out in engine_calls for kept in out.kept]
    assert len(segmented) == len(kept_by_engine) == sum(len(r.images) for r in report.runs) == 4
    assert all(a is b for a, b in zip(segmented, kept_by_engine, strict=True))
    assert sum(n for r in report.runs for n in r.segments) > 0

    # the report compares what segment_kept returned: an all-VOID stand-in must fail where eager has segments
    def all_void(kept, processed, original, *args, **kwargs):
        return PanopticResult(np.zeros(original, np.uint32))

    monkeypatch.setattr(runners, "segment_kept", all_void)
    broken = run_verification()
    assert not broken.passed
    assert [s for r in broken.runs for s in r.same_segments] == [n == 0 for r in broken.runs for n in r.segments]


def test_verification_images_are_checked_before_the_export(tiny_ckpt, workdir, images_dir, capsys):
    not_an_image = workdir / "notes.txt"
    not_an_image.write_text("hello")
    empty = workdir / "empty_folder"
    empty.mkdir()
    cases = {workdir / "absent": "no such folder or image file", not_an_image: "not an image file",
             empty: "no images"}
    for source, expected in cases.items():
        out = workdir / "never.onnx"
        code = main([str(tiny_ckpt), "-o", str(out), "--verify-images", str(images_dir), str(source), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1 and f"{source}: {expected}" in err, err
        assert not out.exists()
    # folders and files mix, in order, each once, at most max_images
    first = sorted(images_dir.iterdir())[0]
    assert list_images([first, images_dir], 10) == sorted(images_dir.iterdir())
    assert list_images([images_dir, first], 2) == sorted(images_dir.iterdir())[:2]
    with pytest.raises(PansegError, match="no verification images given"):
        list_images([])


def test_cli_default_without_verify_images_generates_synthetic_ones_and_says_so(tmp_path, monkeypatch):
    """Without --verify-images and without the synthetic data set, the CLI verifies on generated images (as the
    export always did) in a temporary folder, and its note says what to pass instead."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(export_cli, "REPO_ROOT", tmp_path)
    args = export_cli.build_parser().parse_args(["model.pth"])
    with export_cli.verification_images(args) as (sources, note):
        images = list_images(sources)
        assert len(images) == export_cli.GENERATED_IMAGES and all(Image.open(p).height == 64 for p in images)
        assert "generated synthetic images" in note and "--verify-images" in note
    assert not images[0].parent.exists()  # removed afterwards
    val = tmp_path / export_cli.DEFAULT_VERIFY_FOLDER
    val.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(val / "a.png")
    with export_cli.verification_images(args) as (sources, note):
        assert list_images(sources) == [export_cli.DEFAULT_VERIFY_FOLDER / "a.png"] and "--verify-images" in note
    given = export_cli.build_parser().parse_args(["model.pth", "--verify-images", "x", "y", "--verify-images", "z"])
    with export_cli.verification_images(given) as (sources, note):
        assert sources == ["x", "y", "z"] and note is None
    with export_cli.verification_images(export_cli.build_parser().parse_args(["m.pth", "--no-verify"])) as found:
        assert found == (None, None)


# ---------------------------------------------------------------- other models and shapes


def test_static_shape_export_fixes_dims_and_verifies(tiny_ckpt, workdir, images_dir, capsys):
    out = workdir / "static.onnx"
    code = main([str(tiny_ckpt), "-o", str(out), "--full", "--static-shape", "64x96", "--batch", "2", "--no-simplify",
                 "--verify-images", str(images_dir), "--verify-max-images", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "verification PASSED" in printed and "64x96 b2" in printed
    model = onnx.load(str(out))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 64, 96]
    assert [d.dim_value for d in model.graph.output[2].type.tensor_type.shape.dim] == [2, 10, 16, 24]


def test_detection_only_checkpoint_exports_boxes_only(workdir, images_dir, capsys):
    torch.manual_seed(1)
    ckpt = workdir / "det.pth"
    cats = [Category(1, "a", True), Category(2, "b", True)]
    save_checkpoint(ckpt, {"model": build_model(TINY_DET).state_dict(), "config": TINY_DET.to_dict(),
                           "categories": categories_to_json(cats)})
    out = workdir / "det.onnx"
    report = workdir / "det_report.json"
    code = main([str(ckpt), "-o", str(out), "--verify-images", str(images_dir), "--verify-sizes", "64",
                 "--verify-max-images", "1", "--json", str(report), "--no-progress"])
    assert code == 0, capsys.readouterr()
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["pred_logits", "pred_boxes"]
    assert read_metadata(model)["model_kind"] == "detection"
    saved = json.loads(report.read_text())
    assert saved["verdict"] == "PASSED" and set(saved["runs"][0]["errors"]) == {"pred_logits", "pred_boxes"}
    check_tensorrt_compatible(model)


@pytest.fixture(scope="module")
def r50_state_dict() -> dict[str, torch.Tensor]:
    """detr's released R50 panoptic layout (names, shapes, dtypes from the shared listing), randomly initialised."""
    listing = json.loads(R50_LAYOUT.read_text())["tensors"]
    torch.manual_seed(0)
    state = build_model(DETRConfig()).state_dict()
    assert [(t["name"], t["shape"], t["dtype"]) for t in listing] == \
           [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    return state


def detr_main_args() -> argparse.Namespace:
    """What detr's main.py pickles under 'args' for the R50 panoptic configuration."""
    return argparse.Namespace(lr_backbone=1e-5, backbone="resnet50", dilation=False, position_embedding="sine",
                              enc_layers=6, dec_layers=6, dim_feedforward=2048, hidden_dim=256, dropout=0.1,
                              nheads=8, num_queries=100, pre_norm=False, masks=True, aux_loss=True,
                              dataset_file="coco_panoptic", frozen_weights=None)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["release (model only)", "main.py (Namespace args)"])
def test_detr_r50_panoptic_checkpoints_export_and_verify(r50_state_dict, workdir, images_dir, layout):
    ckpt = workdir / "detr-r50-panoptic-00ce5173.pth"
    if layout.startswith("release"):
        torch.save({"model": r50_state_dict}, ckpt)
    else:
        torch.save({"model": r50_state_dict, "optimizer": {}, "epoch": 24, "args": detr_main_args()}, ckpt)
    result = export_checkpoint(ckpt, workdir / "r50.onnx", simplify=False, verify_images=images_dir,
                               verify_sizes=(64,), verify_max_images=1, progress=False)
    assert result.report.verdict == "PASSED", result.report.problems
    assert result.loaded.config == DETRConfig()
    meta = read_metadata(result.path)
    assert meta["categories"] == categories_to_json(coco_panoptic_categories())
    assert all(c["isthing"] == int(c["id"] <= 90) for c in meta["categories"])
    assert (meta["num_classes"], meta["num_queries"]) == (250, 100)
    check_tensorrt_compatible(result.path)


def test_detr_main_checkpoint_with_namespace_args_gets_config_and_coco_categories(r50_state_dict, workdir):
    ckpt = workdir / "checkpoint.pth"
    torch.save({"model": r50_state_dict, "optimizer": {}, "epoch": 24, "args": detr_main_args()}, ckpt)
    loaded = load_for_export(ckpt)
    assert loaded.config == DETRConfig() and loaded.panoptic
    assert loaded.categories == coco_panoptic_categories()
    assert loaded.categories_source.startswith("coco-panoptic")


def test_categories_file_overrides_and_is_checked_against_the_model(tiny_ckpt, workdir):
    good = workdir / "cats.json"
    good.write_text(json.dumps({"categories": [{"id": 3, "name": "x", "isthing": 0, "color": [1, 2, 3]}]}))
    loaded = load_for_export(tiny_ckpt, categories_file=good)
    assert list(loaded.categories) == [3] and loaded.categories_source == f"--categories {good}"
    too_big = workdir / "cats_big.json"
    too_big.write_text(json.dumps([{"id": 12, "name": "y"}]))
    with pytest.raises(Exception, match=r"category ids \[12\].*outside the model's classes 0\.\.11"):
        load_for_export(tiny_ckpt, categories_file=too_big)


# ---------------------------------------------------------------- bad input


class NotPlainData:
    """Pickled into a checkpoint, this would need arbitrary code to load."""


def _bad_inputs(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    state = torch.load(good, weights_only=True)["model"]
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (folder / "nope.pth", "no such checkpoint file")
    truncated = folder / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = (truncated, "truncated or corrupt")
    text = folder / "notes.pth"
    text.write_text("not a checkpoint\n")
    cases["not a checkpoint"] = (text, "a text file, not a PyTorch checkpoint")
    a_list = folder / "list.pth"
    torch.save([1, 2, 3], a_list)
    cases["plain data, not a checkpoint"] = (a_list, "not a checkpoint")
    unknown = folder / "unknown_keys.pth"
    torch.save({"model": {**state, "detr.extra_head.weight": torch.zeros(3)}}, unknown)
    cases["unknown keys"] = (unknown, "unexpected: detr.extra_head.weight")
    backbone = folder / "backbone.pth"
    torch.save({"model": {k: v for k, v in state.items() if ".layer4.1." not in k}}, backbone)
    cases["unsupported backbone"] = (backbone, "is none of")
    pickled = folder / "pickled.pth"
    torch.save({"model": state, "extra": NotPlainData()}, pickled)
    cases["pickled object"] = (pickled, "refused to load")
    return cases


def test_bad_inputs_give_one_line_exit_1_and_no_file(tiny_ckpt, workdir, capsys):
    folder = workdir / "bad"
    folder.mkdir()
    for label, (ckpt, expected) in _bad_inputs(folder, tiny_ckpt).items():
        out = folder / "out" / "model.onnx"
        code = main([str(ckpt), "-o", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 1, label
        assert expected in err, (label, err)
        assert len(err.splitlines()) == 1 and str(ckpt) in err, (label, err)
        assert not out.exists() and not list(folder.glob("**/*.onnx")) and not list(folder.glob("**/*.tmp")), label


def test_command_line_entry_point_reports_errors(workdir):
    proc = subprocess.run([sys.executable, "-m", "export.onnx", str(workdir / "absent.pth")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"python -m export.onnx: error: {workdir / 'absent.pth'}: no such checkpoint file"]
    assert not (REPO / "absent.onnx").exists()


HEAVY = {"torch", "torchvision", "onnx", "onnxruntime", "onnxslim", "tensorrt"}


def _run_recording_imports(*argv: str, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str], float]:
    """``python -X importtime -m export.onnx ARGV``: the process, the modules it imported, its wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "export.onnx", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    lines = proc.stderr.splitlines()
    modules = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    modules.discard("package")  # importtime's header line
    proc.stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
    return proc, modules, seconds


def test_non_checkpoints_are_refused_before_torch_is_imported(tmp_path):
    rng = np.random.default_rng(0)
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(photo, quality=95)
    assert photo.stat().st_size > 2_000_000  # a few MB: the sniff reads its first bytes only
    notes = tmp_path / "notes.pth"
    notes.write_text("not a checkpoint\n")
    exported = tmp_path / "exported.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), exported)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01\x02" + rng.bytes(10_000))
    cases = {
        photo: "a JPEG image, not a PyTorch checkpoint (to segment images: panseg-rt infer MODEL.onnx IMAGE -o DIR)",
        notes: "a text file, not a PyTorch checkpoint",
        exported: "an ONNX model, not a PyTorch checkpoint (already exported: run it with panseg-rt)",
        garbage: "unrecognised binary data (neither a zip archive nor a pickle), not a PyTorch checkpoint",
        tmp_path / "absent.pth": "no such checkpoint file",
    }
    for path, expected in cases.items():
        proc, modules, seconds = _run_recording_imports(str(path), "--no-progress", cwd=tmp_path)
        assert proc.returncode == 1, (path, proc.stderr)
        assert proc.stderr.splitlines() == [f"python -m export.onnx: error: {path}: {expected}"], proc.stderr
        assert "runtime.filekind" in modules  # importtime recorded the imports, so the next check means something
        assert not {m for m in modules if m.split(".")[0] in HEAVY}, (path, sorted(modules))
        assert seconds < 2.0, (path, seconds)  # generous: about 0.3 s here, against ~7 s with torch imported
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chelsea.jpg", "exported.onnx", "garbage.onnx",
                                                          "notes.pth"]  # nothing written

    proc, modules, _ = _run_recording_imports("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--verify-sizes" in proc.stdout and "--static-shape" in proc.stdout
    assert not {m for m in modules if m.split(".")[0] in HEAVY}, sorted(modules)
    # the light defaults the parser shows are the ones the exporter uses
    args = export_cli.build_parser().parse_args(["model.pth"])
    assert Tolerances(args.atol_logits, args.atol_boxes, args.atol_masks, args.rtol,
                      args.min_pixel_agreement) == Tolerances()
    signature = inspect.signature(export_checkpoint).parameters
    assert (args.opset, args.verify_sizes, args.verify_max_images) == (
        signature["opset"].default, signature["verify_sizes"].default, signature["verify_max_images"].default)


def test_package_names_load_lazily_from_their_modules():
    import export.onnx
    from export.onnx import exporter, graph, metadata
    from export.onnx.verify import compare

    homes = {"ShapePolicy": graph, "read_metadata": metadata, "Tolerances": compare}
    for name in export.onnx.__all__:
        assert getattr(export.onnx, name) is getattr(homes.get(name, exporter), name), name
    assert set(export.onnx.__all__) <= set(dir(export.onnx))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        export.onnx.nope  # noqa: B018
    proc = subprocess.run([sys.executable, "-c", "import sys, export.onnx; print(sorted(m for m in sys.modules "
                           "if m.split('.')[0] in ('torch', 'onnx')))"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_failed_verification_exits_1_and_keeps_model_only_under_failed_name(tiny_ckpt, workdir, images_dir,
                                                                           capsys):
    out = workdir / "strict.onnx"
    code = main([str(tiny_ckpt), "-o", str(out), "--atol-logits", "0", "--atol-boxes", "0", "--atol-masks", "0",
                 "--rtol", "0", "--verify-images", str(images_dir), "--verify-sizes", "64",
                 "--verify-max-images", "1", "--no-simplify", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "verification FAILED" in captured.out and "verification FAILED" in captured.err
    assert not out.exists() and (workdir / "strict.failed.onnx").is_file()
    # the default query-sparse pair: the mask graph too, named in the kept detector's metadata
    assert not (workdir / "strict.masks.onnx").exists() and (workdir / "strict.failed.masks.onnx").is_file()
    assert read_metadata(workdir / "strict.failed.onnx")["query_sparse"]["mask_graph"] == "strict.failed.masks.onnx"


def test_resize_policy_follows_the_training_size():
    from export.onnx.loading import resize_policy
    from train.datasets import scaled_transform_options

    for size in (64, 128, 512):
        expected = scaled_transform_options(size)
        assert resize_policy({"args": {"image_size": size, "max_size": 1333}}) == (size, expected["max_size"])
    assert resize_policy({"args": {"image_size": 128, "max_size": 200}}) == (128, 200)
    assert resize_policy({"args": {"lr": 1e-4, "masks": True}}) == (800, 1333)  # detr's main.py args
    assert resize_policy({"model": {}}) == (800, 1333)  # a release holding only 'model'

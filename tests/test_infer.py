"""`panseg-rt infer` end to end on a tiny exported model, checked against the PyTorch pipeline of the training."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import run_without_torch
from conftest import separable as _separable
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.torch_postprocess import PostProcessPanoptic
from export.onnx import export_checkpoint
from export.onnx.loading import load_for_export
from export.onnx.verify import compare_panoptic
from runtime import outputs as outputs_module
from runtime.atomic import atomic_write_with
from runtime.backends import OnnxRuntimeBackend
from runtime.categories import categories_from_json, categories_to_json
from runtime.cli import main
from runtime.commands import infer_cmd
from runtime.errors import PansegError
from runtime.infer import infer
from runtime.inputs import collect_inputs
from runtime.model import EngineShape, check_engine
from runtime.model_info import parse_model_info
from runtime.outputs import OutputDir, PredictionsFile
from runtime.panoptic_format import read_panoptic_png, segment_stats, validate_annotation, write_panoptic_png
from runtime.pipeline import InferOptions, Pipeline
from runtime.postprocess import PanopticResult
from train.checkpoint import save_checkpoint
from train.datasets import build_dataset, build_transforms, collate_fn, pad_images, scaled_transform_options
from train.evaluate import evaluate
from train.models import build_model
from train.models.criterion import build_criterion
from train.prepare.synthetic import categories as synthetic_categories
from train.prepare.synthetic import generate_dataset, generate_sample

EVAL_SIZE = 64  # the tiny model's evaluation size; the export's metadata says 800, so infer overrides it
EVAL_MAX = scaled_transform_options(EVAL_SIZE)["max_size"]  # 107, as the training evaluates
SIZE_ARGS = ["--size", str(EVAL_SIZE), "--max-size", str(EVAL_MAX)]
THREADS = ["--threads", "1"]  # two shared cores


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("infer")


@pytest.fixture(scope="module")
def dataset(work) -> Path:
    root = work / "data"
    generate_dataset(root, train=2, val=6, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def checkpoint(work) -> Path:
    torch.manual_seed(3)  # a seed whose random model matches a few GT segments, so PQ is not 0 = 0
    path = work / "tiny.pth"
    save_checkpoint(path, {"model": _separable(build_model(TINY)).state_dict(), "config": TINY.to_dict(),
                           "categories": categories_to_json(synthetic_categories())})
    return path


@pytest.fixture(scope="module")
def model(checkpoint, work) -> Path:
    result = export_checkpoint(checkpoint, work / "tiny.onnx", run_verification=False, progress=False)
    return result.path


@pytest.fixture(scope="module")
def eager(checkpoint) -> torch.nn.Module:
    return load_for_export(checkpoint).model.eval()


def _val(dataset: Path) -> tuple[Path, Path, Path]:
    return (dataset / "val2017", dataset / "annotations" / "panoptic_val2017.json", dataset / "panoptic_val2017")


@pytest.fixture(scope="module")
def coco_run(model, dataset, work) -> Path:
    images, gt_json, _ = _val(dataset)
    out = work / "coco_run"
    code = main(["infer", str(model), str(images), "-o", str(out), "--coco-json",
                 str(gt_json), "--overlay", "--no-progress", *SIZE_ARGS, *THREADS])
    assert code == 0
    return out


def _infer(model: Path, inputs: list, out: Path, **options) -> object:
    """The library entry point with the tiny model's evaluation size, one engine thread, no progress bar."""
    options = {"size": EVAL_SIZE, "max_size": EVAL_MAX, "progress": False, **options}
    return infer(model, [str(i) for i in inputs], out, InferOptions(**options),
                 backend_options={"intra_op_threads": 1, "optimized_cache": False})


def _save_crop(path: Path, index: int, height: int, width: int) -> Path:
    image = generate_sample(7, "val", index, size=96).image[:height, :width]
    Image.fromarray(image).save(path)
    return path


def _predictions(out: Path) -> dict:
    return json.loads((out / "predictions.json").read_text())


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def _age(folder: Path) -> None:
    """Move every file's mtime an hour back, so that a rewrite is visible whatever the clock's granularity."""
    for p in folder.iterdir():
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns - 3_600_000_000_000, st.st_mtime_ns - 3_600_000_000_000))


# ---------------------------------------------------------------- end to end, and parity with the training pipeline


def test_outputs_follow_the_documented_layout_and_validate_against_the_pngs(coco_run, dataset):
    images, gt_json, _ = _val(dataset)
    gt = json.loads(gt_json.read_text())
    stems = sorted(Path(img["file_name"]).stem for img in gt["images"])
    assert sorted(p.stem for p in (coco_run / "panoptic").glob("*.png")) == stems
    assert sorted(p.stem for p in (coco_run / "overlay").glob("*.jpg")) == stems
    assert sorted(p.stem for p in (coco_run / "records").glob("*.json")) == stems
    predictions = _predictions(coco_run)
    categories = categories_from_json(predictions["categories"])
    assert predictions["categories"] == categories_to_json(synthetic_categories())
    # ids and names follow the dataset: the GT's image ids and its panoptic PNG names
    assert ({a["image_id"]: a["file_name"] for a in predictions["annotations"]}
            == {a["image_id"]: a["file_name"] for a in gt["annotations"]})
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    n_segments = 0
    for ann in predictions["annotations"]:
        id_map = read_panoptic_png(coco_run / "panoptic" / ann["file_name"])
        validate_annotation(ann, id_map, categories, sizes[ann["image_id"]], check_area=True)
        stats = segment_stats(id_map)
        for seg in ann["segments_info"]:
            assert set(seg) == {"id", "category_id", "isthing", "area", "bbox", "score"}
            assert seg["bbox"] == stats[seg["id"]]["bbox"]
            assert seg["isthing"] == categories[seg["category_id"]].isthing and 0.85 < seg["score"] <= 1.0
        n_segments += len(ann["segments_info"])
    assert n_segments > len(predictions["annotations"])  # real segmentations, not one blob per image
    overlay = Image.open(coco_run / "overlay" / "000000000001.jpg")
    assert (overlay.height, overlay.width) == sizes[1]
    timings = json.loads((coco_run / "timings.json").read_text())
    assert timings["images"] == 6 and timings["failed"] == 0
    assert set(timings["stage_seconds"]) == {"preprocess", "engine", "postprocess", "overlay", "write"}
    assert all(v > 0 for v in timings["stage_seconds"].values())


def test_pq_and_segments_equal_the_pytorch_pipeline(coco_run, dataset, eager, work, capsys):
    """train/evaluate.py (eager model + the runtime's post-processing + runtime.pq) and infer + eval agree; image by
    image also with the vectorized torch port (benchmarks/torch_postprocess.py) on the eager outputs."""
    images, gt_json, gt_folder = _val(dataset)
    val_set = build_dataset("val", "coco_panoptic", dataset, dataset, masks=True,
                            **scaled_transform_options(EVAL_SIZE))
    loader = DataLoader(val_set, batch_size=1, collate_fn=collate_fn)
    criterion, _ = build_criterion(TINY.num_classes, masks=True, aux_loss=True, dec_layers=TINY.dec_layers)
    args = argparse.Namespace(masks=True, dataset_file="coco_panoptic", coco_panoptic_path=str(dataset),
                              threshold=0.85)
    reference = evaluate(eager, criterion, loader, "cpu", args, None)
    assert reference["pq"] > 0  # the check below compares real matches, not 0 with 0

    code = main(["eval", "--gt-json", str(gt_json), "--gt-folder", str(gt_folder), "--pred-json",
                 str(coco_run / "predictions.json"), "--pred-folder", str(coco_run / "panoptic"), "--workers", "1",
                 "--no-progress", "--json", str(work / "pq.json")])
    assert code == 0, capsys.readouterr().err
    ours = json.loads((work / "pq.json").read_text())
    for key, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for metric in ("pq", "sq", "rq"):
            assert abs(100 * ours[group][metric] - reference[f"{metric}{key}"]) <= 0.1, (group, metric)

    # and image by image: the same segments, the same pixels
    postprocess = PostProcessPanoptic({c.id: c.isthing for c in synthetic_categories()}, 0.85)
    by_id = {a["image_id"]: a for a in _predictions(coco_run)["annotations"]}
    with torch.no_grad():
        for batch_images, mask, targets in loader:
            expected = postprocess(eager(batch_images, mask), [t["size"] for t in targets],
                                   [t["orig_size"] for t in targets])[0]
            ann = by_id[int(targets[0]["image_id"])]
            got = PanopticResult(read_panoptic_png(coco_run / "panoptic" / ann["file_name"]), ann["segments_info"])
            agreement, same_segments = compare_panoptic(got, expected)
            assert agreement >= 0.999 and same_segments, ann["file_name"]


# ---------------------------------------------------------------- bad input


def test_bad_images_are_reported_by_name_and_skipped(model, dataset, work, capsys):
    folder = work / "bad_inputs"
    folder.mkdir()
    good = sorted(_val(dataset)[0].glob("*.jpg"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image at all")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
    corrupt = bytearray(png.getvalue())
    corrupt[len(corrupt) // 2:len(corrupt) // 2 + 64] = bytes(b ^ 0x5A for b in corrupt[len(corrupt) // 2:][:64])
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    out = work / "bad_run"
    capsys.readouterr()
    code = main(["infer", str(model), str(folder), "-o", str(out), "--no-progress",
                 "--batch-size", "3", *SIZE_ARGS, *THREADS])
    err = capsys.readouterr().err
    assert code == 1
    bad = {"truncated.jpg": "truncated", "empty.jpg": "empty", "notes.png": "not an image", "corrupt.png": "corrupt"}
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == len(bad), err
    for name, reason in bad.items():
        assert any(str(folder / name) in line and reason in line for line in skipped), (name, err)
    assert "4 of 6 images failed" in err
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == sorted(f"{p.stem}.png" for p in good)
    assert sorted(a["image_id"] for a in _predictions(out)["annotations"]) == sorted(p.stem for p in good)
    failures = json.loads((out / "failures.json").read_text())
    assert sorted(Path(f["input"]).name for f in failures) == sorted(bad)


def test_summary_says_what_was_written_when_images_fail(model, work, capsys):
    folder = work / "one_bad"
    folder.mkdir()
    good = _save_crop(folder / "good.png", 0, 64, 64)
    (folder / "empty.jpg").write_bytes(b"")
    for inputs, written in (([folder / "empty.jpg"], 0), ([good, folder / "empty.jpg"], 1)):
        out = work / f"one_bad_run{written}"
        capsys.readouterr()
        code = main(["infer", str(model), *map(str, inputs), "-o", str(out),
                     "--no-progress", *SIZE_ARGS, *THREADS])
        captured = capsys.readouterr()
        assert code == 1
        assert captured.out.splitlines()[-1] == (f"wrote {out / 'predictions.json'} ({written} images) and "
                                                 f"{out / 'failures.json'} (1 failed); timings in timings.json")
        assert len(_predictions(out)["annotations"]) == written
        assert [Path(f["input"]).name for f in json.loads((out / "failures.json").read_text())] == ["empty.jpg"]
    code = main(["infer", str(model), str(good), "-o", str(work / "all_good"),
                 "--no-progress", *SIZE_ARGS, *THREADS])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[-1] == (f"wrote {work / 'all_good' / 'predictions.json'} (1 images); "
                                                        "timings in timings.json")


def test_engine_and_output_names_are_checked_once_per_run(model, work, monkeypatch):
    from runtime import infer as infer_module
    from runtime import inputs as inputs_module
    from runtime import model as model_module

    counts = {"check_engine": 0, "check_unique_outputs": 0}

    def counting(real, name):
        def counted(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return counted

    for module, name in ((model_module, "check_engine"), (infer_module, "check_unique_outputs"),
                         (inputs_module, "check_unique_outputs")):
        monkeypatch.setattr(module, name, counting(getattr(module, name), name))
    images = [_save_crop(work / f"once{k}.png", k, 64, 64) for k in range(3)]
    report = _infer(model, images, work / "once_run", batch_size=2)
    assert report.done == 3 and not report.failures
    assert counts == {"check_engine": 1, "check_unique_outputs": 1}


def test_inputs_are_files_folders_and_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "b.PNG", "notes.txt", ".hidden.jpg", "sub/c.jpg", "sub/d.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    assert collect_inputs([tmp_path]) == [tmp_path / "a.jpg", tmp_path / "b.PNG"]
    assert collect_inputs([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]  # asked for by name: taken
    assert collect_inputs([str(tmp_path / "sub" / "*.jp*g")]) == [tmp_path / "sub/c.jpg", tmp_path / "sub/d.jpeg"]
    found = collect_inputs([str(tmp_path / "**" / "*.jpg"), tmp_path / "a.jpg", tmp_path / "sub"])
    assert found == [tmp_path / "a.jpg", tmp_path / "sub/c.jpg", tmp_path / "sub/d.jpeg"]  # no duplicates
    with pytest.raises(PansegError, match="missing.jpg: no such file"):
        collect_inputs([tmp_path / "missing.jpg"])
    with pytest.raises(PansegError, match=r"\*\.bmp: no image file matches"):
        collect_inputs([str(tmp_path / "*.bmp")])


def test_inputs_without_dataset_use_stems_and_clashing_names_are_refused(model, work):
    folder = work / "stems"
    (folder / "other").mkdir(parents=True)
    first = _save_crop(folder / "first.png", 0, 64, 64)
    second = _save_crop(folder / "second.jpg", 1, 64, 72)
    report = _infer(model, [folder / "*.png", second], work / "stems_run")
    assert report.done == 2 and report.ok
    assert {a["image_id"]: a["file_name"] for a in _predictions(work / "stems_run")["annotations"]} == {
        "first": "first.png", "second": "second.png"}
    shutil.copy(first, folder / "other" / "first.jpg")
    with pytest.raises(PansegError, match="would both be written as first.png"):
        _infer(model, [first, folder / "other" / "first.jpg"], work / "stems_clash")


def test_coco_json_inputs_missing_from_the_dataset_fail(model, dataset, work, capsys):
    stray = _save_crop(work / "stray.png", 2, 64, 64)
    known = sorted(_val(dataset)[0].glob("*.jpg"))[0]
    capsys.readouterr()
    code = main(["infer", str(model), str(known), str(stray), "-o",
                 str(work / "stray_run"), "--coco-json", str(_val(dataset)[1]), "--no-progress", *SIZE_ARGS])
    assert code == 1
    assert f"{stray}: not in {_val(dataset)[1]}" in capsys.readouterr().err
    assert [a["image_id"] for a in _predictions(work / "stray_run")["annotations"]] == [1]


# ---------------------------------------------------------------- reruns and interruptions


def test_rerun_skips_finished_images_unless_overwrite(model, work, capsys):
    folder = work / "rerun_inputs"
    folder.mkdir()
    for k in range(3):
        _save_crop(folder / f"im{k}.png", k, 64, 64 + 8 * k)
    out = work / "rerun"
    args = ["infer", str(model), str(folder), "-o", str(out), "--no-progress",
            *SIZE_ARGS, *THREADS]
    assert main(args) == 0
    _age(out / "panoptic")
    before, predictions = _mtimes(out / "panoptic"), _predictions(out)
    capsys.readouterr()
    assert main(args) == 0
    assert "3 skipped as finished" in capsys.readouterr().out
    assert _mtimes(out / "panoptic") == before and _predictions(out) == predictions
    assert main([*args, "--threshold", "0.9"]) == 0  # other settings: made again
    assert all(t != before[name] for name, t in _mtimes(out / "panoptic").items())
    _age(out / "panoptic")
    before = _mtimes(out / "panoptic")
    assert main([*args, "--threshold", "0.9", "--overwrite"]) == 0
    assert all(t != before[name] for name, t in _mtimes(out / "panoptic").items())


@pytest.mark.parametrize("moment", ["png_half_written", "before_record"])
def test_interrupted_run_leaves_complete_files_and_valid_predictions(model, work, monkeypatch, capsys, moment):
    """Ctrl-C while the third image is written: halfway through its PNG, or after the PNG but before its record."""
    folder = work / "interrupt_inputs"
    if not folder.exists():
        folder.mkdir()
        for k in range(5):
            _save_crop(folder / f"im{k}.png", k, 64, 64)
    out = work / f"interrupted_{moment}"
    args = ["infer", str(model), str(folder), "-o", str(out), "--no-progress",
            *SIZE_ARGS, *THREADS]
    calls = []

    def half_then_interrupt(f):
        f.write(b"\x89PNG\r\n\x1a\n half an image")
        raise KeyboardInterrupt

    def png_half_written(path, id_map):
        calls.append(Path(path).stem)
        if len(calls) == 3:
            atomic_write_with(path, half_then_interrupt)
        write_panoptic_png(path, id_map)

    def before_record(self, job, result):
        calls.append(job.stem)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_write_record(self, job, result)

    real_write_record = OutputDir.write_record
    if moment == "png_half_written":
        monkeypatch.setattr(outputs_module, "write_panoptic_png", png_half_written)
    else:
        monkeypatch.setattr(OutputDir, "write_record", before_record)
    assert main(args) == 130
    monkeypatch.undo()
    finished = calls[:2]
    assert sorted(a["image_id"] for a in _predictions(out)["annotations"]) == sorted(finished)
    assert sorted(p.stem for p in (out / "records").iterdir()) == sorted(finished)
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []
    for png in (out / "panoptic").iterdir():  # every file there is complete, finished or not
        read_panoptic_png(png)
    _age(out / "panoptic")
    before = _mtimes(out / "panoptic")
    capsys.readouterr()
    assert main(args) == 0
    assert "2 skipped as finished" in capsys.readouterr().out
    after = _mtimes(out / "panoptic")
    assert all(after[f"{stem}.png"] == before[f"{stem}.png"] for stem in finished)
    assert sorted(a["image_id"] for a in _predictions(out)["annotations"]) == [f"im{k}" for k in range(5)]


def test_predictions_rewrites_are_rationed_but_always_final(tmp_path):
    cats = {c.id: c for c in synthetic_categories()}
    predictions = PredictionsFile(tmp_path / "p.json", cats, ["a", "b"])
    predictions.add("a", {"image_id": "a", "file_name": "a.png", "segments_info": []})
    predictions.maybe_flush()  # the first rewrite costs nothing yet: done at once
    assert [a["image_id"] for a in json.loads((tmp_path / "p.json").read_text())["annotations"]] == ["a"]
    predictions._last_cost = 3600.0  # pretend the last rewrite was slow: the next one waits
    predictions.add("b", {"image_id": "b", "file_name": "b.png", "segments_info": []})
    predictions.maybe_flush()
    assert len(json.loads((tmp_path / "p.json").read_text())["annotations"]) == 1
    predictions.flush()
    assert [a["image_id"] for a in json.loads((tmp_path / "p.json").read_text())["annotations"]] == ["a", "b"]


# ---------------------------------------------------------------- batching


def test_batch_size_1_and_2_give_identical_results_on_same_size_images(model, work):
    folder = work / "same_size"
    folder.mkdir()
    for k in range(4):
        _save_crop(folder / f"s{k}.png", k, 64, 72)
    one = _infer(model, [folder], work / "same_b1", batch_size=1)
    two = _infer(model, [folder], work / "same_b2", batch_size=2)
    assert (one.batches, two.batches) == (4, 2)
    anns_one = {a["image_id"]: a for a in _predictions(work / "same_b1")["annotations"]}
    anns_two = {a["image_id"]: a for a in _predictions(work / "same_b2")["annotations"]}
    assert anns_one.keys() == anns_two.keys() == {f"s{k}" for k in range(4)}
    for stem, ann in anns_one.items():
        a = read_panoptic_png(work / "same_b1" / "panoptic" / f"{stem}.png")
        b = read_panoptic_png(work / "same_b2" / "panoptic" / f"{stem}.png")
        np.testing.assert_array_equal(a, b)
        other = anns_two[stem]["segments_info"]
        assert [(s["id"], s["category_id"], s["area"], s["bbox"]) for s in ann["segments_info"]] == [
            (s["id"], s["category_id"], s["area"], s["bbox"]) for s in other]
        np.testing.assert_allclose([s["score"] for s in ann["segments_info"]], [s["score"] for s in other],
                                   atol=1e-5)


def test_mixed_sizes_are_padded_together_like_the_pytorch_model_sees_them(model, eager, work, monkeypatch):
    folder = work / "mixed"
    folder.mkdir()
    shapes = {"a": (64, 64), "b": (80, 64), "c": (64, 64)}  # (height, width)
    paths = [_save_crop(folder / f"{stem}.png", k, h, w) for k, (stem, (h, w)) in enumerate(shapes.items())]
    engine_calls = []
    real_run_engine = Pipeline.run_engine

    def spy(self, batch):
        engine_calls.append(([job.stem for job in batch.jobs], batch.images.shape[2:]))
        return real_run_engine(self, batch)

    monkeypatch.setattr(Pipeline, "run_engine", spy)
    # batch 2: the two 64x64 images fill one batch unpadded, the 80x64 one goes alone; batch 3: all padded
    _infer(model, paths, work / "mixed_b2", batch_size=2)
    assert engine_calls == [(["a", "c"], (64, 64)), (["b"], (80, 64))]
    _infer(model, paths, work / "mixed_b3", batch_size=3)
    assert engine_calls[2:] == [(["a", "c", "b"], (80, 64))]

    transform = build_transforms("val", **scaled_transform_options(EVAL_SIZE))
    tensors = [transform(Image.open(p).convert("RGB"), None)[0] for p in paths]
    is_thing = {c.id: c.isthing for c in synthetic_categories()}
    sizes = [tuple(t.shape[1:]) for t in tensors]

    def reference(group: list[int]) -> list[PanopticResult]:
        batch, mask = pad_images([tensors[i] for i in group])
        with torch.no_grad():
            outputs = eager(batch, mask)
        return PostProcessPanoptic(is_thing, 0.85)(outputs, [sizes[i] for i in group], [sizes[i] for i in group])

    for out, groups in ((work / "mixed_b2", [[0, 2], [1]]), (work / "mixed_b3", [[0, 2, 1]])):
        anns = {a["image_id"]: a for a in _predictions(out)["annotations"]}
        for group in groups:
            for i, expected in zip(group, reference(group), strict=True):
                stem = paths[i].stem
                got = PanopticResult(read_panoptic_png(out / "panoptic" / f"{stem}.png"), anns[stem]["segments_info"])
                assert got.id_map.shape == shapes[stem]
                agreement, same_segments = compare_panoptic(got, expected)
                assert agreement >= 0.999 and same_segments, (out.name, stem)


# ---------------------------------------------------------------- model metadata, options, lean runtime


def test_model_info_reads_the_exported_metadata_and_names_bad_keys(model):
    with OnnxRuntimeBackend(model, optimized_cache=False) as backend:
        metadata = backend.metadata()
    info = parse_model_info(metadata, str(model))
    assert info.categories == {c.id: c for c in synthetic_categories()}
    assert (info.resize.size, info.resize.max_size, info.threshold) == (800, 1333, 0.85)
    assert info.input_names == ("images", "padding_mask")
    # the default export is query-sparse: a detector (logits, boxes, the mask head's per-image inputs) + mask graph
    assert info.output_names[:2] == ("pred_logits", "pred_boxes") and "pred_masks" not in info.output_names
    assert info.mask_graph == "tiny.masks.onnx"
    assert (info.num_queries, info.num_classes, info.mask_stride, info.panoptic) == (10, 12, 4, True)
    # one strict decoder: every value is JSON (a TensorRT side file's reader JSON-encodes its values the same way)
    assert parse_model_info({**metadata, "model_kind": json.dumps("panoptic")}, "m.plan").kind == "panoptic"
    with pytest.raises(PansegError, match="m.plan: metadata 'model_kind' is not JSON"):
        parse_model_info({**metadata, "model_kind": "panoptic"}, "m.plan")
    broken = {
        "threshold": "1.5",
        "resize": json.dumps({"size": 0, "max_size": 1333}),
        "normalization": json.dumps({"mean": [0.5, 0.5], "std": [1, 1, 1]}),
        "categories": json.dumps([{"id": 40, "name": "far", "isthing": 1}]),
        "query_sparse": json.dumps({"mask_graph": "../elsewhere.onnx"}),
    }
    for key, value in broken.items():
        with pytest.raises(PansegError, match=rf"{model}: metadata '{key}"):
            parse_model_info({**metadata, key: value}, str(model))
    with pytest.raises(PansegError, match="metadata 'num_classes' is missing"):
        parse_model_info({k: v for k, v in metadata.items() if k != "num_classes"}, str(model))
    with pytest.raises(PansegError, match="no panseg metadata"):
        parse_model_info({"producer": "someone"}, "foreign.onnx")


def test_detection_models_are_refused_and_static_shapes_are_padded_to_fit(model):
    masks_path = model.with_name("tiny.masks.onnx")  # the default export's mask graph
    with OnnxRuntimeBackend(model, optimized_cache=False) as backend, \
            OnnxRuntimeBackend(masks_path, optimized_cache=False) as masks:
        info = parse_model_info(backend.metadata(), str(model))
        with pytest.raises(PansegError, match="detection-only model; panseg-rt infer needs a panoptic model"):
            check_engine(backend, dataclasses.replace(info, kind="detection"), masks)
        assert check_engine(backend, info, masks) == EngineShape(None, None, None)  # exported with dynamic shapes
        with pytest.raises(PansegError, match="its mask graph tiny.masks.onnx must be loaded too"):
            check_engine(backend, info)
    static = EngineShape(batch=2, height=8, width=10)
    images = np.arange(1 * 3 * 6 * 7, dtype=np.float32).reshape(1, 3, 6, 7) + 1
    fitted, mask = static.fit(images, np.zeros((1, 6, 7), bool))
    assert fitted.shape == (2, 3, 8, 10) and mask.shape == (2, 8, 10)
    np.testing.assert_array_equal(fitted[0, :, :6, :7], images[0])
    assert not fitted[0, :, 6:].any() and not fitted[0, :, :, 7:].any()
    assert mask[0, :6, :7].sum() == 0 and mask[0].sum() == 8 * 10 - 6 * 7
    np.testing.assert_array_equal(fitted[1], fitted[0])  # a filler slot repeats a real image, never a blank one
    assert static.too_large((8, 10)) is None and "does not fit" in static.too_large((9, 10))


def test_threads_reach_the_engine_options(model):
    parser = argparse.ArgumentParser()
    infer_cmd.add_arguments(parser)
    base = [str(model), "x.jpg", "-o", "out"]
    options = infer_cmd._backend_options(parser.parse_args([*base, "--threads", "3"]))
    assert options["intra_op_threads"] == 3
    assert infer_cmd._backend_options(parser.parse_args(base))["intra_op_threads"] is None
    with pytest.raises(PansegError, match="disagree"):
        infer_cmd._backend_options(parser.parse_args([*base, "--threads", "3", "--intra-op-threads", "2"]))


def test_infer_runs_where_torch_cannot_be_imported(model, work):
    folder = work / "lean_inputs"
    folder.mkdir()
    for k in range(2):
        _save_crop(folder / f"l{k}.jpg", k, 64, 80)
    out = work / "lean_run"
    proc = run_without_torch(textwrap.dedent(
        f"""
        import sys
        import runtime
        from runtime.cli import main
        code = main(["infer", r"{model}", r"{folder}", "-o", r"{out}",
                     "--no-progress", "--overlay", "--batch-size", "2", "--size", "64", "--threads", "1"])
        assert code == 0, code
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "train", "export"))
        assert not leaked, leaked
        print("LEAN-INFER-OK")
        """))
    assert proc.returncode == 0, proc.stderr
    assert "LEAN-INFER-OK" in proc.stdout and "2 images in" in proc.stdout
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == ["l0.png", "l1.png"]
    assert len(_predictions(out)["annotations"]) == 2


def test_box_nms_option_equals_the_pytorch_pipeline_with_the_same_option(model, dataset, eager, work):
    """--nms-iou on the query-sparse pair: the same segments as eager + PostProcessPanoptic(nms_iou), and different
    from the default run (so the option did something); its outputs are not mistaken for the default run's."""
    images, _, _ = _val(dataset)
    paths = sorted(images.glob("*.jpg"))
    iou = 0.05  # the random tiny model's duplicates overlap little
    plain = work / "nms_off"
    _infer(model, paths, plain)
    nms = work / "nms_on"
    _infer(model, paths, nms, nms_iou=iou)
    reference = PostProcessPanoptic({c.id: c.isthing for c in synthetic_categories()}, 0.85, nms_iou=iou)
    val_set = build_dataset("val", "coco_panoptic", dataset, dataset, masks=True, **scaled_transform_options(EVAL_SIZE))
    fewer = 0
    with torch.no_grad():
        for k in range(len(val_set)):
            image, target = val_set[k]
            expected = reference(eager(image[None], torch.zeros((1, *image.shape[1:]), dtype=torch.bool)),
                                 [target["size"]], [target["orig_size"]])[0]
            stem = val_set.image_path(val_set.annotations[k]).stem
            record = {a["file_name"]: a for a in _predictions(nms)["annotations"]}[f"{stem}.png"]
            got = PanopticResult(read_panoptic_png(nms / "panoptic" / f"{stem}.png"), record["segments_info"])
            agreement, same_segments = compare_panoptic(got, expected)
            assert agreement >= 0.999 and same_segments, stem
            default = {a["file_name"]: a for a in _predictions(plain)["annotations"]}[f"{stem}.png"]
            fewer += len(default["segments_info"]) - len(record["segments_info"])
    assert fewer > 0
    # a rerun into the NMS folder without the option redoes the images instead of reusing them
    report = _infer(model, paths, nms)
    assert report.skipped == 0

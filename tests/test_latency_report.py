"""`python -m benchmarks.latency` at smoke size: the report's numbers are complete and consistent with each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STUFF, THING
from conftest import TINY_CONFIG as TINY
from conftest import separable as _separable
from PIL import Image

from benchmarks.agreement import agreement
from benchmarks.flops import STAGES
from benchmarks.interleave import image_groups, rotated
from benchmarks.latency import eager_batch, list_photos, main
from benchmarks.pipelines import ResizeSettings
from export.onnx.loading import load_for_export
from export.onnx.sparse import DetectorGraph, MaskGraph
from runtime.categories import categories_to_json
from runtime.contract import mask_graph_name
from runtime.postprocess import PanopticResult, select_queries
from train.checkpoint import save_checkpoint
from train.models import build_model
from train.prepare.synthetic import categories as synthetic_categories
from train.prepare.synthetic import generate_sample

BATCHES = (1, 2)
ITERATIONS = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FULL, SPARSE = "onnxruntime-full", "onnxruntime"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("latency")
    torch.manual_seed(3)
    checkpoint = work / "tiny.pth"
    save_checkpoint(checkpoint, {"model": _separable(build_model(TINY)).state_dict(), "config": TINY.to_dict(),
                                 "categories": categories_to_json(synthetic_categories())})
    images = work / "images"
    images.mkdir()
    for index, (h, w) in enumerate(((64, 80), (72, 64))):  # two sizes, so batch 2 is padded
        sample = generate_sample(0, "val", index, size=max(h, w)).image
        Image.fromarray(np.ascontiguousarray(sample[:h, :w])).save(images / f"photo{index}.jpg", quality=95)
    out = work / "report"
    code = main(["--checkpoint", str(checkpoint), "--images", str(images), "-o", str(out), "--size", "64",
                 "--batch", ",".join(map(str, BATCHES)), "--warmup", "1", "--iterations", str(ITERATIONS),
                 "--threads", "1", "--peak-size", "256", "--no-progress"])
    assert code == 0
    return json.loads((out / "report.json").read_text()), out


def test_every_field_is_present_and_every_available_backend_ran(report):
    data, _ = report
    for key in ("command", "machine", "versions", "model", "settings", "peak", "flops", "memory", "backends",
                "results", "warnings", "notes"):
        assert key in data, key
    for name in ("eager", SPARSE, FULL):
        assert data["backends"][name]["status"] == "ran", name
    skipped = {n: b for n, b in data["backends"].items() if b["status"] == "skipped"}
    assert "tensorrt" in skipped and all(b["note"] for b in skipped.values())  # no GPU here: skipped with a reason
    ran = sorted(n for n, b in data["backends"].items() if b["status"] == "ran")
    assert sorted((r["backend"], r["batch"]) for r in data["results"]) == sorted(
        (n, b) for n in ran for b in BATCHES)
    assert data["settings"]["threads"] == 1 and data["settings"]["size"] == 64
    assert "--size 64" in data["command"] and data["command"].startswith("python -m benchmarks.latency ")
    assert data["model"]["export"] == "query-sparse"
    assert Path(data["model"]["onnx_full"]).is_file() and data["model"]["onnx_full"] not in data["model"]["onnx"]
    assert [Path(p).name for p in data["model"]["onnx"]] == ["model.onnx"]  # one model: the export
    assert data["model"]["export_full_seconds"] > 0


def test_the_full_graph_backend_has_every_field_the_others_have(report):
    data, _ = report
    assert data["backends"][FULL]["flops"] == data["backends"]["eager"]["flops"] == "full"
    assert data["backends"][SPARSE]["flops"] == "sparse"
    assert set(data["backends"][FULL]) == set(data["backends"][SPARSE])
    by_key = {(r["backend"], r["batch"]): r for r in data["results"]}
    for batch in BATCHES:
        full, sparse = by_key[FULL, batch], by_key[SPARSE, batch]
        assert set(full) == set(sparse) == set(by_key["eager", batch])
        for key, value in full.items():
            if key == "peak_rss_mb" and None in (value, sparse[key]):
                continue  # the RSS sampler may see no sample inside a call of a few ms
            assert value is not None, key
            assert isinstance(value, type(sparse[key])) or {type(value), type(sparse[key])} <= {int, float}, key
        assert set(full["flops_stages"]) == set(sparse["flops_stages"]) == {*STAGES, "total"}
        # the single graph computes every query's mask, the sparse pair only the kept ones
        assert full["masks_per_call"] == batch * TINY.num_queries
        assert sparse["masks_per_call"] == pytest.approx(np.mean(sparse["kept_queries"]))


def test_latency_statistics_are_consistent(report):
    data, _ = report
    for r in data["results"]:
        s = r["latency_ms"]
        groups = len(image_groups([Path("a"), Path("b")], r["batch"]))
        assert s["count"] == r["calls"] == ITERATIONS * groups == len(r["samples_ms"])
        assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
        assert s["min"] <= s["mean"] <= s["max"]
        assert s["p50"] == pytest.approx(np.percentile(r["samples_ms"], 50))
        assert s["mean"] == pytest.approx(np.mean(r["samples_ms"]))
        assert r["throughput_images_per_s"] == pytest.approx(r["batch"] * 1000 / s["mean"])
        # stages are timed inside the call, the total around it: they add up to about the total
        assert r["stage_sum_ms"] == pytest.approx(sum(r["stages_ms"].values()))
        assert 0.9 * s["mean"] <= r["stage_sum_ms"] <= s["mean"] * 1.0001
        assert all(v > 0 for v in r["stages_ms"].values())
        assert r["unstable"] == (r["cv_same_input"] > 0.05)
        assert any(f"{r['backend']} batch {r['batch']}:" in w for w in data["warnings"]) == r["unstable"]


def test_speedups_are_ratios_of_the_same_runs_means(report):
    data, _ = report
    eager = {r["batch"]: r["latency_ms"]["mean"] for r in data["results"] if r["backend"] == "eager"}
    for r in data["results"]:
        assert r["speedup_vs_eager"] == pytest.approx(eager[r["batch"]] / r["latency_ms"]["mean"])
    assert all(r["speedup_vs_eager"] == pytest.approx(1.0) for r in data["results"] if r["backend"] == "eager")
    # one fp32 model per backend: each row is its own fp32 reference, and the rows keep the backends' names
    assert all(r["precision"] == "fp32" and r["runner"] == r["backend"] for r in data["results"])
    assert all(r["speedup_vs_fp32"] == 1.0 for r in data["results"])
    assert not any("reduced-precision" in note for note in data["notes"])


def test_postprocess_speedups_and_shares_are_ratios_of_the_same_runs_stages(report):
    data, _ = report
    eager = {r["batch"]: r for r in data["results"] if r["backend"] == "eager"}
    baselines = data["postprocess_baselines"]
    assert sorted(baselines) == sorted(str(b) for b in BATCHES)
    for r in data["results"]:
        post = r["stages_ms"]["postprocess"]
        base = baselines[str(r["batch"])]
        assert base["detr_original_ms"] == eager[r["batch"]]["stages_ms"]["postprocess"]
        assert base["torch_port_ms"] == eager[r["batch"]]["side_ms"]["postprocess_torch_port"] > 0
        assert r["postprocess_share"] == pytest.approx(post / r["latency_ms"]["mean"])
        assert r["postprocess_speedup_vs_detr"] == pytest.approx(base["detr_original_ms"] / post)
        assert r["postprocess_speedup_vs_torch_port"] == pytest.approx(base["torch_port_ms"] / post)
    # one unpadded image: detr's published code and the torch port (the agreement reference) give the same result
    assert baselines["1"]["agreement"]["pixel_agreement"] == 1.0
    assert baselines["1"]["agreement"]["same_segments"] == 1.0
    md = (report[1] / "report.md").read_text()
    assert "## Post-processing" in md and "detr's published code" in md


def test_flops_and_share_of_peak_follow_from_the_json(report):
    data, _ = report
    peak = data["peak"]["flops_per_second"]
    assert peak == pytest.approx(2 * data["peak"]["n"] ** 3 / data["peak"]["best_seconds"])
    for r in data["results"]:
        groups = r["flops_per_group"]
        for g in groups:  # the stages add up to the total
            assert g["total"] == sum(g[k] for k in STAGES)
        for key in (*STAGES, "total"):
            assert r["flops_stages"][key] == pytest.approx(np.mean([g[key] for g in groups]))
        assert r["flops_per_call"] == pytest.approx(sum(r["flops_stages"][k] for k in STAGES))
        assert r["achieved_flops_per_second"] == pytest.approx(r["flops_per_call"] / (r["stages_ms"]["engine"] / 1e3))
        assert r["share_of_peak"] == pytest.approx(r["achieved_flops_per_second"] / peak)


def test_sparse_flops_are_the_detector_plus_the_kept_share_of_the_mask_head(report):
    data, _ = report
    rows = {(r["backend"], r["batch"]): r for r in data["results"]}
    partial = 0  # image batches where some but not all queries passed
    for batch in BATCHES:
        counted = data["flops"]["per_batch"][str(batch)]
        sparse, full, eager = rows[SPARSE, batch], rows[FULL, batch], rows["eager", batch]
        assert full["flops_per_group"] == eager["flops_per_group"]  # both run every query's mask
        for g, c in enumerate(counted):
            s = c["sparse"]
            detector = s["backbone"] + s["transformer"] + s["mask_per_image"]
            all_masks = s["mask_per_query"] * c["all_queries"]  # the sparse mask head on every query
            kept = sparse["kept_queries"][g]
            assert 0 <= kept <= c["all_queries"]
            partial += 0 < kept < c["all_queries"]
            expected = detector + kept / c["all_queries"] * all_masks
            assert sparse["flops_per_group"][g]["total"] == pytest.approx(expected)
            assert sparse["flops_per_group"][g]["masks"] == kept
            assert full["flops_per_group"][g]["masks"] == c["all_queries"] == batch * TINY.num_queries
            assert sparse["flops_per_group"][g]["total"] < full["flops_per_group"][g]["total"]
            # the detectors differ only in the mask head's per-image part (sparse moves lay1's image half there)
            assert (s["backbone"], s["transformer"]) == (c["full"]["backbone"], c["full"]["transformer"])
            assert s["mask_per_image"] > c["full"]["mask_per_image"]
            assert s["mask_per_query"] < c["full"]["mask_per_query"]
    assert partial > 0  # otherwise kept / all would be 0 or 1 everywhere and the check above could not fail


def _flop_count(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        result = fn()
    return counter.get_total_flops(), result


def test_stage_flops_match_counts_of_the_whole_model_and_of_the_sparse_export_graphs(report):
    """Independent reference: count eager's whole forward and the export's own detector and mask graphs."""
    data, out = report
    model = load_for_export(out.parent / "tiny.pth").model.eval()
    s = data["settings"]
    settings = ResizeSettings(s["size"], s["max_size"], s["threshold"])
    photos = list_photos(out.parent / "images")
    rows = {(r["backend"], r["batch"]): r for r in data["results"]}
    for batch in BATCHES:
        for g, group in enumerate(image_groups(photos, batch)):
            images, mask = eager_batch(group, settings)
            whole, outputs = _flop_count(lambda: model(images, mask))  # noqa: B023 - called right here
            assert rows["eager", batch]["flops_per_group"][g]["total"] == whole
            assert rows[FULL, batch]["flops_per_group"][g]["total"] == whole
            detector, det = _flop_count(lambda: DetectorGraph(model)(images, mask))  # noqa: B023
            sparse = rows[SPARSE, batch]["flops_per_group"][g]
            assert sparse["backbone"] + sparse["transformer"] + sparse["mask_per_image"] == detector
            # the kept count measured in the run is what select_queries keeps on eager's logits too
            keep = [select_queries(logits, s["threshold"])[0] for logits in outputs["pred_logits"].numpy()]
            assert sparse["masks"] == sum(k.size for k in keep)
            image_index = torch.cat([torch.full((k.size,), i, dtype=torch.long) for i, k in enumerate(keep)])
            query_index = torch.as_tensor(np.concatenate(keep), dtype=torch.long)
            masks, _ = _flop_count(lambda: MaskGraph(model)(det[2][image_index, query_index],  # noqa: B023
                                                            image_index, *det[3:]))  # noqa: B023
            assert sparse["mask_queries"] == masks


def test_flop_count_matches_a_hand_count_of_a_linear_layer():
    from torch.utils.flop_counter import FlopCounterMode

    layer = torch.nn.Linear(32, 16)
    with FlopCounterMode(display=False) as counter:
        layer(torch.zeros(5, 32))
    assert counter.get_total_flops() == 2 * 5 * 32 * 16  # the convention the report states


def test_agreement_is_in_range_and_eager_agrees_with_itself(report):
    data, _ = report
    for r in data["results"]:
        a = r["agreement"]
        for key in ("pixel_agreement", "same_segments", "pq"):
            assert 0.0 <= a[key] <= 1.0, (r["backend"], key, a[key])
        if r["backend"] == "eager":
            assert a["pixel_agreement"] == a["same_segments"] == a["pq"] == 1.0
        if r["backend"] == FULL:  # detr's single graph gives eager's panoptic output
            assert a["same_segments"] == 1.0 and a["segments_backend"] == a["segments_reference"]
            assert a["pixel_agreement"] > 0.999 and a["pq"] > 0.99
        assert a["segments_reference"] > 0  # the tiny model is non-degenerate: agreement is not 0 segments = 0
    assert data["memory"]["process_peak_rss_mb"] > 0
    assert all(r["peak_rss_mb"] is None or r["peak_rss_mb"] > 0 for r in data["results"])


def test_agreement_against_a_brute_force_count():
    ref_ids = np.zeros((8, 8), np.uint32)
    ref_ids[:, :4], ref_ids[:, 4:] = 1, 2
    segments = [{"id": 1, "category_id": THING, "isthing": True}, {"id": 2, "category_id": STUFF, "isthing": False}]
    cats = {c.id: c for c in synthetic_categories()}
    ref = PanopticResult(ref_ids, segments)
    assert agreement([ref], [ref], cats) | {"images": 1} == {
        "pixel_agreement": 1.0, "same_segments": 1.0, "pq": 1.0, "images": 1, "segments_reference": 2,
        "segments_backend": 2}
    shifted = PanopticResult(np.roll(ref_ids, 1, axis=1), segments)  # columns 1..4 are 1, 5..7 and 0 are 2
    result = agreement([ref], [shifted], cats)
    # brute force: each shifted segment's partner is the reference segment it overlaps most
    partner = {}
    for seg in (1, 2):
        overlap = {r: int(np.sum((shifted.id_map == seg) & (ref_ids == r))) for r in (1, 2)}
        partner[seg] = max(overlap, key=overlap.get)
    agreeing = sum(partner[int(shifted.id_map[y, x])] == ref_ids[y, x] for y in range(8) for x in range(8))
    assert result["pixel_agreement"] == pytest.approx(agreeing / 64)
    assert result["same_segments"] == 1.0  # same two segments, same categories, only the border moved
    iou = 3 / 5  # each segment keeps 24 of its 32 pixels: 24 / (32 + 32 - 24)
    assert result["pq"] == pytest.approx(iou)


def test_plots_are_pngs_and_the_markdown_names_every_backend(report):
    data, out = report
    for name in ("latency_distribution.png", "stages.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(out / name) as im:
            assert im.width > 100 and im.height > 100
    text = (out / "report.md").read_text()
    for name in data["backends"]:
        assert name in text
    assert "speedup vs eager" in text and "share of peak" in text
    section = text.split("### FLOPs per stage")[1].split("## ")[0]
    for r in data["results"]:  # one per-stage FLOPs line per (backend, batch)
        assert f"| {r['backend']} | {r['batch']} | " in section
    for title in ("backbone", "transformer + heads", "mask head per image", "mask head per query x masks", "total"):
        assert title in section


def test_round_robin_rotates_and_groups_wrap_around():
    assert [rotated(["a", "b", "c"], k) for k in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                               ["a", "b", "c"]]
    paths = [Path("x"), Path("y"), Path("z")]
    assert image_groups(paths, 2) == [[Path("x"), Path("y")], [Path("z"), Path("x")]]
    assert image_groups(paths, 1) == [[p] for p in paths]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing.pth" in err and "\n" not in err


def test_a_query_sparse_export_given_as_the_full_graph_is_a_one_line_error(report, tmp_path, capsys):
    _, out = report
    sparse = out / "model.onnx"
    capsys.readouterr()
    assert main(["--checkpoint", str(out.parent / "tiny.pth"), "--images", str(out.parent / "images"), "-o",
                 str(tmp_path / "o"), "--onnx", str(sparse), "--onnx-full", str(sparse), "--backends",
                 f"eager,{FULL}", "--threads", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and str(sparse) in err and "single graph" in err


class _CountingPair:
    """Stands in for the TensorRT pair (runtime/backends/tensorrt_pair.py): runs the ONNX graphs and reports, as its
    engines would count them, the feeds as bytes up and a fixed amount down."""

    def __init__(self, model):
        self.model, self.resets, self.up = model, 0, 0

    def reset_transfers(self):
        self.resets += 1
        self.up = 0

    def run(self, feeds, threshold, is_thing=None, nms_iou=None, select=None):
        from runtime.sparse import run_query_sparse

        self.up = sum(a.nbytes for a in feeds.values())
        return run_query_sparse(self.model.detector.infer, self.model.masks.infer, feeds, threshold, is_thing, nms_iou)

    def transfers(self):
        from types import SimpleNamespace

        return SimpleNamespace(h2d_bytes=self.up, d2h_bytes=5000)


def test_the_report_shows_the_bytes_the_device_pair_moved_per_image(report):
    from benchmarks.pipelines import ResizeSettings, RuntimePipeline

    _, out = report
    photos = sorted((out.parent / "images").glob("*.jpg"))
    pipeline = RuntimePipeline("tensorrt", out / "model.onnx", "onnxruntime", {"optimized_cache": False},
                               ResizeSettings(64, 107, 0.85))
    try:
        assert pipeline.copies == "not applicable (CPU)"  # no pair: nothing is counted
        pair = _CountingPair(pipeline.model)
        pipeline.model.device_pair = pair
        uploaded = 0
        for batch in ([photos[0]], photos):
            pipeline(batch)
            uploaded += pair.up
        assert pair.resets == 2  # each call counts only its own traffic
        per_image = uploaded / 3 / 1e6
        assert pipeline.copies.endswith(f"per image H2D {per_image:.3f} MB, D2H {2 * 5000 / 3 / 1e6:.3f} MB "
                                        "(counted)")
    finally:
        pipeline.close()


# ------------------------------------------------------------------------------------ several models in one run

INT8_CPU = "int8-cpu"


def _copy_with_resize(export: Path, folder: Path, size: int, max_size: int) -> Path:
    """A copy of a query-sparse export whose metadata asks for another resize policy (calibration, which runs at the
    model's own policy, then sees the sizes the benchmark runs)."""
    import shutil

    import onnx

    from export.onnx import read_metadata
    from export.onnx.metadata import write_metadata

    folder.mkdir()
    shutil.copy2(export.with_name(mask_graph_name(export)), folder / mask_graph_name(export))
    model = onnx.load(str(export))
    metadata = read_metadata(model)
    metadata["resize"] = {"size": size, "max_size": max_size}
    write_metadata(model, metadata)
    onnx.save(model, str(folder / export.name))
    return folder / export.name


@pytest.fixture(scope="module")
def several(report, tmp_path_factory) -> tuple[dict, Path, Path]:
    """An fp32 export and its INT8 CPU variant (python -m export.precision, everything quantized) in one run, at
    the resize policy the first --onnx records (the first report's --size 64)."""
    from export.precision.__main__ import main as precision_main

    first = report[1]
    work = tmp_path_factory.mktemp("several")
    images = first.parent / "images"
    fp32 = _copy_with_resize(first / "model.onnx", work / "fp32", 64, report[0]["settings"]["max_size"])
    int8 = work / "model-int8.onnx"
    assert precision_main([str(fp32), "-o", str(int8), "--precision", "int8", "--int8-target", "cpu",
                           "--calibration-images", str(images), "--float-blocks", "--cache-dir", str(work / "cache"),
                           "--no-progress"]) == 0
    out = work / "report"
    code = main(["--checkpoint", str(first.parent / "tiny.pth"), "--images", str(images), "-o", str(out),
                 "--onnx", str(fp32), "--onnx", str(int8), "--backends", f"eager,{SPARSE}", "--batch", "1",
                 "--warmup", "1", "--iterations", str(ITERATIONS), "--threads", "1",
                 "--peak-size", "256", "--no-progress"])
    assert code == 0
    return json.loads((out / "report.json").read_text()), out, int8


def test_several_models_get_one_row_each_named_by_the_precision_in_their_metadata(several):
    data, out, int8 = several
    names = {"eager": "fp32", f"{SPARSE} fp32": "fp32", f"{SPARSE} {INT8_CPU}": INT8_CPU}
    assert {r["backend"]: r["precision"] for r in data["results"]} == names
    assert {r["backend"]: r["runner"] for r in data["results"]} == {
        "eager": "eager", f"{SPARSE} fp32": SPARSE, f"{SPARSE} {INT8_CPU}": SPARSE}
    record = data["backends"][f"{SPARSE} {INT8_CPU}"]
    assert record["status"] == "ran" and record["model"] == str(int8)
    assert record["precision_detail"].startswith("int8 (cpu flavour, minmax calibration on 2 images")
    assert data["backends"][f"{SPARSE} fp32"]["model"] == data["model"]["onnx"][0]
    assert [Path(p).name for p in data["model"]["onnx"]] == ["model.onnx", int8.name]
    assert "onnxruntime-full" not in data["backends"]  # not asked for: nothing exported
    assert (data["settings"]["size"], data["settings"]["max_size"]) == (64, 107)  # the first model's own policy
    # timed in the same interleaved run: every row has the same number of calls
    assert {r["calls"] for r in data["results"]} == {ITERATIONS * len(image_groups([Path("a"), Path("b")], 1))}
    assert any("reduced-precision" in note for note in data["notes"])


def test_several_models_speedups_against_eager_and_the_fp32_model(several):
    data, _, _ = several
    mean = {r["backend"]: r["latency_ms"]["mean"] for r in data["results"]}
    rows = {r["backend"]: r for r in data["results"]}
    int8_row = rows[f"{SPARSE} {INT8_CPU}"]
    assert int8_row["speedup_vs_fp32"] == pytest.approx(mean[f"{SPARSE} fp32"] / mean[f"{SPARSE} {INT8_CPU}"])
    assert int8_row["speedup_vs_eager"] == pytest.approx(mean["eager"] / mean[f"{SPARSE} {INT8_CPU}"])
    assert rows[f"{SPARSE} fp32"]["speedup_vs_fp32"] == 1.0 and rows["eager"]["speedup_vs_fp32"] == 1.0


def test_several_models_each_agree_with_eager_through_the_one_comparison(report, several):
    data, out, _ = several
    rows = {r["backend"]: r for r in data["results"]}
    fp32, int8 = rows[f"{SPARSE} fp32"]["agreement"], rows[f"{SPARSE} {INT8_CPU}"]["agreement"]
    alone = next(r for r in report[0]["results"] if r["backend"] == SPARSE and r["batch"] == 1)
    assert fp32 == alone["agreement"]  # the same model on the same photos: timing it beside a variant changes nothing
    assert int8["segments_reference"] == fp32["segments_reference"] > 0
    # the int8 row compares the int8 model's own output: its segment count is what that model gives on the photos
    assert int8["segments_backend"] == _segments(data["model"]["onnx"][1], report[1].parent / "images",
                                                 data["settings"])
    md = (out / "report.md").read_text()
    latency = md.split("## End-to-end latency")[1].split("## ")[0]
    for name, r in rows.items():  # labelled with the precision in the latency and the agreement tables
        assert f"| {name} | {r['precision']} | 1 | " in latency
        assert f"| {name} | {r['precision']} | 1 | {r['agreement']['pixel_agreement']:.4f} |" in md


def _segments(model_path: str, images: Path, settings: dict) -> int:
    """Segments ``model_path`` gives on ``images`` at the benchmark's settings, counted without the benchmark's code."""
    from runtime.model import load_model
    from runtime.postprocess import segment_kept
    from runtime.preprocess import load_and_preprocess, pad_batch

    count = 0
    with load_model(model_path, "onnxruntime", {"optimized_cache": False}) as model:
        for photo in list_photos(images):
            array, original = load_and_preprocess(photo, settings["size"], settings["max_size"])
            kept = model.run(*pad_batch([array]), settings["threshold"]).kept[0]
            result = segment_kept(kept, tuple(array.shape[1:]), original, model.info.is_thing, model.info.mask_stride)
            count += len(result.segments_info)
    return count


def test_run_names_keep_one_models_backend_name_and_tell_variants_apart():
    from benchmarks.pipelines import run_names

    assert run_names("onnxruntime", [(Path("m.onnx"), "fp32")]) == ["onnxruntime"]
    assert run_names("onnxruntime", [(Path("m.onnx"), "fp32"), (Path("q.onnx"), "int8-cpu")]) == [
        "onnxruntime fp32", "onnxruntime int8-cpu"]
    assert run_names("tensorrt", [(Path("/a/m.plan"), "fp16"), (Path("/b/m.plan"), "fp16")]) == [
        "tensorrt fp16 (/a/m.plan)", "tensorrt fp16 (/b/m.plan)"]


def test_a_model_given_twice_is_a_one_line_error(report, tmp_path, capsys):
    _, out = report
    capsys.readouterr()
    assert main(["--checkpoint", str(out.parent / "tiny.pth"), "-o", str(tmp_path / "o"), "--onnx",
                 str(out / "model.onnx"), str(out / ".." / "report" / "model.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "given twice to --onnx" in err and "\n" not in err


def test_a_report_without_eager_says_agreement_was_not_measured(report):
    from benchmarks.report import markdown

    data = json.loads(json.dumps(report[0]))
    data["results"] = [{**r, "agreement": None, "speedup_vs_eager": None} for r in data["results"]
                       if r["backend"] != "eager"]
    text = markdown(data)
    assert "Not measured: eager did not run." in text and f"| {SPARSE} | fp32 | 1 | " in text


def test_precision_labels_are_the_benchmarks_variant_names():
    from benchmarks.precision_variants import MAX_PQ_DROP, VARIANTS
    from runtime.model_info import PrecisionInfo

    assert PrecisionInfo().label == "fp32"
    labels = {PrecisionInfo("fp16").label, PrecisionInfo("int8", "cpu").label, PrecisionInfo("int8", "tensorrt").label}
    assert labels == set(VARIANTS) == set(MAX_PQ_DROP) == {"fp16", "int8-cpu", "int8-tensorrt"}

"""`panseg-rt bench` and runtime/bench.py: statistics against numpy and brute force, the timing loop with a fake
clock, shape resolution against the engine and the resize policy, and the command on tiny exported models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, run_without_torch

from export.onnx import export_checkpoint
from export.onnx.graph import ShapePolicy
from runtime import bench
from runtime import model as model_module
from runtime.backends import OnnxRuntimeBackend
from runtime.backends.base import Backend, TensorSpec
from runtime.bench import BenchOptions, latency_stats, make_feeds, percentile, resolve_shape, run_benchmark, time_calls
from runtime.categories import categories_to_json
from runtime.cli import main
from runtime.contract import HS_KEPT, IMAGE_INDEX, MASK_GRAPH_INPUTS, MODEL_INPUTS, mask_graph_name
from runtime.errors import PansegError
from runtime.model import PanopticModel, check_engine
from runtime.model_info import ResizePolicy, parse_model_info
from runtime.preprocess import target_size
from runtime.trt_sidecar import TensorProfile
from train.checkpoint import save_checkpoint
from train.models import build_model
from train.prepare.synthetic import categories as synthetic_categories

# As small as the mask head allows (hidden_dim a multiple of 128): the benchmark only needs the graph to run.
TINY = TINY_CONFIG.replace(enc_layers=0, dec_layers=1, dim_feedforward=32, num_queries=4)  # cheaper: timing only
STATIC = ShapePolicy(batch=2, height=64, width=96)
ORT = ["--threads", "1", "--no-ort-cache", "--no-progress"]  # two shared cores; leave no cache folders behind
JSON_KEYS = {
    "format_version", "created", "model", "layout", "batch", "shape", "batch_source", "shape_source",
    "padding_fraction", "padded_columns", "seed", "kept_per_image", "kept_source", "kept_rule", "iterations",
    "duration_seconds", "warmup", "percentile_method", "stdev", "load_seconds", "whole_model_row", "stable", "warnings",
    "backend", "backend_version", "providers", "gpu", "threads", "inter_op_threads", "cpu", "cpu_count", "platform",
    "python", "numpy", "rows",
}
ROW_KEYS = {"name", "role", "files", "whole_model", "inputs", "warmup", "timed_iterations", "latency_ms", "throughput",
            "wall_seconds", "stable", "warnings", "samples_ms"}
LATENCY_KEYS = {"count", "min", "max", "mean", "median", "p90", "p95", "p99", "stdev", "cv"}


# ---------------------------------------------------------------- helpers: exported models, a stub engine, a fake clock


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The tiny model exported twice: dynamic shapes, and a fixed 2 x 3 x 64 x 96 input (no verification, no slim)."""
    work = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    checkpoint = work / "tiny.pth"
    save_checkpoint(checkpoint, {"model": build_model(TINY).state_dict(), "config": TINY.to_dict(),
                                 "categories": categories_to_json(synthetic_categories())})
    out = {}
    for name, policy in (("dynamic", ShapePolicy()), ("static", STATIC)):
        out[name] = export_checkpoint(checkpoint, work / f"{name}.onnx", policy=policy, simplify=False,
                                      run_verification=False, progress=False).path
    out["full"] = export_checkpoint(checkpoint, work / "full.onnx", simplify=False, run_verification=False,
                                   progress=False, full=True).path
    return out


class FakeClock:
    """A nanosecond clock that moves only when the stub engine "computes"."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += int(round(ms * 1e6))


STUB_METADATA = {
    "panseg_metadata_version": 1, "model_kind": "panoptic",
    "categories": [{"id": 1, "name": "thing", "isthing": 1, "color": [1, 2, 3]}],
    "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "resize": {"size": 64, "max_size": 100}, "threshold": 0.85, "num_classes": 2, "num_queries": 4,
    "inputs": {"images": {}, "padding_mask": {}}, "outputs": {"pred_logits": {}, "pred_boxes": {}, "pred_masks": {}},
}


class StubBackend(Backend):
    """A single-graph engine whose latency is scripted (cycled through ``latencies_ms``) on a fake clock; it logs every
    call."""

    name = "stub"

    def __init__(self, path, latencies_ms=(1.0,), clock=None, images_shape=("batch", 3, "height", "width"),
                 profiles=None) -> None:
        super().__init__(path)
        self.latencies_ms = list(latencies_ms)
        self.clock = clock or FakeClock()
        self.images_shape = tuple(images_shape)
        if profiles is not None:
            self.profiles = profiles
        self.calls: list[dict[str, tuple[int, ...]]] = []

    def input_specs(self) -> list[TensorSpec]:
        b, _, h, w = self.images_shape
        return [TensorSpec("images", np.dtype(np.float32), self.images_shape),
                TensorSpec("padding_mask", np.dtype(bool), (b, h, w))]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("pred_logits", np.dtype(np.float32), ("batch", 4, 3)),
                TensorSpec("pred_boxes", np.dtype(np.float32), ("batch", 4, 4)),
                TensorSpec("pred_masks", np.dtype(np.float32), ("batch", 4, "h", "w"))]

    def metadata(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in STUB_METADATA.items()}

    def _infer(self, feeds, outputs):
        self.clock.advance_ms(self.latencies_ms[len(self.calls) % len(self.latencies_ms)])
        self.calls.append({name: array.shape for name, array in feeds.items()})
        b, _, h, w = feeds["images"].shape
        return {"pred_logits": np.zeros((b, 4, 3), np.float32), "pred_boxes": np.zeros((b, 4, 4), np.float32),
                "pred_masks": np.zeros((b, 4, -(-h // 4), -(-w // 4)), np.float32)}

    def _release(self) -> None:
        pass


def _stub_info(stub: StubBackend):
    return parse_model_info(stub.metadata(), "stub")


def _stub_model(stub: StubBackend) -> PanopticModel:
    """The stub as a loaded single-graph model, as load_model would make it."""
    info = _stub_info(stub)
    return PanopticModel(stub.path, stub.name, stub, None, info, check_engine(stub, info), ExitStack())


def _linear_percentile(values, q: float) -> float:
    """Brute force of the documented method: rank q/100 * (n - 1) in the sorted samples, linearly interpolated."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (rank - lo) * (ordered[hi] - ordered[lo])


def _bench(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["bench", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("values", [
    [5.0],
    [1.0, 2.0, 3.0, 4.0],
    [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0],
    list(np.random.default_rng(0).lognormal(1.0, 0.5, 101)),
])
def test_statistics_equal_numpy_and_the_brute_force_percentile(values):
    stats = latency_stats(values)
    array = np.asarray(values)
    assert stats.count == len(values)
    assert stats.min == pytest.approx(array.min()) and stats.max == pytest.approx(array.max())
    assert stats.mean == pytest.approx(array.mean()) and stats.median == pytest.approx(np.median(array))
    assert stats.stdev == pytest.approx(array.std(ddof=0)) and stats.stdev == pytest.approx(statistics.pstdev(values))
    assert stats.cv == pytest.approx(array.std() / array.mean())
    for q in (50, 90, 95, 99):
        expected = _linear_percentile(values, q)
        assert np.percentile(array, q) == pytest.approx(expected)  # numpy's default is the documented method
        assert getattr(stats, "median" if q == 50 else f"p{q}") == pytest.approx(expected)
        assert percentile(values, q) == pytest.approx(expected)
    assert stats.min <= stats.median <= stats.p90 <= stats.p95 <= stats.p99 <= stats.max


def test_statistics_of_known_samples_and_no_samples():
    stats = latency_stats([10.0, 20.0, 30.0, 40.0, 50.0])
    # rank 0.9 * 4 = 3.6 -> 40 + 0.6 * 10; worked out by hand from the definition
    assert (stats.median, stats.p90, stats.p95, stats.p99) == pytest.approx((30.0, 46.0, 48.0, 49.6))
    assert stats.cv == pytest.approx(math.sqrt(200) / 30)
    with pytest.raises(ValueError):
        latency_stats([])


# ---------------------------------------------------------------- the timing loop


def test_warmup_calls_are_made_but_not_recorded():
    clock = FakeClock()
    latencies = iter([100.0, 200.0, 300.0, 1.0, 2.0, 3.0, 4.0])  # warmup calls are far slower than timed ones
    calls = []

    def call():
        calls.append(clock())
        clock.advance_ms(next(latencies))

    timing = time_calls(call, iterations=4, warmup=3, clock=clock)
    assert len(calls) == 7
    assert timing.warmup_iterations == 3 and timing.warmup_ns == 600_000_000
    assert timing.samples_ms == [1.0, 2.0, 3.0, 4.0]
    assert timing.wall_ns == 10_000_000


def test_warmup_seconds_and_duration_extend_the_run():
    clock = FakeClock()
    timing = time_calls(lambda: clock.advance_ms(10), iterations=2, warmup=1, warmup_seconds=0.05, duration=0.1,
                        clock=clock)
    assert timing.warmup_iterations == 5  # 1 asked, but 50 ms of 10 ms calls
    assert len(timing.samples_ns) == 10  # 2 asked, but 100 ms of 10 ms calls
    timing = time_calls(lambda: clock.advance_ms(10), iterations=3, warmup=0, clock=clock)
    assert timing.warmup_iterations == 0 and len(timing.samples_ns) == 3


def test_run_benchmark_records_iterations_and_not_warmup_on_a_stub(tmp_path):
    stub = StubBackend(tmp_path / "stub.onnx", latencies_ms=[50.0] * 4 + [2.0] * 6)  # 4 slow warmups, then 2 ms
    result = run_benchmark(_stub_model(stub), BenchOptions(iterations=6, warmup=4, progress=False),
                           clock=stub.clock)
    assert len(stub.calls) == 10
    [row] = result.rows  # a single graph: the whole model only
    assert row.whole_model and row.name == "model" and result.whole_model is row
    assert row.timing.warmup_iterations == 4 and len(row.timing.samples_ms) == 6
    assert row.stats.max == pytest.approx(2.0)  # no 50 ms warmup call among the samples
    assert row.qps == pytest.approx(500.0) and row.images_per_second == pytest.approx(500.0)


@pytest.mark.parametrize(("latencies", "unstable"), [
    ([5.0], False), ([0.96, 1.04], False), ([0.94, 1.06], True), ([1.0, 3.0], True)])
def test_cv_warning_only_for_variable_latency(tmp_path, monkeypatch, capsys, latencies, unstable):
    """Through the command: the stub stands in for the engine and its clock for perf_counter_ns."""
    engine = tmp_path / "stub.onnx"
    engine.write_bytes(b"stub")
    stub = StubBackend(engine, latencies)
    monkeypatch.setattr(model_module, "select_backend", lambda *args, **kwargs: stub)
    monkeypatch.setattr(bench, "perf_counter_ns", stub.clock)
    code, out, err = _bench([str(engine), "--iterations", "10", "--warmup", "0", "--no-progress",
                             "--json", str(tmp_path / "b.json")], capsys)
    assert code == 0
    report = json.loads((tmp_path / "b.json").read_text())
    [row] = report["rows"]
    cv = np.std(latencies * 5) / np.mean(latencies * 5)
    assert row["latency_ms"]["cv"] == pytest.approx(cv, abs=1e-6)
    assert ("timings unstable" in err) is unstable
    assert report["stable"] is not unstable and bool(report["warnings"]) is unstable
    assert row["stable"] is not unstable and bool(row["warnings"]) is unstable
    assert "Latency: min = " in out


# ---------------------------------------------------------------- shapes and inputs


def test_default_shape_follows_the_models_resize_policy(models):
    with OnnxRuntimeBackend(models["dynamic"], intra_op_threads=1, optimized_cache=False) as backend:
        info = parse_model_info(backend.metadata(), str(models["dynamic"]))
        shape = resolve_shape(backend, info)
        assert (shape.batch, shape.height, shape.width) == (1, *target_size(640, 480, info.resize.size,
                                                                              info.resize.max_size))
        assert (shape.height, shape.width) == (800, 1066)  # the export records detr's 800/1333 policy
        other = dataclasses.replace(info, resize=ResizePolicy(64, 100))
        assert (resolve_shape(backend, other).height, resolve_shape(backend, other).width) == target_size(
            640, 480, 64, 100)
        explicit = resolve_shape(backend, info, batch=3, size=(40, 56))
        assert (explicit.batch, explicit.height, explicit.width) == (3, 40, 56)


def test_fixed_shape_model_defaults_to_its_shape_and_refuses_others(models, capsys):
    with OnnxRuntimeBackend(models["static"], intra_op_threads=1, optimized_cache=False) as backend:
        shape = resolve_shape(backend, parse_model_info(backend.metadata()))
    assert (shape.batch, shape.height, shape.width) == (STATIC.batch, STATIC.height, STATIC.width)
    for extra, problem in ((["--batch", "1"], "batch is fixed at 2"), (["--shape", "64x64"], "fixed at 64x96")):
        code, out, err = _bench([str(models["static"]), *extra, *ORT], capsys)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and str(models["static"]) in err and problem in err


def test_tensorrt_profile_gives_the_default_and_bounds_the_shape(tmp_path):
    profiles = {"images": TensorProfile((1, 3, 32, 32), (2, 3, 64, 96), (4, 3, 128, 128)),
                "padding_mask": TensorProfile((1, 32, 32), (2, 64, 96), (4, 128, 128))}
    stub = StubBackend(tmp_path / "m.plan", profiles=profiles)
    info = _stub_info(stub)
    shape = resolve_shape(stub, info)
    assert (shape.batch, shape.height, shape.width) == (2, 64, 96)
    assert (resolve_shape(stub, info, batch=4, size=(128, 32)).batch) == 4
    with pytest.raises(PansegError, match=r"m\.plan.*outside the engine's optimization profile.*axis 3 is 200"):
        resolve_shape(stub, info, size=(64, 200))
    with pytest.raises(PansegError, match="axis 0 is 5"):
        resolve_shape(stub, info, batch=5)


def test_feeds_are_seeded_normalized_and_padded_on_the_right(tmp_path):
    stub = StubBackend(tmp_path / "stub.onnx")
    info = _stub_info(stub)
    shape = bench.BenchShape(2, 8, 20, "", "")
    feeds = make_feeds(stub, info, shape, seed=7, padding_fraction=0.25)
    images, mask = feeds["images"], feeds["padding_mask"]
    assert images.shape == (2, 3, 8, 20) and images.dtype == np.float32 and mask.shape == (2, 8, 20)
    assert not mask[..., :15].any() and mask[..., 15:].all()  # round(0.25 * 20) = 5 columns on the right
    assert not images[..., 15:].any()
    pixels = images[..., :15] * np.float32(info.std).reshape(3, 1, 1) + np.float32(info.mean).reshape(3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.2  # uniform [0, 1) pixels
    again = make_feeds(stub, info, shape, seed=7, padding_fraction=0.25)
    assert np.array_equal(again["images"], images)
    assert not np.array_equal(make_feeds(stub, info, shape, seed=8)["images"][..., :15], images[..., :15])
    assert not make_feeds(stub, info, shape, seed=7)["padding_mask"].any()


# ---------------------------------------------------------------- the command on a real exported model


def _counting_backends(monkeypatch) -> dict[str, list[dict[str, tuple[int, ...]]]]:
    """Wrap every backend load_model makes so that each infer call is logged (the shapes it was fed), per file name.
    An ONNX Runtime pair runs its graphs through ``infer_bound`` (IO binding): those calls are logged too."""
    calls: dict[str, list[dict[str, tuple[int, ...]]]] = {}
    real_select = model_module.select_backend

    def counting(log, run):
        def counted(feeds, outputs, **options):
            log.append({name: array.shape for name, array in feeds.items()})
            return run(feeds, outputs, **options)

        return counted

    def counting_select(path, *args, **kwargs):
        backend = real_select(path, *args, **kwargs)
        log = calls.setdefault(Path(path).name, [])
        for method in ("infer", "infer_bound"):
            if hasattr(backend, method):
                setattr(backend, method, counting(log, getattr(backend, method)))
        return backend

    monkeypatch.setattr(model_module, "select_backend", counting_select)
    return calls


def test_json_report_is_complete_and_consistent_with_its_samples(models, tmp_path, monkeypatch, capsys):
    calls = _counting_backends(monkeypatch)
    out_json = tmp_path / "report" / "bench.json"
    code, out, err = _bench([str(models["dynamic"]), "--batch", "2", "--shape", "32x48",
                             "--iterations", "7", "--warmup", "3", "--padding-fraction", "0.5",
                             "--json", str(out_json), *ORT], capsys)
    assert code == 0, err
    # the detector: its own row, one untimed call for the mask row's inputs, the whole model's row; the mask graph:
    # its own row and the whole model's
    assert len(calls[models["dynamic"].name]) == 3 + 7 + 1 + 3 + 7
    assert len(calls[mask_graph_name(models["dynamic"])]) == 3 + 7 + 3 + 7
    report = json.loads(out_json.read_text())
    assert set(report) == JSON_KEYS and len(report["rows"]) == 3
    assert [p.name for p in out_json.parent.iterdir()] == ["bench.json"]  # no temporary file left
    for row in report["rows"]:
        assert set(row) == ROW_KEYS and set(row["latency_ms"]) == LATENCY_KEYS
        samples = row["samples_ms"]
        assert len(samples) == row["timed_iterations"] == row["latency_ms"]["count"] == 7
        assert row["warmup"]["done_iterations"] == 3
        lat = row["latency_ms"]
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lat["min"] == min(samples) and lat["max"] == max(samples)
        assert lat["mean"] == pytest.approx(statistics.fmean(samples), rel=1e-12)
        assert lat["median"] == pytest.approx(statistics.median(samples), rel=1e-12)
        assert lat["p90"] == pytest.approx(_linear_percentile(samples, 90), rel=1e-12)
        assert lat["stdev"] == pytest.approx(statistics.pstdev(samples), rel=1e-9)
        assert row["throughput"]["images_per_second"] == pytest.approx(2 * 1000 / statistics.fmean(samples))
        assert row["throughput"]["qps"] == pytest.approx(1000 / statistics.fmean(samples))
        assert sum(samples) / 1000 <= row["wall_seconds"]
        assert f"mean = {lat['mean']:.4f} ms" in out and f"percentile(99%) = {lat['p99']:.4f} ms" in out
    assert report["batch"] == 2 and report["shape"] == [32, 48] and report["padded_columns"] == 24
    assert report["rows"][0]["inputs"] == {"images": {"shape": [2, 3, 32, 48], "dtype": "float32"},
                                           "padding_mask": {"shape": [2, 32, 48], "dtype": "bool"}}
    assert report["backend"] == "onnxruntime" and report["providers"] == ["CPUExecutionProvider"]
    assert report["threads"] == 1 and report["backend_version"] and report["cpu"]
    assert "=== Performance summary" in out and "Throughput: " in out and "qps" in out


def test_query_sparse_pair_gives_a_row_per_graph_and_one_for_the_whole_model(models, tmp_path, monkeypatch, capsys):
    calls = _counting_backends(monkeypatch)
    detector = models["dynamic"]
    masks = detector.with_name(mask_graph_name(detector))
    out_json = tmp_path / "pair.json"
    code, out, err = _bench([str(detector), "--batch", "2", "--shape", "32x48", "--iterations", "2",
                             "--warmup", "1", "--kept", "3", "--json", str(out_json), *ORT], capsys)
    assert code == 0, err
    report = json.loads(out_json.read_text())
    rows = report["rows"]
    assert [r["name"] for r in rows] == ["detector", "masks", "model"]
    assert [r["files"] for r in rows] == [[str(detector)], [str(masks)], [str(detector), str(masks)]]
    assert [r["whole_model"] for r in rows] == [False, False, True] and report["whole_model_row"] == "model"
    assert report["layout"] == "query-sparse pair" and report["kept_per_image"] == 3
    assert "WHOLE MODEL" in rows[2]["role"] and "alone" in rows[0]["role"] and "alone" in rows[1]["role"]
    # the mask row is fed the detector's outputs for 3 kept queries in each of the 2 images
    assert set(rows[1]["inputs"]) == set(MASK_GRAPH_INPUTS)
    assert rows[1]["inputs"][HS_KEPT]["shape"][0] == 2 * 3 and rows[1]["inputs"][IMAGE_INDEX]["shape"] == [6]
    assert set(rows[0]["inputs"]) == set(rows[2]["inputs"]) == set(MODEL_INPUTS)
    # detector: 3 calls in its row, 1 for the mask row's inputs, 3 in the whole model's; masks: 3 in its row, 3 in the
    # whole model's, every one of them on the 6 kept queries
    assert len(calls[detector.name]) == 3 + 1 + 3 and len(calls[masks.name]) == 3 + 3
    assert all(c["images"] == (2, 3, 32, 48) for c in calls[detector.name])
    assert all(c[HS_KEPT][0] == 6 and c[IMAGE_INDEX] == (6,) for c in calls[masks.name])
    for row in rows:
        assert f"=== Performance summary: {row['name']} (" in out
    assert f"model ({detector.name} + {masks.name}): THE WHOLE MODEL" in out
    assert out.index("summary: detector") < out.index("summary: masks") < out.index("summary: model")


def test_single_graph_gives_one_whole_model_row(models, tmp_path, monkeypatch, capsys):
    calls = _counting_backends(monkeypatch)
    out_json = tmp_path / "full.json"
    code, out, err = _bench([str(models["full"]), "--shape", "32x32", "--iterations", "2", "--warmup", "1",
                             "--json", str(out_json), *ORT], capsys)
    assert code == 0, err
    report = json.loads(out_json.read_text())
    [row] = report["rows"]
    assert row["name"] == "model" and row["whole_model"] and row["files"] == [str(models["full"])]
    assert report["layout"] == "single graph" and list(calls) == [models["full"].name]
    assert len(calls[models["full"].name]) == 1 + 2
    assert report["kept_per_image"] == 1 and "20%" in report["kept_source"]  # 20% of 4 queries, at least one
    assert "THE WHOLE MODEL" in out and out.count("=== Performance summary") == 1


def test_kept_default_and_bounds(tmp_path, models, capsys):
    info = _stub_info(StubBackend(tmp_path / "stub.onnx"))
    assert bench.resolve_kept(dataclasses.replace(info, num_queries=100), None)[0] == 20
    assert bench.resolve_kept(info, None)[0] == 1 and bench.resolve_kept(info, 4) == (4, "--kept")
    code, out, err = _bench([str(models["dynamic"]), "--kept", "5", *ORT], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert str(models["dynamic"]) in err and "--kept 5" in err and "4 queries" in err


def test_top_queries_keeps_the_most_confident_objects_whatever_their_score():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(10, 6)).astype(np.float32)
    logits[2, -1] = 20.0  # "no object" wins this query, yet its best object class still counts
    keep, scores, labels = bench.top_queries(4)(logits, np.zeros((10, 4), np.float32))
    # reference, written out: softmax per query in float64, best class other than the last, top 4 by that
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.astype(np.float64).tolist()]
    best = [max(range(5), key=lambda c, p=p: p[c]) for p in probs]
    order = sorted(range(10), key=lambda q: -probs[q][best[q]])[:4]
    assert keep.tolist() == sorted(order)
    assert labels.tolist() == [best[q] for q in sorted(order)]
    np.testing.assert_allclose(scores, [probs[q][best[q]] for q in sorted(order)], rtol=1e-12)


def test_threads_with_tensorrt_warn_in_bench_and_infer_alike(tmp_path, capsys):
    from runtime.commands import bench_cmd, infer_cmd

    plan = str(tmp_path / "m.plan")
    for command, argv in ((bench_cmd, [plan]),
                          (infer_cmd, [plan, "x.jpg", "-o", "out"])):
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        args = parser.parse_args([*argv, "--threads", "3"])
        capsys.readouterr()
        options = (bench_cmd.backend_options if command is bench_cmd else infer_cmd._backend_options)(args)
        err = capsys.readouterr().err
        assert "intra_op_threads" not in options
        assert err == f"{command.PROG}: warning: --threads applies to ONNX Runtime only; ignored for TensorRT\n"


@pytest.mark.parametrize("argv", [
    ["--iterations", "0"], ["--batch", "0"], ["--warmup", "-1"], ["--threads", "0"], ["--duration", "-2"],
    ["--warmup-seconds", "nan"], ["--padding-fraction", "1"], ["--shape", "0x10"], ["--shape", "64"]])
def test_non_positive_numbers_are_one_line_errors(models, capsys, argv):
    # argparse types check the numbers, as in every panseg command: a one-line usage error, exit 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["bench", str(models["dynamic"]), *ORT, *argv])
    code = info.value.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("panseg-rt bench: error: ") and argv[0] in err


def test_missing_engine_is_a_one_line_error(tmp_path, capsys):
    for name in ("missing.onnx", "missing.plan"):
        code, _, err = _bench([str(tmp_path / name), "--no-progress"], capsys)
        assert code == 1 and err == f"panseg-rt bench: error: {tmp_path / name}: no such engine file\n"


def test_bench_runs_without_torch(models, tmp_path):
    out_json = tmp_path / "lean.json"
    proc = run_without_torch(
        f"""
        import json, sys
        from runtime.cli import main
        code = main(["bench", r"{models['dynamic']}", "--shape", "32x32", "--iterations", "3",
                     "--warmup", "1", "--threads", "1", "--no-ort-cache", "--no-progress", "--json", r"{out_json}"])
        assert code == 0, code
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
        assert not leaked, leaked
        print("LEAN-OK")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "LEAN-OK" in proc.stdout and "Throughput: " in proc.stdout
    report = json.loads(out_json.read_text())
    assert [len(row["samples_ms"]) for row in report["rows"]] == [3, 3, 3] and report["shape"] == [32, 32]

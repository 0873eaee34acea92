"""`panseg-rt bench` and runtime/bench.py: statistics against numpy and brute force, the timing loop with a fake
clock, shape resolution against the engine and the resize policy, and the command on tiny exported models."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, run_without_torch

from export.onnx import export_checkpoint
from export.onnx.graph import ShapePolicy
from runtime import bench
from runtime.backends import OnnxRuntimeBackend
from runtime.backends.base import Backend, TensorSpec
from runtime.bench import BenchOptions, latency_stats, make_feeds, percentile, resolve_shape, run_benchmark, time_calls
from runtime.categories import categories_to_json
from runtime.cli import main
from runtime.errors import PansegError
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
    "format_version", "created", "model", "batch", "shape", "batch_source", "shape_source", "inputs",
    "padding_fraction", "padded_columns", "seed", "iterations", "duration_seconds", "warmup", "timed_iterations",
    "latency_ms", "percentile_method", "stdev", "throughput", "wall_seconds", "load_seconds", "stable", "warnings",
    "backend", "backend_version", "providers", "gpu", "threads", "inter_op_threads", "cpu", "cpu_count", "platform",
    "python", "numpy", "samples_ms",
}
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
    "inputs": {"images": {}, "padding_mask": {}}, "outputs": {"pred_logits": {}},
}


class StubBackend(Backend):
    """An engine whose latency is scripted (cycled through ``latencies_ms``) on a fake clock; it logs every call."""

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
        return [TensorSpec("pred_logits", np.dtype(np.float32), ("batch", 4, 3))]

    def metadata(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in STUB_METADATA.items()}

    def _infer(self, feeds, outputs):
        self.clock.advance_ms(self.latencies_ms[len(self.calls) % len(self.latencies_ms)])
        self.calls.append({name: array.shape for name, array in feeds.items()})
        return {"pred_logits": np.zeros((feeds["images"].shape[0], 4, 3), np.float32)}

    def _release(self) -> None:
        pass


def _stub_info(stub: StubBackend):
    return parse_model_info(stub.metadata(), "stub")


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
    result = run_benchmark(stub, _stub_info(stub), BenchOptions(iterations=6, warmup=4, progress=False),
                           clock=stub.clock)
    assert len(stub.calls) == 10
    assert result.timing.warmup_iterations == 4 and len(result.timing.samples_ms) == 6
    assert result.stats.max == pytest.approx(2.0)  # no 50 ms warmup call among the samples
    assert result.qps == pytest.approx(500.0) and result.images_per_second == pytest.approx(500.0)


@pytest.mark.parametrize(("latencies", "unstable"), [
    ([5.0], False), ([0.96, 1.04], False), ([0.94, 1.06], True), ([1.0, 3.0], True)])
def test_cv_warning_only_for_variable_latency(tmp_path, monkeypatch, capsys, latencies, unstable):
    """Through the command: the stub stands in for the engine and its clock for perf_counter_ns."""
    engine = tmp_path / "stub.onnx"
    engine.write_bytes(b"stub")
    stub = StubBackend(engine, latencies)
    monkeypatch.setattr(bench, "select_backend", lambda *args, **kwargs: stub)
    monkeypatch.setattr(bench, "perf_counter_ns", stub.clock)
    code, out, err = _bench(["--engine", str(engine), "--iterations", "10", "--warmup", "0", "--no-progress",
                             "--json", str(tmp_path / "b.json")], capsys)
    assert code == 0
    report = json.loads((tmp_path / "b.json").read_text())
    cv = np.std(latencies * 5) / np.mean(latencies * 5)
    assert report["latency_ms"]["cv"] == pytest.approx(cv, abs=1e-6)
    assert ("timings unstable" in err) is unstable
    assert report["stable"] is not unstable and bool(report["warnings"]) is unstable
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
        code, out, err = _bench(["--engine", str(models["static"]), *extra, *ORT], capsys)
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


def test_json_report_is_complete_and_consistent_with_its_samples(models, tmp_path, monkeypatch, capsys):
    calls = []
    real_select = bench.select_backend

    def counting_select(*args, **kwargs):
        backend = real_select(*args, **kwargs)
        infer = backend.infer

        def counted(*a, **k):
            calls.append(1)
            return infer(*a, **k)

        backend.infer = counted
        return backend

    monkeypatch.setattr(bench, "select_backend", counting_select)
    out_json = tmp_path / "report" / "bench.json"
    code, out, err = _bench(["--engine", str(models["dynamic"]), "--batch", "2", "--shape", "32x48",
                             "--iterations", "7", "--warmup", "3", "--padding-fraction", "0.5",
                             "--json", str(out_json), *ORT], capsys)
    assert code == 0, err
    assert len(calls) == 3 + 7
    report = json.loads(out_json.read_text())
    assert set(report) == JSON_KEYS and set(report["latency_ms"]) == LATENCY_KEYS
    assert [p.name for p in out_json.parent.iterdir()] == ["bench.json"]  # no temporary file left
    samples = report["samples_ms"]
    assert len(samples) == report["timed_iterations"] == report["latency_ms"]["count"] == 7
    assert report["warmup"]["done_iterations"] == 3
    lat = report["latency_ms"]
    assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] == min(samples) and lat["max"] == max(samples)
    assert lat["mean"] == pytest.approx(statistics.fmean(samples), rel=1e-12)
    assert lat["median"] == pytest.approx(statistics.median(samples), rel=1e-12)
    assert lat["p90"] == pytest.approx(_linear_percentile(samples, 90), rel=1e-12)
    assert lat["stdev"] == pytest.approx(statistics.pstdev(samples), rel=1e-9)
    assert report["throughput"]["images_per_second"] == pytest.approx(2 * 1000 / statistics.fmean(samples))
    assert report["throughput"]["qps"] == pytest.approx(1000 / statistics.fmean(samples))
    assert sum(samples) / 1000 <= report["wall_seconds"]
    assert report["batch"] == 2 and report["shape"] == [32, 48] and report["padded_columns"] == 24
    assert report["inputs"] == {"images": {"shape": [2, 3, 32, 48], "dtype": "float32"},
                                "padding_mask": {"shape": [2, 32, 48], "dtype": "bool"}}
    assert report["backend"] == "onnxruntime" and report["providers"] == ["CPUExecutionProvider"]
    assert report["threads"] == 1 and report["backend_version"] and report["cpu"]
    assert "=== Performance summary ===" in out and "Throughput: " in out and "qps" in out
    assert f"mean = {lat['mean']:.4f} ms" in out and f"percentile(99%) = {lat['p99']:.4f} ms" in out


@pytest.mark.parametrize("argv", [
    ["--iterations", "0"], ["--batch", "0"], ["--warmup", "-1"], ["--threads", "0"], ["--duration", "-2"],
    ["--warmup-seconds", "nan"], ["--padding-fraction", "1"], ["--shape", "0x10"], ["--shape", "64"]])
def test_non_positive_numbers_are_one_line_errors(models, capsys, argv):
    code, out, err = _bench(["--engine", str(models["dynamic"]), *ORT, *argv], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("panseg-rt bench: error: ") and argv[0] in err


def test_missing_engine_is_a_one_line_error(tmp_path, capsys):
    for name in ("missing.onnx", "missing.plan"):
        code, _, err = _bench(["--engine", str(tmp_path / name), "--no-progress"], capsys)
        assert code == 1 and err == f"panseg-rt bench: error: {tmp_path / name}: no such engine file\n"


def test_bench_runs_without_torch(models, tmp_path):
    out_json = tmp_path / "lean.json"
    proc = run_without_torch(
        f"""
        import json, sys
        from runtime.cli import main
        code = main(["bench", "--engine", r"{models['dynamic']}", "--shape", "32x32", "--iterations", "3",
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
    assert len(report["samples_ms"]) == 3 and report["shape"] == [32, 32]

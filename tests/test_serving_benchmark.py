"""The serving benchmark's own logic, without a server: configuration names, the issue's ratios and targets, the
report text, and the per-request accounting from two counter snapshots. (Its stage timing runs on the tiny model in
tests/test_serving.py, which has the fixtures.)"""

from __future__ import annotations

import argparse

import pytest

from benchmarks.serving import DEFAULT_INFER, Configuration, markdown, summary
from benchmarks.serving_accounting import Snapshot, per_request


def test_configuration_names_parse_and_bad_ones_are_refused():
    config = Configuration.parse("2x1b")
    assert (config.instances, config.threads, config.batching) == (2, 1, True)
    assert config.name == "2x1b" and config.label == "2 instances x 1 thread, batching on"
    assert Configuration.parse("1x2").label == "1 instance x 2 threads, batching off"
    for bad in ("2x", "0x1", "2x0", "2by1", "2x1c"):
        with pytest.raises(argparse.ArgumentTypeError, match="INSTANCESxTHREADS"):
            Configuration.parse(bad)


def _row(config: str, concurrency: int, rps: float, p50: float) -> dict:
    return {"config": config, "concurrency": concurrency, "requests": 8, "errors": 0, "identical_to_infer": 8,
            "rps": rps, "p50": p50, "p90": p50, "p99": p50, "cpu_client_ms": 0.9, "cpu_server_ms": 0.6,
            "cpu_stubs_ms": 21.5}


def _report() -> dict:
    return {"command": "python -m benchmarks.serving -o out", "model": "demo/model.onnx", "size": 128,
            "threshold": None, "images": 4, "machine": {"cpu": "a CPU", "logical_cpus": 2},
            "configs": {"2x1b": "2 instances x 1 thread, batching on", "1x2": "1 instance x 2 threads, batching off"},
            "in_process": {DEFAULT_INFER: {"ms_per_image": 20.0, "cpu_ms_per_image": 30.0, "images_per_second": 50.0},
                           "2x1b": {"ms_per_image": 23.0, "cpu_ms_per_image": 23.0, "images_per_second": 43.5},
                           "1x2": {"ms_per_image": 20.0, "cpu_ms_per_image": 30.0, "images_per_second": 50.0}},
            "served": [_row("2x1b", 1, 40.0, 21.0), _row("2x1b", 4, 80.0, 44.0),
                       _row("1x2", 1, 40.0, 19.0), _row("1x2", 4, 44.0, 70.0)]}


def test_summary_compares_each_configuration_with_infer_on_its_own_engine_options():
    ratios = summary(_report())
    # 25 ms per request at concurrency 1 (1 / 40 req/s), against infer's 23 ms on the same engine options
    assert ratios["2x1b"] == {"overhead_at_concurrency_1": 0.087, "throughput_4_over_1": 2.0,
                              "cpu_overhead_at_concurrency_1": 0.0, "over_default_infer": 0.25, "meets_targets": True}
    assert ratios["1x2"]["overhead_at_concurrency_1"] == 0.25 and ratios["1x2"]["meets_targets"] is False
    assert ratios["1x2"]["cpu_overhead_at_concurrency_1"] == -0.233
    text = markdown({**_report(), "summary": ratios})
    assert "| 2x1b (2 instances x 1 thread, batching on) | +8.7% | 2.0x | yes | +0.0% | +25.0% |" in text
    assert "| 1x2 (1 instance x 2 threads, batching off) | +25.0% | 1.1x | no | -23.3% | +25.0% |" in text


def test_per_request_accounting_differences_two_snapshots():
    timers = {"request": 0.0, "queue": 0.0, "compute_input": 0.0, "compute_infer": 0.0, "compute_output": 0.0}
    before = Snapshot({**timers, "requests": 10.0, "executions": 10.0}, {"server": 1.0, "stubs": 5.0})
    after = Snapshot({**timers, "request": 40_000.0, "queue": 4_000.0, "compute_infer": 30_000.0, "requests": 14.0,
                      "executions": 12.0}, {"server": 1.004, "stubs": 5.08})
    ms = per_request([(before, after)], client_cpu_seconds=0.004)
    assert ms["request_ms"] == 10.0 and ms["queue_ms"] == 1.0 and ms["compute_infer_ms"] == 7.5
    assert ms["cpu_server_ms"] == 1.0 and ms["cpu_stubs_ms"] == 20.0 and ms["cpu_client_ms"] == 1.0
    assert ms["requests_per_execution"] == 2.0
    twice = per_request([(before, after), (before, after)], client_cpu_seconds=0.008)  # rounds add up
    assert twice == ms
    assert per_request([(before, before)], 0.0) == {}

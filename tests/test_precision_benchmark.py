"""benchmarks.precision's own logic (no model): which variants one run makes per calibration method, and its report."""

from __future__ import annotations

import pytest

from benchmarks.precision import build_parser, markdown, variant_runs


def test_every_int8_variant_is_made_once_per_calibration_method_and_minmax_keeps_the_plain_name():
    assert variant_runs(["fp16", "int8-cpu"], ["minmax", "percentile", "entropy"]) == [
        ("fp16", "fp16", None), ("int8-cpu", "int8-cpu", "minmax"),
        ("int8-cpu-percentile", "int8-cpu", "percentile"), ("int8-cpu-entropy", "int8-cpu", "entropy")]
    assert variant_runs(["int8-tensorrt"], ["entropy"]) == [("int8-tensorrt-entropy", "int8-tensorrt", "entropy")]


def test_calibration_methods_are_checked_by_the_parser(capsys):
    args = build_parser().parse_args(["--calibration-methods", "entropy, minmax,entropy"])
    assert args.calibration_methods == ["entropy", "minmax"]
    assert build_parser().parse_args([]).calibration_methods == ["minmax"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--calibration-methods", "minmax,kl"])
    assert "unknown calibration method(s) ['kl']" in capsys.readouterr().err


def test_report_names_the_load_and_fp32s_first_and_last_time():
    row = {"speedup_vs_fp32": 1.0, "category_agreement": 1, "same_segment_rate": 1, "pq_vs_fp32": 100,
           "max_logits_error": 0}
    report = {"model": "r50.onnx", "cpu": "AMD EPYC", "flags": {"avx2": True}, "threads": 2, "images": ["a.jpg"],
              "calibration": ["a.jpg"], "load_average_before_after": [[1.5, 1.0, 0.5], [2.5, 1.5, 0.7]],
              "rows": [{**row, "model": "fp32", "ms_per_image": 100.0, "ms_per_image_last": 110.0},
                       {**row, "model": "int8-cpu-entropy", "ms_per_image": 50.0, "speedup_vs_fp32": 2.0}]}
    text = markdown(report)
    assert "Load average (1, 5, 15 min) [1.5, 1.0, 0.5] before, [2.5, 1.5, 0.7] after" in text
    assert "| fp32 | 100.0 / 110.0 | 1.00x | - |" in text and "| int8-cpu-entropy | 50.0 | 2.00x | - |" in text
    report["rows"][1]["kept_queries_per_image"] = 61.5
    assert "| int8-cpu-entropy | 50.0 | 2.00x | 61.5 | 1 |" in markdown(report)

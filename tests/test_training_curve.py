"""The PQ-against-minutes curve offsets stage 2 by stage 1's time and keeps only evaluated epochs."""

import json

import pytest

from benchmarks.demo.training_curve import plot_curve, pq_curve
from runtime.errors import PansegError


def _log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curve_points_are_offset_by_stage1_minutes_and_plotted(tmp_path):
    s1 = _log(tmp_path / "s1.jsonl", [{"epoch": 0, "minutes": 1.5}, {"epoch": 1, "minutes": 3.25}])
    s2 = _log(tmp_path / "s2.jsonl", [
        {"epoch": 0, "minutes": 1.0},  # not evaluated: no point
        {"epoch": 1, "minutes": 2.5, "pq": 40.0, "pq_th": 20.0, "pq_st": 60.0},
        {"epoch": 2, "minutes": 4.0, "pq": 50.0, "pq_th": 30.0, "pq_st": 70.0},
    ])
    curve = pq_curve(s1, s2)
    assert curve["stage1_minutes"] == 3.25 and curve["stage2_minutes"] == 4.0
    assert [(p["epoch"], p["minutes"], p["pq"]) for p in curve["points"]] == [(1, 5.75, 40.0), (2, 7.25, 50.0)]
    png = plot_curve(curve, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_or_broken_log_names_the_file(tmp_path):
    s1 = _log(tmp_path / "s1.jsonl", [{"epoch": 0, "minutes": 1.0}])
    with pytest.raises(PansegError, match="s2.jsonl: training log not found"):
        pq_curve(s1, tmp_path / "s2.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(PansegError, match="bad.jsonl: not a JSON-lines"):
        pq_curve(s1, tmp_path / "bad.jsonl")

"""The mask-graph profiler (benchmarks/mask_profile.py, benchmarks/ort_profile.py) on a real ONNX Runtime profile of
the tiny model's mask graph.

References: a brute-force sum over the profile's raw events (times), and torch's FlopCounterMode on the same mask
head at the same inputs (FLOPs), which knows nothing of ONNX Runtime's node names, fusions or channel padding.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import separable, synthetic_images
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.mask_profile import main as mask_profile_main
from benchmarks.mask_profile import profile_graphs
from benchmarks.ort_profile import aggregate, load_events, original_weights
from export.onnx import export_checkpoint
from export.onnx.graph import ShapePolicy, sample_inputs
from export.onnx.sparse import DetectorGraph, MaskGraph, export_sparse_model, trace_mask_inputs
from runtime.categories import categories_to_json
from runtime.contract import DETECTOR_OUTPUTS, MASK_GRAPH_INPUTS
from train.checkpoint import save_checkpoint
from train.models import build_model
from train.prepare.synthetic import categories as synthetic_categories

WARMUP, RUNS = 1, 2


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return separable(build_model(TINY)).eval()


@pytest.fixture(scope="module")
def profiled(tiny_model, tmp_path_factory):
    """(mask graph feeds as torch tensors, aggregated profile, raw profile events)."""
    folder = tmp_path_factory.mktemp("mask-profile")
    _, masks, _, _ = export_sparse_model(tiny_model, ShapePolicy())
    path = folder / "tiny.masks.onnx"
    path.write_bytes(masks.SerializeToString())
    with torch.no_grad():
        traced = dict(zip(DETECTOR_OUTPUTS, DetectorGraph(tiny_model)(*sample_inputs(ShapePolicy())), strict=True))
    inputs = trace_mask_inputs(traced)
    feeds = {name: t.numpy() for name, t in zip(MASK_GRAPH_INPUTS, inputs, strict=True)}
    events = load_events(profile_graphs([(path, feeds)], 1, WARMUP, RUNS, 1, folder)[0])
    return inputs, aggregate(events, WARMUP, original_weights(masks), peak_flop_per_s=1e10), events


def test_times_per_operator_and_node_are_the_raw_events_summed_over_the_runs_after_the_warmup(profiled):
    _, profile, events = profiled
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    assert len(runs) == WARMUP + RUNS
    per_op: dict[str, float] = defaultdict(float)
    per_node: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            if any(start <= e["ts"] <= end for start, end in runs[WARMUP:]):
                per_op[e["args"]["op_name"]] += e["dur"] / RUNS / 1e3
                per_node[e["name"].removesuffix("_kernel_time")] += e["dur"] / RUNS / 1e3
    assert {o.op_type: o.ms for o in profile.ops} == pytest.approx(dict(per_op), rel=1e-9, abs=1e-9)
    assert {n.node: n.ms for n in profile.nodes} == pytest.approx(dict(per_node), rel=1e-9, abs=1e-9)
    assert profile.node_ms == pytest.approx(sum(per_op.values()))
    assert profile.runs == RUNS and 0 < profile.node_ms <= profile.run_ms
    assert sum(o.share for o in profile.ops) == pytest.approx(1.0)
    assert [n.ms for n in profile.nodes] == sorted((n.ms for n in profile.nodes), reverse=True)
    # the warmup really was left out: with it, the sums differ
    everything = sum(e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    assert everything / 1e3 / RUNS > profile.node_ms


def test_useful_flops_equal_torchs_count_of_the_same_mask_head(profiled, tiny_model):
    inputs, profile, _ = profiled
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        MaskGraph(tiny_model)(*inputs)
    assert profile.flops == counter.get_total_flops()
    convs = [n for n in profile.nodes if n.op_type == "Conv"]
    assert convs and all(n.executed_flops >= n.flops > 0 for n in convs)
    for row in [*profile.nodes, *profile.ops]:
        if row.flops:
            assert row.flop_per_s == pytest.approx(row.flops / (row.ms / 1e3))
            assert row.share_of_peak == pytest.approx(row.flop_per_s / 1e10)


def test_aggregate_refuses_a_profile_with_no_run_after_the_warmup(profiled):
    _, _, events = profiled
    with pytest.raises(ValueError, match="none left after a warmup"):
        aggregate(events, warmup=WARMUP + RUNS)


def test_command_line_profiles_each_models_mask_graph_and_writes_the_report(tiny_model, tmp_path, capsys):
    checkpoint = tmp_path / "tiny.pth"
    save_checkpoint(checkpoint, {"model": tiny_model.state_dict(), "config": TINY.to_dict(),
                                 "categories": categories_to_json(synthetic_categories())})
    model = export_checkpoint(checkpoint, tmp_path / "tiny.onnx", run_verification=False, progress=False).path
    image = next(iter(sorted(synthetic_images(tmp_path / "images", count=1).iterdir())))
    out = tmp_path / "report"
    assert mask_profile_main([str(model), str(model), "--image", str(image), "--kept", "3", "--threads", "1",
                              "--runs", "1", "--rounds", "2", "--peak-size", "256", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == [f"{tmp_path.name}/tiny"] * 2
    for m in report["models"]:
        assert m["profile"]["runs"] == 2 and (out / m["raw_profile"]).is_file()
    assert report["models"][0]["raw_profile"] != report["models"][1]["raw_profile"]
    assert report["mask_inputs"]["hs_kept"] == [3, TINY.hidden_dim]
    text = (out / "report.md").read_text()
    assert "## Side by side" in text and "| Conv |" in text and report["cpu"] in text
    assert mask_profile_main([str(tmp_path / "missing.onnx"), "--out", str(out)]) == 1
    assert "missing.onnx: no such model file" in capsys.readouterr().err


def test_a_model_without_mask_graph_is_refused_in_one_line(tmp_path, capsys):
    single = tmp_path / "single.onnx"
    single.write_bytes(b"not a model")
    assert mask_profile_main([str(single), "--image", str(single), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "single.onnx" in err[0]

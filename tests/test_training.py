"""Two-stage training end to end on tiny synthetic data: frozen detector, exact resume, 2-process DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, log_lines, run_train

from train.main import main as train_main


def test_frozen_stage_leaves_detector_bit_identical(tiny_dataset, tmp_path):
    stage1 = run_train(tiny_dataset, tmp_path / "s1", "--epochs", "1", "--max_iters", "2")
    stage2 = run_train(tiny_dataset, tmp_path / "s2", "--epochs", "1", "--max_iters", "2", "--masks",
                       "--frozen_weights", str(tmp_path / "s1" / "checkpoint.pth"), "--lr", "1e-3")
    detector = {k: v for k, v in stage1["model"].items()}
    panoptic = stage2["model"]
    assert set(f"detr.{k}" for k in detector) <= set(panoptic)
    for k, v in detector.items():
        assert torch.equal(panoptic[f"detr.{k}"], v), k
    # ...while the segmentation head did learn
    changed = [k for k in panoptic if k.startswith(("mask_head.", "bbox_attention."))]
    fresh = run_train(tiny_dataset, tmp_path / "s2b", "--epochs", "1", "--max_iters", "0", "--masks",
                      "--frozen_weights", str(tmp_path / "s1" / "checkpoint.pth"))
    assert any(not torch.equal(panoptic[k], fresh["model"][k]) for k in changed)


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    full = run_train(tiny_dataset, tmp_path / "full", "--epochs", "2")
    run_train(tiny_dataset, tmp_path / "part", "--epochs", "1")
    resumed = run_train(tiny_dataset, tmp_path / "part", "--epochs", "2", "--resume",
                        str(tmp_path / "part" / "checkpoint.pth"))
    assert resumed["epoch"] == full["epoch"] == 1
    for k, v in full["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    assert log_lines(tmp_path / "part")[-1]["train_loss"] == log_lines(tmp_path / "full")[-1]["train_loss"]


def test_checkpoint_holds_only_plain_data(tiny_dataset, tmp_path):
    ckpt = run_train(tiny_dataset, tmp_path / "c", "--epochs", "1", "--max_iters", "1")
    assert isinstance(ckpt["args"], dict) and isinstance(ckpt["config"], dict)
    assert ckpt["config"]["backbone"] == "resnet18" and ckpt["config"]["num_queries"] == 8


@pytest.mark.slow
def test_ddp_two_processes_keep_identical_replicas(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train",
           "--coco_path", str(tiny_dataset), "--output_dir", str(out), *TINY_TRAIN_FLAGS, "--eval_every", "0",
           "--epochs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = log_lines(out)
    assert len(lines) == 2
    for line in lines:
        sums = line["replica_checksums"]
        assert len(sums) == 2 and sums[0] == sums[1]
    # the replicas trained: weights moved between epochs
    assert lines[0]["replica_checksums"][0] != lines[1]["replica_checksums"][0]


def test_terminal_gets_readable_lines_and_json_only_on_request(tiny_dataset, tmp_path, capsys):
    data = tiny_dataset
    out = tmp_path / "console"
    capsys.readouterr()
    run_train(data, out, "--epochs", "2", "--max_iters", "1")
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in printed] == ["epoch 1/2", "epoch 2/2"]
    assert all(" | loss " in line and not line.startswith("{") for line in printed)
    assert [e["epoch"] for e in log_lines(out)] == [0, 1]  # log.jsonl keeps the full JSON

    run_train(data, out, "--epochs", "3", "--max_iters", "1", "--resume", str(out / "checkpoint.pth"), "--json")
    printed = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in printed] == log_lines(out)[-1:]

    resume = ["--coco_path", str(data), *TINY_TRAIN_FLAGS, "--resume", str(out / "checkpoint.pth")]
    assert train_main([*resume, "--eval"]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("evaluation of the checkpoint from epoch 3: val loss ") and "{" not in summary
    assert train_main([*resume, "--eval", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["epoch"] == 2 and f"val loss {stats['val_loss']:.3f}" in summary

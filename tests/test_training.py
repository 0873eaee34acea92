"""Two-stage training end to end on tiny synthetic data: frozen detector, exact resume, 2-process DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch

from train.checkpoint import load_checkpoint
from train.main import main as train_main
from train.prepare.synthetic import generate_dataset

TINY = ["--backbone", "resnet18", "--hidden_dim", "128", "--nheads", "8", "--enc_layers", "1", "--dec_layers", "2",
        "--dim_feedforward", "64", "--num_queries", "8", "--image_size", "64", "--batch_size", "2",
        "--device", "cpu", "--num_workers", "0", "--no_progress", "--lr_backbone", "1e-5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, train=6, val=2, size=64, seed=3)
    return root


def run_train(data, out, *extra):
    code = train_main(["--coco_path", str(data), "--output_dir", str(out), *TINY, "--eval_every", "0", *extra])
    assert code == 0
    return load_checkpoint(out / "checkpoint.pth")


def log_lines(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_frozen_stage_leaves_detector_bit_identical(data, tmp_path):
    stage1 = run_train(data, tmp_path / "s1", "--epochs", "1", "--max_iters", "2")
    stage2 = run_train(data, tmp_path / "s2", "--epochs", "1", "--max_iters", "2", "--masks",
                       "--frozen_weights", str(tmp_path / "s1" / "checkpoint.pth"), "--lr", "1e-3")
    detector = {k: v for k, v in stage1["model"].items()}
    panoptic = stage2["model"]
    assert set(f"detr.{k}" for k in detector) <= set(panoptic)
    for k, v in detector.items():
        assert torch.equal(panoptic[f"detr.{k}"], v), k
    # ...while the segmentation head did learn
    changed = [k for k in panoptic if k.startswith(("mask_head.", "bbox_attention."))]
    fresh = run_train(data, tmp_path / "s2b", "--epochs", "1", "--max_iters", "0", "--masks",
                      "--frozen_weights", str(tmp_path / "s1" / "checkpoint.pth"))
    assert any(not torch.equal(panoptic[k], fresh["model"][k]) for k in changed)


def test_resume_continues_exactly(data, tmp_path):
    full = run_train(data, tmp_path / "full", "--epochs", "2")
    run_train(data, tmp_path / "part", "--epochs", "1")
    resumed = run_train(data, tmp_path / "part", "--epochs", "2", "--resume", str(tmp_path / "part" / "checkpoint.pth"))
    assert resumed["epoch"] == full["epoch"] == 1
    for k, v in full["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    assert log_lines(tmp_path / "part")[-1]["train_loss"] == log_lines(tmp_path / "full")[-1]["train_loss"]


def test_checkpoint_holds_only_plain_data(data, tmp_path):
    ckpt = run_train(data, tmp_path / "c", "--epochs", "1", "--max_iters", "1")
    assert isinstance(ckpt["args"], dict) and isinstance(ckpt["config"], dict)
    assert ckpt["config"]["backbone"] == "resnet18" and ckpt["config"]["num_queries"] == 8


@pytest.mark.slow
def test_ddp_two_processes_keep_identical_replicas(data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train",
           "--coco_path", str(data), "--output_dir", str(out), *TINY, "--eval_every", "0", "--epochs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = log_lines(out)
    assert len(lines) == 2
    for line in lines:
        sums = line["replica_checksums"]
        assert len(sums) == 2 and sums[0] == sums[1]
    # the replicas trained: weights moved between epochs
    assert lines[0]["replica_checksums"][0] != lines[1]["replica_checksums"][0]


def test_terminal_gets_readable_lines_and_json_only_on_request(data, tmp_path, capsys):
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

    assert train_main(["--coco_path", str(data), *TINY, "--resume", str(out / "checkpoint.pth"), "--eval"]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("evaluation of the checkpoint from epoch 3: val loss ") and "{" not in summary
    assert train_main(["--coco_path", str(data), *TINY, "--resume", str(out / "checkpoint.pth"), "--eval",
                       "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["epoch"] == 2 and f"val loss {stats['val_loss']:.3f}" in summary

"""A tiny DETR panoptic model must overfit a handful of synthetic images through both training stages.

This is the end-to-end check that model, matcher, criterion, optimizer and post-processing fit together: if any of
them is wrong (a mis-indexed matched mask, a loss with the wrong sign, a frozen part that should learn) the losses
stall and PQ on the very images it trained on stays low. The same builders as ``python -m train`` are used
(train.main.build_training); only the data loop is a fixed batch repeated, so the test is seconds, not minutes.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS

from train.args import build_parser
from train.checkpoint import save_checkpoint
from train.datasets import build_dataset, collate_fn, scaled_transform_options
from train.engine import train_one_epoch
from train.evaluate import evaluate
from train.main import build_training
from train.prepare.synthetic import generate_dataset

SIZE = 64
IMAGES = 4
# The shared tiny flags (64-pixel images) with DC5, a backbone trained from scratch, a wider feed-forward, 10 queries,
# no crop and no dropout: what overfitting a handful of images needs.
MODEL = [*TINY_TRAIN_FLAGS, "--scratch_backbone", "--dilation", "--dim_feedforward", "256", "--num_queries", "10",
         "--image_size", str(SIZE), "--no_crop", "--dropout", "0.0", "--eval_batch_size", "1"]
STAGE1_STEPS, STAGE2_STEPS = 150, 200


@pytest.fixture(scope="module")
def handful(tmp_path_factory) -> Path:
    """IMAGES synthetic training images, also used as the val split (overfitting is judged on what it saw)."""
    root = tmp_path_factory.mktemp("handful")
    generate_dataset(root, train=IMAGES, val=1, size=SIZE, seed=3)
    shutil.rmtree(root / "val2017")
    shutil.rmtree(root / "panoptic_val2017")
    shutil.copytree(root / "train2017", root / "val2017")
    shutil.copytree(root / "panoptic_train2017", root / "panoptic_val2017")
    for kind in ("instances", "panoptic"):
        shutil.copy(root / "annotations" / f"{kind}_train2017.json", root / "annotations" / f"{kind}_val2017.json")
    return root


def _fixed_batch(root: Path, masks: bool):
    dataset = build_dataset("val", "coco_panoptic", str(root), str(root), masks=masks,
                            **scaled_transform_options(SIZE))
    return dataset, collate_fn([dataset[i] for i in range(len(dataset))])


def _train(training, batch, steps: int) -> tuple[float, float]:
    """Mean weighted loss over the first and over the last tenth of the steps."""
    chunk = max(steps // 10, 1)
    first = train_one_epoch(training.model, training.criterion, itertools.repeat(batch, chunk), training.optimizer,
                            "cpu", 0, 0.1, frozen=training.frozen_modules, show_progress=False)
    train_one_epoch(training.model, training.criterion, itertools.repeat(batch, steps - 2 * chunk),
                    training.optimizer, "cpu", 0, 0.1, frozen=training.frozen_modules, show_progress=False)
    last = train_one_epoch(training.model, training.criterion, itertools.repeat(batch, chunk), training.optimizer,
                           "cpu", 0, 0.1, frozen=training.frozen_modules, show_progress=False)
    return first, last


@pytest.mark.slow
def test_tiny_model_overfits_a_handful_of_images_in_both_stages(handful, tmp_path):
    torch.manual_seed(0)
    args1 = build_parser().parse_args([*MODEL, "--coco_path", str(handful), "--token_loss_coef", "1",
                                       "--lr", "1e-3", "--lr_backbone", "1e-3"])
    stage1 = build_training(args1)
    _, batch = _fixed_batch(handful, masks=False)
    first, last = _train(stage1, batch, STAGE1_STEPS)
    assert last["loss"] < first["loss"] / 5, (first["loss"], last["loss"])
    assert last["class_error"] == 0.0

    detector = tmp_path / "stage1.pth"
    save_checkpoint(detector, {"model": stage1.model_without_ddp.state_dict(), "config": stage1.config.to_dict()})
    args2 = build_parser().parse_args([*MODEL, "--coco_path", str(handful), "--masks", "--frozen_weights",
                                       str(detector), "--lr", "1e-3", "--mask_attention_gain", "500"])
    stage2 = build_training(args2)
    dataset, batch = _fixed_batch(handful, masks=True)
    first, last = _train(stage2, batch, STAGE2_STEPS)
    assert last["loss_dice"] < first["loss_dice"] / 2, (first["loss_dice"], last["loss_dice"])

    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate_fn)
    stats = evaluate(stage2.model_without_ddp, stage2.criterion, loader, "cpu", args2, None)
    print({k: v for k, v in stats.items() if k.startswith("pq")})
    assert stats["pq"] >= 60

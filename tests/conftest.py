"""What several test modules share, in one place: the tiny model configuration and ``python -m train`` flags, the tiny
synthetic dataset, and small helpers (a torch-free subprocess, a random model made to behave like a trained one, a
padded batch).

The rule: a test module never imports another test module; what more than one of them needs lives here (constants
and plain functions are imported by name, ``from conftest import TINY_CONFIG``; fixtures are found by pytest).
Helper modules beside it hold one module's bulk data or an independent reference: pq_cases.py (test_pq's cases),
detr_reference.py (detr's original post-processing). A test that needs a different tiny model says how it differs
with ``TINY_CONFIG.replace(...)``, or appends flags to ``TINY_TRAIN_FLAGS`` (argparse keeps the last value).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from train.models import DETRConfig

# The tiny panoptic DETR most tests build: ResNet-18, one encoder and two decoder layers, 10 queries, the synthetic
# dataset's 12 classes. hidden_dim 128 is the smallest the mask head's GroupNorm(8, hidden_dim / 16) accepts.
TINY_CONFIG = DETRConfig(backbone="resnet18", hidden_dim=128, nheads=8, enc_layers=1, dec_layers=2, dim_feedforward=256,
                         num_queries=10, num_classes=12, dropout=0.0)

# The same kind of model as ``python -m train`` flags, on 64-pixel images, CPU, no workers, no progress bars.
TINY_TRAIN_FLAGS = ["--backbone", "resnet18", "--hidden_dim", "128", "--nheads", "8", "--enc_layers", "1",
                    "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries", "8", "--image_size", "64",
                    "--batch_size", "2", "--device", "cpu", "--num_workers", "0", "--no_progress",
                    "--lr_backbone", "1e-5"]

THING, STUFF = 1, 8  # circle and wall of the synthetic category table


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """Every test (and every process it starts) caches optimized models in a temporary folder, never in the user's
    ~/.cache/panseg: tests must not depend on, or leave behind, what earlier runs cached."""
    import os

    from runtime.cache_dir import CACHE_ENV

    folder = tmp_path_factory.mktemp("panseg-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


# --------------------------------------------------------------------------------------------- tiny training


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Six train and two val synthetic images of 64 pixels (read-only: training writes only to its output folder)."""
    from train.prepare.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, train=6, val=2, size=64, seed=3)
    return root


def run_train(data: Path, out: Path, *extra: str) -> dict[str, Any]:
    """``python -m train`` in-process with the tiny flags (no evaluation unless ``extra`` asks); its checkpoint."""
    from train.checkpoint import load_checkpoint
    from train.main import main as train_main

    code = train_main(["--coco_path", str(data), "--output_dir", str(out), *TINY_TRAIN_FLAGS, "--eval_every", "0",
                       *extra])
    assert code == 0
    return load_checkpoint(out / "checkpoint.pth")


def log_lines(out: Path) -> list[dict[str, Any]]:
    """The training log of ``out`` (one JSON object per epoch)."""
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------- tiny models


def separable(model: torch.nn.Module) -> torch.nn.Module:
    """Confident thing/stuff predictions split between queries, and per-query masks that differ well beyond float
    rounding, so panoptic comparisons (export verification, infer parity, agreement) mean something.

    Not benchmarks.defaults.make_non_degenerate: that one calibrates an R50 on photos for COCO categories and a
    target query count (seconds per photo); this one is instant and made for the tiny model's synthetic classes."""
    hidden_dim = model.detr.transformer.d_model
    with torch.no_grad():
        model.detr.class_embed.bias[[THING, STUFF]] += 8.0
        model.detr.class_embed.weight[STUFF] += 3.0 * torch.randn(model.detr.class_embed.weight.shape[1])
        model.bbox_attention.q_linear.weight *= 3.0
        model.mask_head.lay1.weight[:, hidden_dim:] *= 100.0
    return model


def random_padded_batch(shapes: list[tuple[int, int]], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random normalized images of the given sizes, zero-padded at the bottom/right, and the padding mask: a batch
    padded the way detr's NestedTensor pads, as the exported graphs take it."""
    rng = np.random.default_rng(seed)
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    images = np.zeros((len(shapes), 3, h, w), np.float32)
    mask = np.ones((len(shapes), h, w), bool)
    for k, (ih, iw) in enumerate(shapes):
        images[k, :, :ih, :iw] = rng.standard_normal((3, ih, iw))
        mask[k, :ih, :iw] = False
    return images, mask


# --------------------------------------------------------------------------------------------- lean runtime

# Runs in a fresh interpreter: any attempt to import torch (or the training/export side) fails loudly.
TORCH_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("torch", "torchvision", "train", "export", "benchmarks")
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in the lean-runtime test")
    sys.meta_path.insert(0, Blocker())
    """
)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python where importing torch, torchvision, train, export or benchmarks raises."""
    return subprocess.run([sys.executable, "-c", TORCH_BLOCKER + textwrap.dedent(code)], capture_output=True,
                          text=True)


def synthetic_images(folder: Path, count: int = 3, seed: int = 1, size: int = 64) -> Path:
    """``count`` synthetic val images as PNGs in a new ``folder``: real-looking inputs for export, verification and
    calibration tests."""
    from PIL import Image

    from train.prepare.synthetic import generate_sample

    folder.mkdir()
    for index in range(count):
        Image.fromarray(generate_sample(seed, "val", index, size=size).image).save(folder / f"img{index}.png")
    return folder

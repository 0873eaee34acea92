"""The README's "Train on your own COCO data" workflow end to end, at tiny size: COCO detection JSONs (polygons and
RLE, COCO's real category ids and names) -> detection2panoptic -> validate -> stage 1 fine-tuned from a released-style
checkpoint with another class count -> stage 2 mask head -> ONNX export -> panseg-rt infer -> panseg-rt eval ->
panseg-rt sheet.

The commands are the README's, run in-process (same parsers, same code) from a temporary folder so their relative
paths are the README's too; only sizes and epochs are shortened (``SHORTER``) and the release URL is a local file."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_FLAGS
from PIL import Image
from pycocotools import mask as mask_utils

from export.onnx.__main__ import main as export_main
from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from runtime.cli import main as runtime_main
from runtime.coco_categories import coco_panoptic_categories
from runtime.model_info import parse_model_info
from runtime.subcommands import run_subcommand
from train.args import build_parser
from train.checkpoint import load_checkpoint
from train.main import build_training
from train.main import main as train_main
from train.models import DETRConfig, build_model
from train.prepare.__main__ import SUBCOMMANDS as PREPARE_SUBCOMMANDS

RELEASE_URL = "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth"

# The README section's commands, word for word.
README_COMMANDS = f"""
python -c "import json; stuff = {{187, 199}}; cats = json.load(open('data/mycoco/annotations/instances_train2017.json'))['categories']; json.dump([{{**c, 'isthing': int(c['id'] not in stuff)}} for c in cats], open('data/mycoco/categories.json', 'w'))"
python -m train.prepare detection2panoptic --input-json data/mycoco/annotations/instances_train2017.json -o data/mycoco/annotations/panoptic_train2017.json --segmentations-folder data/mycoco/panoptic_train2017 --categories-json data/mycoco/categories.json
python -m train.prepare detection2panoptic --input-json data/mycoco/annotations/instances_val2017.json -o data/mycoco/annotations/panoptic_val2017.json --segmentations-folder data/mycoco/panoptic_val2017 --categories-json data/mycoco/categories.json
panseg-rt validate data/mycoco/annotations/panoptic_train2017.json data/mycoco/panoptic_train2017
panseg-rt validate data/mycoco/annotations/panoptic_val2017.json data/mycoco/panoptic_val2017
python -m train --coco_path data/mycoco --pretrained {RELEASE_URL} --output_dir runs/mycoco_stage1 --epochs 50 --lr_drop 40
python -m train --coco_path data/mycoco --masks --frozen_weights runs/mycoco_stage1/checkpoint.pth --output_dir runs/mycoco_stage2 --epochs 20 --lr_drop 15
python -m export.onnx runs/mycoco_stage2/checkpoint.pth -o runs/mycoco.onnx --verify-images data/mycoco/val2017
panseg-rt infer runs/mycoco.onnx data/mycoco/val2017 -o runs/mycoco_val --coco-json data/mycoco/annotations/panoptic_val2017.json --overlay
panseg-rt eval --gt-json data/mycoco/annotations/panoptic_val2017.json --gt-folder data/mycoco/panoptic_val2017 --pred-json runs/mycoco_val/predictions.json --pred-folder runs/mycoco_val/panoptic
panseg-rt sheet runs/mycoco_val -o runs/mycoco_sheets
"""  # noqa: E501

SIZE = 64
THINGS = {1: "person", 3: "car", 18: "dog"}  # COCO's ids: sparse, with gaps
STUFF = {187: "sky-other-merged", 199: "wall-other-merged"}  # COCO panoptic stuff ids, above the things
PRETRAINED_CLASSES = 91  # detr's COCO detection release: 92 logits, so the class head must start fresh here


def command_extras(words: list[str]) -> list[str]:
    """What the tiny run adds to a README command (argparse keeps the last value of a repeated flag)."""
    if words[:3] == ["python", "-m", "train"]:
        stage2 = "--masks" in words
        epochs = ["--epochs", "2" if stage2 else "3", "--lr_drop", "100", "--lr", "1e-3" if stage2 else "2e-4"]
        return [*TINY_TRAIN_FLAGS, *epochs, "--max_iters", "4", "--eval_every", "1" if stage2 else "0"]
    if words[:3] == ["python", "-m", "export.onnx"]:
        return ["--verify-sizes", "64", "--verify-max-images", "1", "--no-progress", "--no-simplify"]
    if words[:2] == ["panseg-rt", "infer"]:
        return ["--no-progress", "--threshold", "0.05"]
    if words[:2] == ["panseg-rt", "eval"]:
        return ["--no-progress", "--workers", "1"]
    return []


def run_command(line: str, pretrained: Path) -> int:
    """One README line, in-process; the release URL replaced by the local tiny checkpoint."""
    words = shlex.split(line.replace(RELEASE_URL, str(pretrained)))
    argv = [*words, *command_extras(words)]
    if argv[:2] == ["python", "-c"]:  # plain Python, as a user's shell runs it
        return subprocess.run([sys.executable, *argv[1:]], check=False).returncode
    if argv[:3] == ["python", "-m", "train.prepare"]:
        return run_subcommand("python -m train.prepare", "", PREPARE_SUBCOMMANDS, argv[3:])
    if argv[:3] == ["python", "-m", "train"]:
        return train_main(argv[3:])
    if argv[:3] == ["python", "-m", "export.onnx"]:
        return export_main(argv[3:])
    assert argv[0] == "panseg-rt", line
    return runtime_main(argv[1:])


# ------------------------------------------------------------------------------------------------ the dataset


def categories() -> list[dict]:
    table = coco_panoptic_categories()
    return [table[i].to_json() for i in (*THINGS, *STUFF)]


def rectangle_polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def image_annotations(rng: np.random.Generator, image_id: int, first_id: int) -> tuple[np.ndarray, list[dict]]:
    """A photo-like picture (sky over wall, one or two things) and its detection annotations: things as polygons,
    stuff as compressed RLE of what the things leave free, so no two masks overlap (the converter's rule)."""
    labels = np.full((SIZE, SIZE), 187, np.int32)
    horizon = int(rng.integers(24, 40))
    labels[horizon:] = 199
    anns = []
    things = rng.choice(list(THINGS), size=int(rng.integers(1, 3)), replace=False)
    for k, cat in enumerate(things):
        x0 = int(rng.integers(2, 20)) + 30 * k
        y0 = int(rng.integers(8, 30))
        x1, y1 = x0 + int(rng.integers(12, 24)), y0 + int(rng.integers(12, 26))
        x1, y1 = min(x1, SIZE - 1), min(y1, SIZE - 1)
        poly = rectangle_polygon(x0, y0, x1, y1)
        mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, SIZE, SIZE))).astype(bool)
        labels[mask] = int(cat)
        anns.append({"category_id": int(cat), "segmentation": poly, "iscrowd": 0})
    for cat in STUFF:
        mask = labels == cat
        if mask.any():
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            anns.append({"category_id": cat, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                         "iscrowd": 0})
    for k, ann in enumerate(anns):
        segm = ann["segmentation"]
        rle = segm if isinstance(segm, dict) else mask_utils.merge(mask_utils.frPyObjects(segm, SIZE, SIZE))
        rle = {"size": rle["size"], "counts": rle["counts"].encode() if isinstance(rle["counts"], str)
               else rle["counts"]}
        ann.update(id=first_id + k, image_id=image_id, area=float(mask_utils.area(rle)),
                   bbox=[float(v) for v in mask_utils.toBbox(rle)])
    palette = {c["id"]: np.array(c["color"], np.float32) for c in categories()}
    picture = np.stack([palette[int(v)] for v in labels.ravel()]).reshape(SIZE, SIZE, 3)
    picture += rng.normal(0, 12, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8), anns


def write_detection_dataset(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    """detr's layout: ROOT/{train,val}2017/*.jpg and ROOT/annotations/instances_{train,val}2017.json (categories
    with ids and names only, as detection files have them)."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    detection_categories = [{"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]}
                            for c in categories()]
    image_id, ann_id = 100, 1
    for split, count in counts.items():
        (root / f"{split}2017").mkdir()
        images, annotations = [], []
        for _ in range(count):
            image_id += 7  # ids need not be dense either
            picture, anns = image_annotations(rng, image_id, ann_id)
            name = f"{image_id:012d}.jpg"
            Image.fromarray(picture).save(root / f"{split}2017" / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": SIZE, "width": SIZE})
            annotations += anns
            ann_id += len(anns)
        data = {"info": {"description": "own COCO"}, "images": images, "annotations": annotations,
                "categories": detection_categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


def save_release_like_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A tiny detection DETR in detr's release layout ({'model', 'args': Namespace}), with COCO's 91 classes."""
    flags = build_parser().parse_args(TINY_TRAIN_FLAGS)
    torch.manual_seed(11)
    model = build_model(DETRConfig.from_args(flags, num_classes=PRETRAINED_CLASSES, masks=False))
    weights = model.state_dict()
    torch.save({"model": weights, "args": argparse.Namespace(num_classes=PRETRAINED_CLASSES, backbone="resnet18")},
               path)
    return weights


# ------------------------------------------------------------------------------------------------ the test


@pytest.mark.slow
def test_readme_workflow_on_own_coco_detection_data(tmp_path, monkeypatch, capsys):
    started = time.perf_counter()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    write_detection_dataset(Path("data/mycoco"), {"train": 6, "val": 2})
    pretrained = tmp_path / "detr-r18-tiny.pth"
    released = save_release_like_checkpoint(pretrained)
    lines = README_COMMANDS.strip().splitlines()
    ours = {c["id"]: (c["name"], bool(c["isthing"])) for c in categories()}

    for line in lines[:5]:  # categories with isthing, convert both splits, validate both
        assert run_command(line, pretrained) == 0, line
    panoptic = json.loads(Path("data/mycoco/annotations/panoptic_val2017.json").read_text())
    assert {c["id"]: (c["name"], bool(c["isthing"])) for c in panoptic["categories"]} == ours

    # Stage 1 starts from the release: the class head fresh (92 -> 201 logits), every other tensor loaded.
    stage1 = shlex.split(lines[5].replace(RELEASE_URL, str(pretrained)))
    argv = [*stage1, *command_extras(stage1)][3:]
    start = build_training(build_parser().parse_args(argv)).model_without_ddp.state_dict()
    assert start["class_embed.weight"].shape[0] == max(ours) + 2
    assert set(start) == set(released)
    for name, value in released.items():
        if name.startswith("class_embed."):
            assert value.shape != start[name].shape, name
        else:
            assert torch.equal(start[name], value), name
    capsys.readouterr()
    assert run_command(lines[5], pretrained) == 0
    summary = capsys.readouterr().out.splitlines()[0]
    assert summary.startswith(f"--pretrained {pretrained}: loaded {len(released) - 2} tensors, re-initialized 2 "
                              "(class_embed.weight [92, 128]->[201, 128], class_embed.bias [92]->[201])")
    ckpt1 = load_checkpoint("runs/mycoco_stage1/checkpoint.pth")
    assert torch.equal(ckpt1["model"]["backbone.0.body.conv1.weight"], released["backbone.0.body.conv1.weight"])
    assert ckpt1["categories"] == panoptic["categories"]

    # Stage 2 (mask head on the frozen detector) computes PQ on val.
    assert run_command(lines[6], pretrained) == 0
    log = [json.loads(line) for line in Path("runs/mycoco_stage2/log.jsonl").read_text().splitlines()]
    assert all(0 <= log[-1][k] <= 100 for k in ("pq", "pq_th", "pq_st"))

    # Export, infer, eval: the deployed model speaks in the dataset's ids and names.
    for line in lines[7:]:
        assert run_command(line, pretrained) == 0, line
    with OnnxRuntimeBackend(Path("runs/mycoco.onnx"), intra_op_threads=1, optimized_cache=False) as backend:
        info = parse_model_info(backend.metadata(), "runs/mycoco.onnx")
    assert {i: (c.name, c.isthing) for i, c in info.categories.items()} == ours
    assert info.num_classes == max(ours) + 1
    predictions = json.loads(Path("runs/mycoco_val/predictions.json").read_text())
    assert {c["id"]: (c["name"], bool(c["isthing"])) for c in predictions["categories"]} == ours
    assert sorted(a["image_id"] for a in predictions["annotations"]) == [i["id"] for i in panoptic["images"]]
    used = {s["category_id"] for a in predictions["annotations"] for s in a["segments_info"]}
    assert used and used <= set(ours)
    assert len(list(Path("runs/mycoco_val/overlay").glob("*.jpg"))) == 2
    table = capsys.readouterr().out
    for cat_id, (name, _) in ours.items():
        assert f"{cat_id:>5}  {name}" in table
    assert [p.name for p in Path("runs/mycoco_sheets").iterdir()] == ["sheet_001.png"]  # 2 images, 4 rows a page
    print(f"tiny own-COCO workflow: {time.perf_counter() - started:.0f} s")

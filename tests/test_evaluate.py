"""Training's PQ is the deployed PQ: train.evaluate reports exactly the PQ of the runtime's post-processing of the
same model outputs, written by the runtime's output writer and scored by panopticapi itself (not runtime.pq), and
the files it scores hold the very same segments, pixel for pixel."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import separable
from panopticapi.evaluation import pq_compute as panopticapi_pq_compute
from torch.utils.data import DataLoader

from runtime.categories import categories_from_json
from runtime.outputs import ImageJob, OutputDir, PredictionsFile
from runtime.panoptic_format import read_panoptic_png
from runtime.postprocess import postprocess_panoptic
from train import evaluate as evaluate_module
from train.datasets import build_dataset, collate_fn, scaled_transform_options
from train.evaluate import evaluate
from train.models import DETRConfig, build_model
from train.models.criterion import build_criterion
from train.prepare.synthetic import generate_dataset

TINY = DETRConfig(backbone="resnet18", hidden_dim=128, nheads=8, enc_layers=1, dec_layers=2, dim_feedforward=256,
                  num_queries=10, num_classes=12, dropout=0.0)
SIZE = 64
THRESHOLD = 0.85
NMS_IOU = 0.05  # the random tiny model's duplicates overlap little


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    generate_dataset(root, train=2, val=6, size=SIZE, seed=3)
    return root


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(3)  # a seed whose random model matches a few GT segments (as in test_infer), so PQ is not 0
    return separable(build_model(TINY)).eval()


@pytest.fixture(scope="module")
def loader(dataset) -> DataLoader:
    val_set = build_dataset("val", "coco_panoptic", dataset, dataset, masks=True, **scaled_transform_options(SIZE))
    return DataLoader(val_set, batch_size=1, collate_fn=collate_fn)


def deployed_pq(model, loader, dataset: Path, out: Path, nms_iou: float | None) -> tuple[dict, int]:
    """PQ of the runtime's post-processing written like ``panseg-rt infer`` writes it, scored by panopticapi;
    also the number of segments predicted."""
    gt_json = dataset / "annotations" / "panoptic_val2017.json"
    gt = json.loads(gt_json.read_text())
    categories = categories_from_json(gt["categories"])
    is_thing = {c.id: c.isthing for c in categories.values()}
    file_names = {ann["image_id"]: ann["file_name"] for ann in gt["annotations"]}
    writer = OutputDir(out, categories, {"threshold": THRESHOLD, "nms_iou": nms_iou})
    predictions = PredictionsFile(writer.predictions_path, categories, [Path(f).stem for f in file_names.values()])
    segments = 0
    with torch.no_grad():
        for images, mask, targets in loader:
            outputs = {k: v.numpy() for k, v in model(images, mask).items() if k.startswith("pred_")}
            results = postprocess_panoptic(outputs["pred_logits"], outputs["pred_masks"],
                                           [tuple(t["size"].tolist()) for t in targets],
                                           [tuple(t["orig_size"].tolist()) for t in targets], is_thing, THRESHOLD,
                                           pred_boxes=outputs["pred_boxes"], nms_iou=nms_iou)
            for target, result in zip(targets, results, strict=True):
                image_id = int(target["image_id"])
                job = ImageJob(Path(file_names[image_id]), image_id, file_names[image_id])
                writer.write_png(job, result)
                predictions.add(job.stem, writer.write_record(job, result))
                segments += len(result.segments_info)
    predictions.flush()
    with contextlib.redirect_stdout(io.StringIO()):  # panopticapi prints progress
        pq = panopticapi_pq_compute(str(gt_json), str(writer.predictions_path),
                                    str(dataset / "panoptic_val2017"), str(out / "panoptic"))
    return pq, segments


def watch_evaluate_files(monkeypatch) -> tuple[dict[str, np.ndarray], list[dict]]:
    """What train.evaluate writes for the scorer (id maps by file name, the predictions JSON), recorded on the way
    through to the real writers."""
    id_maps: dict[str, np.ndarray] = {}
    written: list[dict] = []
    real_png, real_json = evaluate_module.write_panoptic_png, evaluate_module.atomic_write_json

    def png(path, id_map, *rest, **options):
        id_maps[Path(path).name] = np.array(id_map)
        return real_png(path, id_map, *rest, **options)

    def predictions_json(path, data, *rest, **options):
        written.append(json.loads(json.dumps(data)))
        return real_json(path, data, *rest, **options)

    monkeypatch.setattr(evaluate_module, "write_panoptic_png", png)
    monkeypatch.setattr(evaluate_module, "atomic_write_json", predictions_json)
    return id_maps, written


@pytest.mark.parametrize("nms_iou", [None, NMS_IOU])
def test_training_pq_equals_the_deployed_pq(model, loader, dataset, tmp_path, monkeypatch, nms_iou):
    criterion, _ = build_criterion(TINY.num_classes, masks=True, aux_loss=True, dec_layers=TINY.dec_layers)
    args = argparse.Namespace(masks=True, dataset_file="coco_panoptic", coco_panoptic_path=str(dataset),
                              threshold=THRESHOLD, nms_iou=nms_iou)
    id_maps, written = watch_evaluate_files(monkeypatch)
    stats = evaluate(model, criterion, loader, "cpu", args, None)
    out = tmp_path / "deployed"
    reference, segments = deployed_pq(model, loader, dataset, out, nms_iou)
    assert reference["All"]["pq"] > 0  # real matches, not 0 == 0
    for key, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for metric in ("pq", "sq", "rq"):
            assert stats[f"{metric}{key}"] == round(100 * reference[group][metric], 3), (group, metric)

    deployed = json.loads((out / "predictions.json").read_text())["annotations"]
    assert len(written) == 1 and len(written[0]["annotations"]) == len(deployed) == len(id_maps) == 6
    by_name = {a["file_name"]: a for a in written[0]["annotations"]}
    for ann in deployed:
        assert by_name[ann["file_name"]]["segments_info"] == ann["segments_info"], ann["file_name"]
        assert np.array_equal(id_maps[ann["file_name"]], read_panoptic_png(out / "panoptic" / ann["file_name"]))
    if nms_iou is not None:  # the option reached the post-processing: NMS dropped segments on these images
        _, plain_segments = deployed_pq(model, loader, dataset, tmp_path / "plain", None)
        assert segments < plain_segments

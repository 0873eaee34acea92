"""The dataset's own categories: any ids (7, 42, 1000), names and isthing from the annotation files through training,
the checkpoint and the exported model to panseg-rt's outputs; clear errors when train and val disagree or an
annotation uses an unlisted id."""

import json
import shutil

import pytest
from conftest import run_train

from export.onnx.__main__ import main as export_main
from runtime.cli import main as runtime_main
from runtime.errors import PansegError
from train.args import build_parser
from train.datasets.categories import check_same_categories, num_classes_for, read_categories
from train.main import build_training
from train.main import main as train_main

NEW_IDS = {1: 1000, 2: 42}  # with the synthetic table's others (things 3..6, stuff 7..11): 3..11, 42, 1000


def remap(path, ids: dict[int, int], rename: dict[int, str] | None = None) -> None:
    data = json.loads(path.read_text())
    for cat in data["categories"]:
        cat["name"] = (rename or {}).get(cat["id"], cat["name"])
        cat["id"] = ids.get(cat["id"], cat["id"])
    for ann in data["annotations"]:
        for seg in ann["segments_info"]:
            seg["category_id"] = ids.get(seg["category_id"], seg["category_id"])
    path.write_text(json.dumps(data))


@pytest.fixture
def sparse_dataset(tiny_dataset, tmp_path):
    root = tmp_path / "sparse"
    shutil.copytree(tiny_dataset, root)
    for split in ("train", "val"):
        remap(root / "annotations" / f"panoptic_{split}2017.json", NEW_IDS, {1: "gear wheel"})
    return root


def categories_of(path) -> dict[int, tuple[str, bool]]:
    return {c["id"]: (c["name"], bool(c["isthing"])) for c in json.loads(path.read_text())["categories"]}


@pytest.mark.slow
def test_ids_up_to_1000_flow_from_the_dataset_to_panseg_rt(sparse_dataset, tmp_path, capsys):
    want = categories_of(sparse_dataset / "annotations" / "panoptic_val2017.json")
    assert want[1000] == ("gear wheel", True) and want[7][1] is False and 42 in want
    ckpt = run_train(sparse_dataset, tmp_path / "run", "--masks", "--epochs", "1", "--max_iters", "3",
                     "--eval_every", "1")
    assert ckpt["model"]["detr.class_embed.bias"].shape[0] == 1002  # detr's rule: max id + 1 classes, + no-object
    assert {c["id"]: (c["name"], bool(c["isthing"])) for c in ckpt["categories"]} == want
    onnx = tmp_path / "sparse.onnx"
    assert export_main([str(tmp_path / "run" / "checkpoint.pth"), "-o", str(onnx), "--no-verify", "--quiet",
                        "--no-simplify"]) == 0
    out = tmp_path / "infer"
    assert runtime_main(["infer", "--engine", str(onnx), "--input", str(sparse_dataset / "val2017"), "--output",
                         str(out), "--threshold", "0", "--no-progress", "--coco-json",
                         str(sparse_dataset / "annotations" / "panoptic_val2017.json")]) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    assert {c["id"]: (c["name"], bool(c["isthing"])) for c in predictions["categories"]} == want
    used = {s["category_id"] for a in predictions["annotations"] for s in a["segments_info"]}
    assert used and used <= set(want)
    capsys.readouterr()
    assert runtime_main(["eval", "--gt-json", str(sparse_dataset / "annotations" / "panoptic_val2017.json"),
                         "--gt-folder", str(sparse_dataset / "panoptic_val2017"), "--pred-json",
                         str(out / "predictions.json"), "--pred-folder", str(out / "panoptic"), "--workers", "1",
                         "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert " 1000  gear wheel" in table and "   42  " in table


def test_train_and_val_must_list_the_same_categories(sparse_dataset, capsys):
    train = sparse_dataset / "annotations" / "panoptic_train2017.json"
    data = json.loads(train.read_text())
    data["categories"].append({"id": 500, "name": "unused", "isthing": 1})
    train.write_text(json.dumps(data))
    val = sparse_dataset / "annotations" / "panoptic_val2017.json"
    data = json.loads(val.read_text())
    data["categories"][0]["isthing"] = 0
    val.write_text(json.dumps(data))
    code = train_main(["--coco_path", str(sparse_dataset), "--device", "cpu", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "the categories disagree: only in train: 500 'unused' isthing=1; " in err
    assert "differ (train vs val): 1000 'gear wheel' isthing=1 vs 1000 'gear wheel' isthing=0" in err


def test_an_annotation_with_an_unlisted_id_is_an_error(sparse_dataset):
    train = sparse_dataset / "annotations" / "panoptic_train2017.json"
    data = json.loads(train.read_text())
    data["categories"] = [c for c in data["categories"] if c["id"] != 1000]
    train.write_text(json.dumps(data))
    with pytest.raises(PansegError, match=r"panoptic_train2017.json: annotations use category ids \[1000\] that its "
                                          r"'categories' list lacks"):
        read_categories(train, "coco_panoptic")


def test_detection_annotations_are_checked_too(tmp_path):
    path = tmp_path / "instances_train2017.json"
    path.write_text(json.dumps({"images": [], "categories": [{"id": 3, "name": "car"}],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(PansegError, match=r"category ids \[5\]"):
        read_categories(path, "coco")


def test_num_classes_is_max_id_plus_one_and_never_too_small(tmp_path):
    cats = [{"id": 7, "name": "a"}, {"id": 1000, "name": "b"}]
    assert num_classes_for(cats, None, tmp_path) == 1001
    assert num_classes_for(cats, 1200, tmp_path) == 1200
    with pytest.raises(PansegError, match="--num_classes 1000 is too small .* largest category id is 1000"):
        num_classes_for(cats, 1000, tmp_path)


def test_same_categories_in_another_order_agree(tmp_path):
    a = [{"id": 1, "name": "x", "isthing": 1}, {"id": 2, "name": "y", "isthing": 0}]
    check_same_categories(a, a[::-1], tmp_path / "t", tmp_path / "v")
    with pytest.raises(PansegError, match="only in val: 3 'z'"):
        check_same_categories(a, [*a, {"id": 3, "name": "z"}], tmp_path / "t", tmp_path / "v")


def test_build_training_sizes_the_class_head_from_sparse_ids(sparse_dataset):
    from conftest import TINY_TRAIN_FLAGS

    args = build_parser().parse_args(["--coco_path", str(sparse_dataset), *TINY_TRAIN_FLAGS])
    training = build_training(args)
    assert training.config.num_classes == 1001 and training.model.class_embed.out_features == 1002


def test_categories_without_colours_get_distinct_stable_ones():
    from runtime.categories import categories_from_json

    entries = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3, 7, 42, 1000)]
    table = categories_from_json(entries)
    colors = [c.color for c in table.values()]
    assert len(set(colors)) == len(colors) and (0, 0, 0) not in colors
    assert all(max(c) - min(c) > 60 for c in colors)  # saturated, so overlays and legends tell them apart
    assert categories_from_json(entries[::-1]) == table  # a function of the id alone
    assert categories_from_json([{"id": 5, "name": "black", "color": [0, 0, 0]}])[5].color == (0, 0, 0)

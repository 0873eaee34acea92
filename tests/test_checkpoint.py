"""Checkpoints: detr's original layout loads strictly and safely; bad or malicious files give one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from PIL import Image

from runtime.errors import PansegError
from train.checkpoint import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from train.models import DETRConfig, build_model

SHARED_STATE_DICT = Path(__file__).parent / "fixtures" / "detr_r50_panoptic_state_dict.json"

# Smaller than the shared tiny model, and with 3 queries / 5 classes so a config mix-up cannot go unnoticed.
TINY_PAN = TINY_CONFIG.replace(dec_layers=1, dim_feedforward=64, num_queries=3, num_classes=5)
TINY_DET = TINY_CONFIG.replace(hidden_dim=32, nheads=4, dec_layers=1, dim_feedforward=48, num_queries=3, num_classes=5,
                               masks=False)


def _one_line_error(excinfo, path: Path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.fixture(scope="module")
def original_state_dict() -> dict[str, torch.Tensor]:
    """Random weights with exactly the names, shapes and dtypes of detr's released R50 panoptic checkpoint."""
    gen = torch.Generator().manual_seed(0)
    entries = json.loads(SHARED_STATE_DICT.read_text())["tensors"]
    return {t["name"]: torch.randn(t["shape"], generator=gen, dtype=getattr(torch, t["dtype"])) for t in entries}


def _detr_args(**changes) -> argparse.Namespace:
    """The kind of namespace detr's main.py pickles into its checkpoints."""
    args = dict(lr=1e-4, lr_backbone=1e-5, batch_size=2, weight_decay=1e-4, epochs=25, lr_drop=200,
                clip_max_norm=0.1, frozen_weights=None, backbone="resnet50", dilation=False,
                position_embedding="sine", enc_layers=6, dec_layers=6, dim_feedforward=2048, hidden_dim=256,
                dropout=0.1, nheads=8, num_queries=100, pre_norm=False, masks=True, aux_loss=True,
                dataset_file="coco_panoptic", output_dir="/checkpoint/detr", device="cuda", seed=42)
    args.update(changes)
    return argparse.Namespace(**args)


# ---------------------------------------------------------------- detr's original layout


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_original_checkpoint_with_namespace_args_loads_strictly(tmp_path, original_state_dict, zip_format):
    path = tmp_path / "detr-r50-panoptic.pth"
    optimizer_state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                       "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0], "foreach": None}]}
    torch.save({"model": original_state_dict, "optimizer": optimizer_state, "lr_scheduler": {"last_epoch": 24},
                "epoch": 24, "args": _detr_args(dropout=0.0, lr_backbone=0.0)},
               path, _use_new_zipfile_serialization=zip_format)

    model, config, ckpt = load_model_from_checkpoint(path)

    assert config == DETRConfig(backbone="resnet50", num_classes=250, num_queries=100, masks=True, dropout=0.0,
                                train_backbone=False)
    assert isinstance(ckpt["args"], dict) and ckpt["args"]["output_dir"] == "/checkpoint/detr"
    assert ckpt["epoch"] == 24 and ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(original_state_dict)
    assert all(torch.equal(loaded[k], v) for k, v in original_state_dict.items())


def test_model_only_checkpoint_and_bare_state_dict_load(tmp_path, original_state_dict):
    model_only = tmp_path / "model_only.pth"
    torch.save({"model": original_state_dict}, model_only)
    model, config, ckpt = load_model_from_checkpoint(model_only, overrides={"dilation": False})
    assert (config.backbone, config.nheads, config.num_classes, config.masks) == ("resnet50", 8, 250, True)
    assert set(ckpt) == {"model"}
    name = "detr.transformer.decoder.layers.5.norm3.weight"
    assert torch.equal(model.state_dict()[name], original_state_dict[name])

    bare = tmp_path / "bare.pth"
    tiny = build_model(TINY_DET).state_dict()
    # Weights whose backbone was a regular BatchNorm carry counters that the frozen one drops on load.
    torch.save({**tiny, "backbone.0.body.bn1.num_batches_tracked": torch.tensor(7)}, bare)
    ckpt = load_checkpoint(bare)
    assert set(ckpt) == {"model"} and set(ckpt["model"]) == set(tiny) | {"backbone.0.body.bn1.num_batches_tracked"}
    model, config, _ = load_model_from_checkpoint(bare, overrides={"nheads": 4})
    assert config.nheads == 4 and torch.equal(model.state_dict()["class_embed.bias"], tiny["class_embed.bias"])


def test_detection_args_supply_what_the_weights_cannot(tmp_path):
    # nheads cannot be read from a detection model's weights: detr's args (or our 'config') must provide it.
    weights = build_model(TINY_DET.replace(nheads=2)).state_dict()
    with_args = tmp_path / "with_args.pth"
    torch.save({"model": weights, "args": _detr_args(nheads=2, dilation=False, masks=False, hidden_dim=32)}, with_args)
    assert load_model_from_checkpoint(with_args)[1].nheads == 2
    ddp = tmp_path / "ddp.pth"  # saved from a DistributedDataParallel wrapper
    torch.save({"model": {f"module.{k}": v for k, v in weights.items()}}, ddp)
    _, config, _ = load_model_from_checkpoint(ddp, overrides={"nheads": 2})
    assert config == TINY_DET.replace(nheads=2, dropout=DETRConfig.dropout)


# ---------------------------------------------------------------- refused files


class _RunsShellOnLoad:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_without_running(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _RunsShellOnLoad(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(PansegError) as excinfo:
        load_checkpoint(path)
    message = _one_line_error(excinfo, path)
    assert "refused" in message and "system" in message
    with pytest.raises(PansegError):
        load_model_from_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_checkpoint_is_a_one_line_error(tmp_path, zip_format):
    full = tmp_path / "full.pth"
    torch.save({"model": build_model(TINY_DET).state_dict(), "epoch": 1}, full,
               _use_new_zipfile_serialization=zip_format)
    data = full.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PansegError) as excinfo:
        load_checkpoint(path)
    message = _one_line_error(excinfo, path)
    assert message == f"{path}: not a readable PyTorch checkpoint (truncated or corrupt)"  # no internal detail


def test_a_checkpoint_with_a_damaged_record_is_truncated_or_corrupt(tmp_path):
    # The zip directory is intact (so the file is recognised) but a tensor record's bytes are cut out.
    path = tmp_path / "damaged.pth"
    torch.save({"model": build_model(TINY_DET).state_dict()}, path)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    tensor_record = next(name for name in members if "/data/" in name)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data[: len(data) // 3] if name == tensor_record else data)
    with pytest.raises(PansegError) as excinfo:
        load_checkpoint(path)
    assert _one_line_error(excinfo, path).endswith("not a readable PyTorch checkpoint (truncated or corrupt)")


def _photo(path: Path, size: tuple[int, int] = (48, 64)) -> Path:
    noise = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    return path


def _never_load(*args, **kwargs):
    raise AssertionError("torch.load was reached")


@pytest.mark.parametrize("name, content, expected", [
    ("empty.pth", b"", "an empty file, not a PyTorch checkpoint"),
    ("notes.pth", b"not a checkpoint at all\n" * 20, "a text file, not a PyTorch checkpoint"),
    ("config.json", b'{"lr": 0.0001, "epochs": 25}\n', "a JSON file, not a PyTorch checkpoint"),
    ("weights.pth", bytes(range(256)) * 8, "unrecognised binary data (neither a zip archive nor a pickle), not a"),
    ("model.plan", b"ftrt" + bytes(64), "a TensorRT plan, not a PyTorch checkpoint (already built: run it with"),
], ids=["empty", "text", "json", "binary", "tensorrt"])
def test_files_that_are_not_checkpoints_are_named_without_loading(tmp_path, monkeypatch, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    monkeypatch.setattr(torch, "load", _never_load)
    with pytest.raises(PansegError) as excinfo:
        load_checkpoint(path)
    message = _one_line_error(excinfo, path)
    assert expected in message and "truncated" not in message


def test_an_image_or_an_onnx_model_is_named_with_what_to_do_instead(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    model = tmp_path / "model.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), model)
    photo = _photo(tmp_path / "chelsea.jpg")
    zipped = tmp_path / "arrays.npz"
    np.savez(zipped, w=np.zeros(2))
    monkeypatch.setattr(torch, "load", _never_load)
    for path, expected in [
        (model, "an ONNX model, not a PyTorch checkpoint (already exported: run it with panseg-rt)"),
        (photo, "a JPEG image, not a PyTorch checkpoint (to segment images: panseg-rt infer"),
        (zipped, "a NumPy .npz archive, not a PyTorch checkpoint"),
    ]:
        with pytest.raises(PansegError) as excinfo:
            load_model_from_checkpoint(path)
        assert expected in _one_line_error(excinfo, path)


@pytest.mark.parametrize("kind", ["jpeg", "random"])
def test_big_non_checkpoints_are_refused_fast(tmp_path, monkeypatch, kind):
    if kind == "jpeg":
        path = _photo(tmp_path / "big.jpg", (1500, 2000))
    else:
        path = tmp_path / "big.bin"
        path.write_bytes(b"\x01" + np.random.default_rng(2).bytes(8 << 20))
    assert path.stat().st_size > 3 << 20
    monkeypatch.setattr(torch, "load", _never_load)
    start = time.perf_counter()
    with pytest.raises(PansegError) as excinfo:
        load_checkpoint(path)
    assert time.perf_counter() - start < 0.5  # sniffing reads a few KB; torch.load took seconds to fail
    assert "not a PyTorch checkpoint" in _one_line_error(excinfo, path)


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(PansegError) as excinfo:
        load_model_from_checkpoint(missing)
    assert "no such checkpoint file" in _one_line_error(excinfo, missing)
    with pytest.raises(PansegError) as excinfo:
        load_checkpoint(tmp_path)
    assert "not a file" in _one_line_error(excinfo, tmp_path)


@pytest.mark.parametrize("obj, expected", [
    ([1, 2, 3], "found a list"),
    ({"epoch": 3, "lr": 0.1}, "found a dict with keys ['epoch', 'lr']"),
    ({"model": {"w": 1}}, "'model' entry is not a state dict"),
])
def test_not_a_checkpoint(tmp_path, obj, expected):
    path = tmp_path / "thing.pth"
    torch.save(obj, path)
    with pytest.raises(PansegError) as excinfo:
        load_checkpoint(path)
    assert expected in _one_line_error(excinfo, path)


def test_weights_that_do_not_fit_list_a_few_keys(tmp_path):
    weights = build_model(TINY_PAN).state_dict()
    weights["detr.extra.weight"] = torch.zeros(2)
    del weights["mask_head.adapter2.bias"]
    path = tmp_path / "mismatch.pth"
    torch.save({"model": weights}, path)
    with pytest.raises(PansegError) as excinfo:
        load_model_from_checkpoint(path)
    message = _one_line_error(excinfo, path)
    assert "missing: mask_head.adapter2.bias" in message and "unexpected: detr.extra.weight" in message

    with pytest.raises(PansegError) as excinfo:
        load_model_from_checkpoint(path, overrides={"num_queries": 7})
    assert "num_queries=7 (weights say 3)" in _one_line_error(excinfo, path)


# ---------------------------------------------------------------- saving


def test_saved_checkpoint_holds_only_plain_types_and_rebuilds_the_model(tmp_path):
    model = build_model(TINY_PAN.replace(nheads=8, dropout=0.0)).eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    path = tmp_path / "run" / "checkpoint.pth"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 2,
                           "config": TINY_PAN, "args": argparse.Namespace(lr=1e-4, device="cpu")})

    raw = torch.load(path, weights_only=True)  # no allow-list needed: nothing but tensors and plain values
    assert raw["config"] == TINY_PAN.to_dict() and raw["args"] == {"lr": 1e-4, "device": "cpu"}
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pth"]  # no temporary file left behind

    loaded, config, _ = load_model_from_checkpoint(path)
    assert config == TINY_PAN
    images = torch.randn(1, 3, 64, 64)
    padding = torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        expected, got = model(images, padding), loaded(images, padding)
    assert all(torch.equal(expected[k], got[k]) for k in ("pred_logits", "pred_boxes", "pred_masks"))


def test_save_refuses_objects_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"model": {"w": torch.ones(1)}, "epoch": 1})
    before = path.read_bytes()

    with pytest.raises(PansegError) as excinfo:
        save_checkpoint(path, {"model": {"w": torch.ones(1)}, "extra": {"where": Path("/tmp")}})
    message = _one_line_error(excinfo, path)
    assert "checkpoint['extra']['where']" in message and "PosixPath" in message

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {"w": torch.zeros(1)}, "epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]
    assert load_checkpoint(path)["epoch"] == 1


def test_refused_pickle_error_type_is_not_a_plain_unpickling_error(tmp_path):
    # Callers (CLI) catch PansegError only; a raw pickle error would escape as a traceback.
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _RunsShellOnLoad(tmp_path / "x")}, path)
    with pytest.raises(PansegError) as excinfo:
        load_checkpoint(path)
    assert not isinstance(excinfo.value, pickle.UnpicklingError)
    assert excinfo.value.__suppress_context__

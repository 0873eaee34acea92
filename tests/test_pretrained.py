"""--pretrained and --backbone_weights: released DETR checkpoints (detr's layout, bare state dicts, URLs) and
torchvision ResNet weights into a model with other classes; files that are no such thing give one clear line."""

import argparse

import pytest
import torch
import torchvision
from conftest import TINY_CONFIG, TINY_TRAIN_FLAGS

from runtime.errors import PansegError
from train.main import build_training
from train.main import main as train_main
from train.models import build_model
from train.pretrained import load_backbone_weights, load_matching, load_pretrained, to_model_names

DETECTOR = TINY_CONFIG.replace(masks=False, num_queries=8)


def detection_weights(num_classes: int = 91, num_queries: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return build_model(DETECTOR.replace(num_classes=num_classes, num_queries=num_queries)).state_dict()


def fresh(config, seed: int = 2):
    torch.manual_seed(seed)
    return build_model(config)


def assert_loaded_except(model, weights, prefix: str, fresh_names: set[str], initial: dict[str, torch.Tensor]):
    """Every tensor of ``weights`` is in ``model`` (under ``prefix``) unchanged, except ``fresh_names``, which keep
    the model's own initialization."""
    state = model.state_dict()
    for name, value in weights.items():
        if name in fresh_names:
            assert torch.equal(state[prefix + name], initial[prefix + name]), name
        else:
            assert torch.equal(state[prefix + name], value), name


def test_detr_layout_checkpoint_reinitializes_only_the_class_head(tmp_path, capsys):
    weights = detection_weights(num_classes=91)
    path = tmp_path / "detr-r18.pth"
    torch.save({"model": weights, "args": argparse.Namespace(num_classes=91, lr=1e-4)}, path)
    model = fresh(DETECTOR.replace(num_classes=6))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    summary = load_pretrained(model, path)
    head = {"class_embed.weight", "class_embed.bias"}
    assert_loaded_except(model, weights, "", head, initial)
    assert {n for n, _, _ in summary.reinitialized} == head
    assert len(summary.loaded) == len(weights) - 2 and not summary.ignored and not summary.not_in_file
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"--pretrained {path}: loaded {len(weights) - 2} tensors" in out
    assert "re-initialized 2 (class_embed.weight [92, 128]->[7, 128], class_embed.bias [92]->[7])" in out


def test_bare_state_dict_into_a_panoptic_model_with_other_queries(tmp_path):
    weights = detection_weights(num_classes=12, num_queries=20)
    path = tmp_path / "bare.pth"
    torch.save(weights, path)
    model = fresh(TINY_CONFIG.replace(num_queries=8))  # panoptic: 'detr.' names, and a mask head the file lacks
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    summary = load_pretrained(model, path, report=False)
    assert_loaded_except(model, weights, "detr.", {"query_embed.weight"}, initial)
    assert [n for n, _, _ in summary.reinitialized] == ["detr.query_embed.weight"]
    assert summary.not_in_file and all(n.startswith(("mask_head.", "bbox_attention.")) for n in summary.not_in_file)


def test_panoptic_checkpoint_into_a_detector_through_a_file_url(tmp_path, monkeypatch):
    torch.manual_seed(3)
    panoptic = build_model(TINY_CONFIG.replace(num_queries=8)).state_dict()
    source = tmp_path / "src" / "detr-panoptic-00ce5173.pth"  # no such hash: the name must not be hash-checked...
    source.parent.mkdir()
    torch.save({"model": panoptic}, source)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = fresh(DETECTOR.replace(num_classes=12))
    with pytest.raises(PansegError, match="download is corrupt"):  # ...so this one is refused
        load_pretrained(model, source.as_uri())
    plain = source.with_name("detr-panoptic.pth")
    source.rename(plain)
    summary = load_pretrained(model, plain.as_uri(), report=False)
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "detr-panoptic.pth").is_file()
    detector = {k[5:]: v for k, v in panoptic.items() if k.startswith("detr.")}
    assert_loaded_except(model, detector, "", set(), {})
    assert summary.ignored and all(n.startswith(("mask_head.", "bbox_attention.")) for n in summary.ignored)


def test_another_architecture_is_refused_not_half_loaded(tmp_path):
    path = tmp_path / "big.pth"
    torch.save(build_model(DETECTOR.replace(dim_feedforward=512)).state_dict(), path)
    with pytest.raises(PansegError, match=r"big.pth: weights do not fit this model .*linear1.weight \[512, 128\]"):
        load_pretrained(fresh(DETECTOR), path)
    torch.save(build_model(DETECTOR.replace(backbone="resnet34")).state_dict(), path)
    with pytest.raises(PansegError, match=r"tensors have no place in it \(backbone.0.body.layer1.2"):
        load_pretrained(fresh(DETECTOR), path)


def resnet18_weights() -> dict[str, torch.Tensor]:
    """torchvision's ResNet-18 layout with non-trivial BatchNorm statistics, as ImageNet weights have."""
    torch.manual_seed(4)
    resnet = torchvision.models.resnet18(weights=None)
    for m in resnet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return resnet.state_dict()


def test_torchvision_weights_fill_the_backbone_and_its_frozen_batchnorm(tmp_path, capsys):
    weights = resnet18_weights()
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    model = fresh(TINY_CONFIG)
    summary = load_backbone_weights(model, path)
    state = model.state_dict()
    for name, value in weights.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            assert f"detr.backbone.0.body.{name}" not in state
        else:
            assert torch.equal(state[f"detr.backbone.0.body.{name}"], value), name
    assert summary.ignored == ["fc.weight", "fc.bias"]
    assert "ignored 2 not in the model (fc.weight, fc.bias)" in capsys.readouterr().out


def test_scratch_backbone_trains_from_the_loaded_statistics(tiny_dataset, tmp_path):
    weights = resnet18_weights()
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    from train.args import build_parser

    args = build_parser().parse_args(["--coco_path", str(tiny_dataset), *TINY_TRAIN_FLAGS, "--backbone_weights",
                                      str(path), "--scratch_backbone"])
    body = build_training(args).model_without_ddp.backbone[0].body
    assert isinstance(body.bn1, torch.nn.BatchNorm2d)  # the real BatchNorm of --scratch_backbone...
    for key in ("running_mean", "running_var", "weight", "bias"):  # ...starts from ImageNet's statistics
        assert torch.equal(getattr(body.layer2[0].bn1, key).detach(), weights[f"layer2.0.bn1.{key}"])


@pytest.mark.parametrize("flag", ["--pretrained", "--backbone_weights"])
@pytest.mark.parametrize("kind", ["corrupt", "wrong"])
def test_bad_files_give_one_clear_line(tiny_dataset, tmp_path, capsys, flag, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "corrupt":
        torch.save(detection_weights(), path)
        path.write_bytes(path.read_bytes()[:5000])
        want = f"{path}: not a readable PyTorch checkpoint (truncated or corrupt)"
    elif flag == "--pretrained":
        torch.save(resnet18_weights(), path)
        want = (f"{path}: not a DETR checkpoint: no class_embed.weight, query_embed.weight, input_proj.weight among "
                "its 122 tensors (e.g. conv1.weight, bn1.weight, bn1.bias) (ImageNet ResNet weights go to "
                "--backbone_weights)")
    else:
        torch.save(detection_weights(), path)
        want = f"{path}: not torchvision ResNet weights: expected conv1.weight and layer1.0.* (found e.g. "
    capsys.readouterr()
    code = train_main(["--coco_path", str(tiny_dataset), *TINY_TRAIN_FLAGS, "--epochs", "1", flag, str(path)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"python -m train: error: {want}")


def detr_release_names() -> dict[str, torch.Tensor]:
    """detr's COCO panoptic release (R50, 250 classes) as meta tensors of its real names and shapes."""
    import json
    from pathlib import Path

    listing = json.loads((Path(__file__).parent / "fixtures" / "detr_r50_panoptic_state_dict.json").read_text())
    return {t["name"]: torch.empty(t["shape"], device="meta") for t in listing["tensors"]}


@pytest.mark.parametrize("release", ["panoptic", "detection"])
def test_detr_releases_fit_an_own_data_r50_but_for_the_class_head(release):
    from train.models import DETRConfig

    weights = detr_release_names()
    if release == "detection":  # detr-r50-e632da11.pth: the same detector without 'detr.' and the mask head
        weights = {k[5:]: v for k, v in weights.items() if k.startswith("detr.")}
    with torch.device("meta"):
        model = build_model(DETRConfig(num_classes=200))  # e.g. COCO ids up to 199 (things and stuff)
    summary = load_matching(model, to_model_names(weights, True), "release")
    assert [n for n, _, _ in summary.reinitialized] == ["detr.class_embed.weight", "detr.class_embed.bias"]
    assert not summary.ignored
    assert len(summary.loaded) == len(weights) - 2
    mask_head = [n for n in summary.not_in_file if not n.startswith("detr.")]
    assert bool(mask_head) == (release == "detection") and len(summary.not_in_file) == len(mask_head)

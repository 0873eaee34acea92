"""Precise BatchNorm statistics: the plain average of per-batch statistics, checked against a hand computation."""

import torch
import torch.nn.functional as F
from torch import nn

from train.precise_bn import recompute_batchnorm_statistics


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.9), nn.Conv2d(4, 5, 1),
                          nn.BatchNorm2d(5))
    for bn in (model[1], model[5]):  # statistics far from the truth, as after grouped training
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(0.01)
    return model


def _batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, 9, 7, generator=generator) * (i + 1) + i for i, n in enumerate((2, 3, 4))]


def _batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)


def test_statistics_are_the_average_of_each_batchs_own(tmp_path):
    model = _model()
    model.train()
    batches = _batches()
    count = recompute_batchnorm_statistics(model, batches, lambda m, b: m(b))
    assert count == 3
    # By hand: each layer normalizes with its batch's statistics (dropout off), means and variances averaged.
    expected = [[], []]
    with torch.no_grad():
        for x in batches:
            h = model[0](x)
            expected[0].append(_batch_statistics(h))
            h = F.relu(F.batch_norm(h, None, None, model[1].weight, model[1].bias, training=True, eps=model[1].eps))
            expected[1].append(_batch_statistics(model[4](h)))
    for bn, stats in zip((model[1], model[5]), expected, strict=True):
        torch.testing.assert_close(bn.running_mean, torch.stack([m for m, _ in stats]).mean(0))
        torch.testing.assert_close(bn.running_var, torch.stack([v for _, v in stats]).mean(0))
        assert bn.momentum == 0.1  # restored
    assert model.training and model[3].training  # the caller's mode is back


def test_only_the_statistics_change_and_eval_mode_is_kept():
    model = _model()
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recompute_batchnorm_statistics(model, _batches(), lambda m, b: m(b))
    assert not model.training and not model[1].training
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not torch.allclose(model[1].running_mean, torch.full((4,), 7.0))


def test_no_batches_keeps_the_statistics_there_were():
    model = _model()
    assert recompute_batchnorm_statistics(model, [], lambda m, b: m(b)) == 0
    assert torch.equal(model[1].running_mean, torch.full((4,), 7.0))
    assert torch.equal(model[5].running_var, torch.full((5,), 0.01))


def test_training_with_precise_bn_saves_the_recomputed_statistics(tiny_dataset, tmp_path):
    """The checkpoint holds the statistics recomputed after the last step: redoing it on the saved weights agrees."""
    from conftest import TINY_TRAIN_FLAGS, run_train

    from train.args import build_parser
    from train.distributed import DistInfo
    from train.main import build_loaders, build_training, forward_images, statistics_batches, statistics_loader

    flags = ["--epochs", "1", "--max_iters", "2", "--scratch_backbone", "--precise_bn", "2", "--batch_size", "2"]
    saved = run_train(tiny_dataset, tmp_path / "run", *flags)
    plain = run_train(tiny_dataset, tmp_path / "plain", *flags[:-4])
    key = next(k for k in saved["model"] if k.endswith("layer1.0.bn1.running_mean"))
    assert not torch.allclose(saved["model"][key], plain["model"][key])  # same weights, other statistics

    args = build_parser().parse_args(["--coco_path", str(tiny_dataset), *TINY_TRAIN_FLAGS, *flags])
    training = build_training(args)
    training.model_without_ddp.load_state_dict(saved["model"])
    for bn in training.model_without_ddp.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.zero_()
    train_loader, _, _ = build_loaders(args, DistInfo())
    batches = statistics_batches(statistics_loader(train_loader, args), args)
    recompute_batchnorm_statistics(training.model_without_ddp, batches, lambda m, b: forward_images(m, b, "cpu", False))
    torch.testing.assert_close(training.model_without_ddp.state_dict()[key], saved["model"][key])


def test_grouped_scratch_training_without_precise_bn_says_what_to_add(tiny_dataset, tmp_path, capsys):
    from conftest import run_train

    flags = ("--epochs", "1", "--max_iters", "1", "--scratch_backbone", "--group_batches")
    run_train(tiny_dataset, tmp_path / "without", *flags)
    assert "needs --precise_bn" in capsys.readouterr().err
    run_train(tiny_dataset, tmp_path / "with", *flags, "--precise_bn", "1")
    assert "needs --precise_bn" not in capsys.readouterr().err

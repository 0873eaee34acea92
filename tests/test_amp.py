"""Mixed precision (--amp): bfloat16 autocast on a CPU with native bfloat16, float32 losses, weights that follow
the float32 run closely."""

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, log_lines, run_train

from runtime.errors import PansegError
from train import amp
from train.args import build_parser
from train.engine import train_one_epoch
from train.main import build_training

needs_bf16 = pytest.mark.skipif(not amp.cpu_supports_bfloat16(), reason="this CPU has no native bfloat16")


def test_to_float32_casts_every_floating_tensor_and_keeps_the_rest():
    nested = {"a": torch.ones(2, dtype=torch.bfloat16), "aux": [{"b": torch.ones(1, dtype=torch.float16)}],
              "labels": torch.arange(3), "n": 4}
    out = amp.to_float32(nested)
    assert out["a"].dtype == torch.float32 and out["aux"][0]["b"].dtype == torch.float32
    assert out["labels"].dtype == torch.int64 and out["n"] == 4


def test_autocast_dtype_per_device(monkeypatch):
    assert amp.autocast_dtype("cpu", False) is None
    assert amp.autocast_dtype("cuda", True) == torch.float16
    monkeypatch.setattr(amp, "cpu_supports_bfloat16", lambda: True)
    assert amp.autocast_dtype("cpu", True) == torch.bfloat16
    monkeypatch.setattr(amp, "cpu_supports_bfloat16", lambda: False)
    with pytest.raises(PansegError, match="bfloat16"):
        amp.autocast_dtype("cpu", True)


class _Recorder(torch.nn.Module):
    """A criterion that remembers the dtypes it was given."""

    weight_dict = {"loss": 1.0}

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, outputs, targets):
        self.seen.append(outputs["out"].dtype)
        return {"loss": outputs["out"].square().mean()}


@needs_bf16
def test_forward_runs_in_bfloat16_and_the_loss_in_float32():
    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)
            self.produced = []

        def forward(self, images, mask):
            out = self.fc(images)
            self.produced.append(out.dtype)
            return {"out": out}

    model, criterion = Linear(), _Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(4, 8), torch.zeros(4, dtype=torch.bool), [{}] * 4)] * 2
    train_one_epoch(model, criterion, batches, optimizer, "cpu", 0, amp_dtype=torch.bfloat16, show_progress=False)
    assert model.produced == [torch.bfloat16] * 2
    assert criterion.seen == [torch.float32] * 2
    assert model.fc.weight.dtype == torch.float32  # master weights stay float32


@needs_bf16
def test_amp_training_follows_the_float32_run(tiny_dataset, tmp_path):
    """Same data, same seed: the first iteration's loss (initial weights) agrees with float32 to bfloat16 accuracy,
    and after a few steps the weights moved in nearly the same direction."""
    first = {}
    for amp_on in (False, True):
        out = tmp_path / f"one_iteration_amp_{amp_on}"
        run_train(tiny_dataset, out, "--epochs", "1", "--max_iters", "1", *(["--amp"] if amp_on else []))
        first[amp_on] = log_lines(out)[-1]["train_loss"]
    plain, mixed = first[False], first[True]
    assert plain != mixed  # bfloat16 really ran
    assert abs(mixed - plain) < 0.005 * abs(plain)

    args = build_parser().parse_args(["--coco_path", str(tiny_dataset), *TINY_TRAIN_FLAGS])
    start = build_training(args).model_without_ddp.state_dict()  # the same seed builds the same initial weights
    fp32 = run_train(tiny_dataset, tmp_path / "fp32", "--epochs", "1", "--max_iters", "3")["model"]
    bf16 = run_train(tiny_dataset, tmp_path / "bf16", "--epochs", "1", "--max_iters", "3", "--amp")["model"]
    keys = [k for k, v in start.items() if v.is_floating_point()]
    assert all(bf16[k].dtype == torch.float32 for k in keys)
    step_fp32 = torch.cat([(fp32[k] - start[k]).flatten() for k in keys])
    step_bf16 = torch.cat([(bf16[k] - start[k]).flatten() for k in keys])
    assert step_fp32.norm() > 0
    cosine = float(torch.nn.functional.cosine_similarity(step_fp32, step_bf16, dim=0))
    assert cosine > 0.8

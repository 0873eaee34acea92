"""Training-only helpers keep detr's architecture: the scratch backbone and the dense token loss."""

import torch
from conftest import TINY_CONFIG

from train.mask_init import amplify_attention_inputs
from train.models import build_model
from train.models.backbone import FrozenBatchNorm2d
from train.scratch_backbone import train_backbone_from_scratch
from train.token_loss import DETRWithTokenHead, loss_tokens, token_targets

CONFIG = TINY_CONFIG.replace(hidden_dim=64, nheads=4, dec_layers=1, dim_feedforward=64, num_queries=5, num_classes=6,
                             masks=False)


def test_scratch_backbone_is_the_same_function_fully_trainable_and_loads_back_into_detr():
    torch.manual_seed(0)
    model = build_model(CONFIG).eval()
    for m in model.backbone.modules():  # non-trivial statistics, so equality below means something
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    images, mask = torch.randn(2, 3, 64, 80), torch.zeros(2, 64, 80, dtype=torch.bool)
    before = model(images, mask)["pred_logits"]
    swapped = train_backbone_from_scratch(model.backbone)
    assert swapped == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules()) > 0
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert torch.allclose(model.eval()(images, mask)["pred_logits"], before, atol=1e-5)
    # a train step changes the running statistics; the state dict still loads strictly into detr's architecture
    model.train()(images, mask)
    fresh = build_model(CONFIG).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.allclose(fresh(images, mask)["pred_logits"], model.eval()(images, mask)["pred_logits"], atol=1e-5)


def brute_force_token_labels(target, grid, input_size, no_object):
    h, w = grid
    labels = []
    img_h, img_w = target["size"].tolist()
    for r in range(h):
        for c in range(w):
            py, px = (r + 0.5) * input_size[0] / h, (c + 0.5) * input_size[1] / w  # token centre in pixels
            best, best_area = no_object, None
            for (cx, cy, bw, bh), lab in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
                x0, x1 = (cx - bw / 2) * img_w, (cx + bw / 2) * img_w
                y0, y1 = (cy - bh / 2) * img_h, (cy + bh / 2) * img_h
                if x0 <= px <= x1 and y0 <= py <= y1 and (best_area is None or bw * bh < best_area):
                    best, best_area = lab, bw * bh
            labels.append(best)
    return labels


def test_token_targets_equal_brute_force_smallest_box_rule():
    torch.manual_seed(1)
    for _ in range(20):
        n = int(torch.randint(0, 5, ()))
        centre = torch.rand(n, 2) * 0.8 + 0.1
        size = torch.rand(n, 2) * 0.6 + 0.05
        target = {"boxes": torch.cat([centre, size], 1), "labels": torch.randint(0, 6, (n,)),
                  "size": torch.tensor([96, 128])}
        got = token_targets([target], (4, 5), (128, 160), no_object=6)[0].tolist()  # padded batch 128 x 160
        assert got == brute_force_token_labels(target, (4, 5), (128, 160), 6)


def test_token_loss_trains_only_on_real_tokens_and_leaves_the_detr_state_dict_alone():
    torch.manual_seed(2)
    detr = build_model(CONFIG)
    model = DETRWithTokenHead(detr, CONFIG.num_classes)
    assert set(detr.state_dict()) == {k[len("detr."):] for k in model.state_dict() if k.startswith("detr.")}
    images = torch.randn(1, 3, 64, 96)
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[:, :, 64:] = True  # right third is padding: its tokens must not count
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.9, 0.9]]), "labels": torch.tensor([3]),
              "size": torch.tensor([64, 64])}
    out = model(images, mask)
    loss = loss_tokens(out, [target], None, 1.0)["loss_tokens"]
    logits = out["token_logits"][0]
    real = ~out["token_padding"][0]
    wanted = token_targets([target], out["token_grid"], out["input_size"], CONFIG.num_classes)[0]
    manual = torch.nn.functional.cross_entropy(logits[real], wanted[real])
    assert real.sum() < real.numel() and torch.allclose(loss, manual)
    assert loss_tokens({"pred_logits": out["pred_logits"]}, [target], None, 1.0) == {}


def test_attention_gain_scales_only_lay1_attention_inputs_and_keeps_detr_names():
    config = CONFIG.replace(hidden_dim=128, nheads=8, masks=True)
    torch.manual_seed(0)
    plain = build_model(config)
    torch.manual_seed(0)
    amplified = build_model(config)
    amplify_attention_inputs(amplified.mask_head, config.hidden_dim, 500.0)
    before, after = plain.state_dict(), amplified.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"mask_head.lay1.weight"}
    w0, w1 = before["mask_head.lay1.weight"], after["mask_head.lay1.weight"]
    assert w1.shape[1] == config.hidden_dim + config.nheads
    assert torch.equal(w1[:, :config.hidden_dim], w0[:, :config.hidden_dim])
    torch.testing.assert_close(w1[:, config.hidden_dim:], 500.0 * w0[:, config.hidden_dim:])

"""The DETR / DETRsegm model: detr's state-dict layout, and each piece checked against an independent computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import TINY_CONFIG
from torch import nn

from runtime.errors import PansegError
from train.models import DETR, DETRConfig, DETRsegm, build_model, config_from_state_dict
from train.models.backbone import Backbone, FrozenBatchNorm2d, downsample_padding_mask
from train.models.position_encoding import PositionEmbeddingSine
from train.models.segmentation import MaskHeadSmallConv, MHAttentionMap
from train.models.transformer import Transformer, TransformerDecoderLayer, TransformerEncoderLayer

SHARED_STATE_DICT = Path(__file__).parent / "fixtures" / "detr_r50_panoptic_state_dict.json"

TINY_DET = TINY_CONFIG.replace(hidden_dim=32, nheads=4, dim_feedforward=48, num_queries=5, num_classes=7, masks=False)
# The mask head's GroupNorm(8, hidden/16) needs hidden_dim >= 128.
TINY_PAN = TINY_CONFIG.replace(dim_feedforward=64, num_queries=4, num_classes=7)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize_(module: nn.Module) -> nn.Module:
    """Non-trivial values everywhere (LayerNorm/GroupNorm affine, biases, frozen BN statistics) so that a
    mistake in any of them shows up in the comparisons."""
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.dim() <= 1:
                t.normal_(0.0, 0.5).add_(1.0 if name.endswith("weight") else 0.0)
    return module


def _images(b: int = 2, h: int = 64, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(b, 3, h, w)
    padding = torch.zeros(b, h, w, dtype=torch.bool)
    padding[-1, :, w // 3:] = True  # last image is narrower and shorter, padded right and bottom
    padding[-1, h * 5 // 8:, :] = True
    return images, padding


# ---------------------------------------------------------------- state dict layout


def test_r50_panoptic_state_dict_equals_detr_released_layout():
    reference = json.loads(SHARED_STATE_DICT.read_text())["tensors"]
    model = build_model(DETRConfig(backbone="resnet50", num_classes=250, num_queries=100, masks=True))
    state = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    assert set(state) == {t["name"] for t in reference}
    for t in reference:
        name = t["name"]
        assert list(state[name].shape) == t["shape"], name
        assert str(state[name].dtype).removeprefix("torch.") == t["dtype"], name
        assert (name in params) == (t["kind"] == "parameter"), name
    assert sum(v.numel() for v in state.values()) == json.loads(SHARED_STATE_DICT.read_text())["num_elements"]


@pytest.mark.parametrize("backbone, widths", [("resnet18", (256, 128, 64)), ("resnet50", (1024, 512, 256))])
def test_mask_head_adapters_follow_backbone_widths(backbone, widths):
    with torch.device("meta"):
        model = build_model(TINY_PAN.replace(backbone=backbone))
    got = tuple(getattr(model.mask_head, f"adapter{i}").weight.shape[1] for i in (1, 2, 3))
    assert got == widths


def test_backbone_trainability_follows_detr():
    with torch.device("meta"):
        model = build_model(TINY_PAN)
        frozen_backbone = build_model(TINY_PAN.replace(train_backbone=False))
        frozen_detr = build_model(TINY_PAN, freeze_detr=True)
    for name, p in model.named_parameters():
        in_trained_stage = any(f"body.layer{i}." in name for i in (2, 3, 4))
        assert p.requires_grad == (in_trained_stage or ".backbone." not in name), name
    assert not any(p.requires_grad for n, p in frozen_backbone.named_parameters() if ".backbone." in n)
    trainable = {n.split(".")[0] for n, p in frozen_detr.named_parameters() if p.requires_grad}
    assert trainable == {"bbox_attention", "mask_head"}


# ---------------------------------------------------------------- backbone


@pytest.mark.parametrize("name, dilation", [("resnet18", False), ("resnet50", True)])
def test_backbone_matches_torchvision_resnet_with_eval_batchnorm(name, dilation):
    reference = getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=[False, False, dilation])
    _randomize_(reference).eval()
    ours = Backbone(name, return_interm_layers=True, dilation=dilation)
    # Regular BatchNorm weights carry num_batches_tracked; FrozenBatchNorm2d must drop it for a strict load.
    body_state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert any(k.endswith("num_batches_tracked") for k in body_state)
    ours.body.load_state_dict(body_state, strict=True)
    assert isinstance(ours.body.bn1, FrozenBatchNorm2d)

    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = []
        for stage in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            y = stage(y)
            expected.append(y)
        got = ours(x)
    assert len(got) == 4
    for g, e in zip(got, expected, strict=True):
        # Activations grow to ~1e3 through a random ResNet-50: compare relative to their scale (float32 rounding).
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * e.abs().max().item())
    assert got[3].shape[-2:] == ((4, 5) if dilation else (2, 3))


def test_resnet18_dc5_dilates_layer4_like_torchvision_does_for_bottlenecks():
    """torchvision refuses to dilate a BasicBlock; DC5 for ResNet-18/34 must keep its weights and mirror the
    bottleneck rule: stride 1, the first block at dilation 1, later blocks at dilation 2 (output stride 16)."""
    plain = Backbone("resnet18", return_interm_layers=True)
    dc5 = Backbone("resnet18", return_interm_layers=True, dilation=True)
    _randomize_(plain)
    dc5.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        got = dc5(x)
        y = plain(x)[2]  # layer3 output, unchanged by DC5
        torch.testing.assert_close(got[2], y)
        for index, block in enumerate(plain.body.layer4):
            d = 1 if index == 0 else 2

            def conv(t, c, d=d):
                return F.conv2d(t, c.weight, None, stride=1, padding=d, dilation=d)

            identity = y if block.downsample is None else block.downsample[1](
                F.conv2d(y, block.downsample[0].weight, None, stride=1))
            out = F.relu(block.bn1(conv(y, block.conv1)))
            y = F.relu(block.bn2(conv(out, block.conv2)) + identity)
    assert got[3].shape[-2:] == (4, 6)
    torch.testing.assert_close(got[3], y, rtol=1e-4, atol=1e-5 * y.abs().max().item())


def test_padding_mask_downsampling_is_nearest_as_detr():
    mask = torch.rand(3, 37, 53) > 0.6
    h, w = 5, 7
    got = downsample_padding_mask(mask, (h, w))
    expected = torch.zeros(3, h, w, dtype=torch.bool)
    for b in range(3):
        for i in range(h):
            for j in range(w):
                # PyTorch "nearest": source index floor(dst * in / out)
                expected[b, i, j] = mask[b, math.floor(i * 37 / h), math.floor(j * 53 / w)]
    assert got.dtype == torch.bool
    assert torch.equal(got, expected)


# ---------------------------------------------------------------- position encoding


def test_sine_position_encoding_matches_brute_force():
    npf, temperature, scale, eps = 6, 10000.0, 2 * math.pi, 1e-6
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 3:, :] = True
    mask[1, :, 3:] = True
    got = PositionEmbeddingSine(npf, temperature=temperature, normalize=True)(mask)
    assert got.shape == (2, 2 * npf, 4, 5)
    expected = torch.zeros_like(got)
    for b in range(2):
        for i in range(4):
            for j in range(5):
                col = [not mask[b, r, j] for r in range(4)]
                row = [not mask[b, i, c] for c in range(5)]
                y = sum(col[: i + 1]) / (sum(col) + eps) * scale
                x = sum(row[: j + 1]) / (sum(row) + eps) * scale
                for k in range(npf):
                    freq = temperature ** (2 * (k // 2) / npf)
                    trig = math.sin if k % 2 == 0 else math.cos
                    expected[b, k, i, j] = trig(y / freq)  # first half: rows (y), then columns (x)
                    expected[b, npf + k, i, j] = trig(x / freq)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- transformer


def _layer_norm(x, norm: nn.LayerNorm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _attention(query, key, value, attn: nn.MultiheadAttention, key_padding_mask=None):
    """Multi-head attention written out: inputs [L, B, D] (sequence first), key_padding_mask [B, S] True = ignore."""
    d = query.shape[-1]
    heads, dh = attn.num_heads, d // attn.num_heads
    wq, wk, wv = attn.in_proj_weight.split(d)
    bq, bk, bv = attn.in_proj_bias.split(d)

    def split_heads(x):  # [L, B, D] -> [B, heads, L, dh]
        return x.reshape(x.shape[0], x.shape[1], heads, dh).permute(1, 2, 0, 3)

    q, k, v = split_heads(query @ wq.T + bq), split_heads(key @ wk.T + bk), split_heads(value @ wv.T + bv)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ v  # [B, heads, L, dh]
    out = out.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], d)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


def _ffn(x, layer):
    return F.relu(x @ layer.linear1.weight.T + layer.linear1.bias) @ layer.linear2.weight.T + layer.linear2.bias


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_layer_matches_formula(pre_norm):
    layer = _randomize_(TransformerEncoderLayer(16, 4, 24, dropout=0.0, normalize_before=pre_norm)).eval()
    src, pos = torch.randn(6, 2, 16), torch.randn(6, 2, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        got = layer(src, key_padding_mask=pad, pos=pos)
        if pre_norm:
            n1 = _layer_norm(src, layer.norm1)
            x = src + _attention(n1 + pos, n1 + pos, n1, layer.self_attn, pad)
            expected = x + _ffn(_layer_norm(x, layer.norm2), layer)
        else:
            x = _layer_norm(src + _attention(src + pos, src + pos, src, layer.self_attn, pad), layer.norm1)
            expected = _layer_norm(x + _ffn(x, layer), layer.norm2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layer_matches_formula(pre_norm):
    layer = _randomize_(TransformerDecoderLayer(16, 4, 24, dropout=0.0, normalize_before=pre_norm)).eval()
    tgt, query_pos = torch.randn(3, 2, 16), torch.randn(3, 2, 16)
    memory, pos = torch.randn(6, 2, 16), torch.randn(6, 2, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 5:] = True
    with torch.no_grad():
        got = layer(tgt, memory, memory_key_padding_mask=pad, pos=pos, query_pos=query_pos)
        sa, ca = layer.self_attn, layer.multihead_attn
        if pre_norm:
            n = _layer_norm(tgt, layer.norm1)
            x = tgt + _attention(n + query_pos, n + query_pos, n, sa)
            n = _layer_norm(x, layer.norm2)
            x = x + _attention(n + query_pos, memory + pos, memory, ca, pad)
            expected = x + _ffn(_layer_norm(x, layer.norm3), layer)
        else:
            x = _layer_norm(tgt + _attention(tgt + query_pos, tgt + query_pos, tgt, sa), layer.norm1)
            x = _layer_norm(x + _attention(x + query_pos, memory + pos, memory, ca, pad), layer.norm2)
            expected = _layer_norm(x + _ffn(x, layer), layer.norm3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_decoder_returns_every_layer_through_the_final_norm():
    transformer = _randomize_(Transformer(16, 4, num_encoder_layers=1, num_decoder_layers=3, dim_feedforward=24,
                                          dropout=0.0)).eval()
    src, pos, queries = torch.randn(2, 16, 3, 4), torch.randn(2, 16, 3, 4), torch.randn(5, 16)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    with torch.no_grad():
        hs, memory = transformer(src, mask, queries, pos)
        seq = src.flatten(2).permute(2, 0, 1)
        seq_pos = pos.flatten(2).permute(2, 0, 1)
        mem = transformer.encoder.layers[0](seq, mask.flatten(1), seq_pos)  # post-norm: no final encoder norm
        query_pos = queries[:, None].repeat(1, 2, 1)
        tgt = torch.zeros_like(query_pos)
        expected = []
        for layer in transformer.decoder.layers:
            tgt = layer(tgt, mem, mask.flatten(1), seq_pos, query_pos)
            expected.append(transformer.decoder.norm(tgt).transpose(0, 1))
    assert hs.shape == (3, 2, 5, 16)
    torch.testing.assert_close(hs, torch.stack(expected))
    torch.testing.assert_close(memory, mem.permute(1, 2, 0).reshape(2, 16, 3, 4))


def test_padded_positions_do_not_reach_the_decoder():
    transformer = _randomize_(Transformer(16, 4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=24,
                                          dropout=0.0)).eval()
    src, pos, queries = torch.randn(2, 16, 3, 4), torch.randn(2, 16, 3, 4), torch.randn(5, 16)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, :, 3:] = True
    mask[1, 2:, :] = True
    changed_pad, changed_valid = src.clone(), src.clone()
    changed_pad[mask[:, None].expand_as(src)] += 10.0
    changed_valid[1, :, 0, 0] += 10.0
    with torch.no_grad():
        hs, memory = transformer(src, mask, queries, pos)
        hs_pad, memory_pad = transformer(changed_pad, mask, queries, pos)
        hs_valid, _ = transformer(changed_valid, mask, queries, pos)
    valid = ~mask[:, None].expand_as(memory)
    torch.testing.assert_close(hs_pad, hs)
    torch.testing.assert_close(memory_pad[valid], memory[valid])
    assert not torch.allclose(hs_valid[:, 1], hs[:, 1], atol=1e-3)
    torch.testing.assert_close(hs_valid[:, 0], hs[:, 0])  # the other image is untouched


# ---------------------------------------------------------------- mask head


def test_attention_map_matches_loops_with_detr_joint_softmax():
    b, nq, heads, d, h, w = 2, 3, 2, 8, 3, 4
    attn = _randomize_(MHAttentionMap(d, d, heads)).eval()
    q, k = torch.randn(b, nq, d), torch.randn(b, d, h, w)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    mask[1, :, 3] = True
    with torch.no_grad():
        got = attn(q, k, mask)
        wq, bq, wk, bk = attn.q_linear.weight, attn.q_linear.bias, attn.k_linear.weight, attn.k_linear.bias
        expected = torch.zeros(b, nq, heads, h, w)
        dh = d // heads
        for bi in range(b):
            for qi in range(nq):
                qv = wq @ q[bi, qi] + bq
                logits = torch.full((heads, h, w), float("-inf"))
                for n in range(heads):
                    for y in range(h):
                        for x in range(w):
                            if not mask[bi, y, x]:
                                kv = wk @ k[bi, :, y, x] + bk
                                logits[n, y, x] = (qv[n * dh:(n + 1) * dh] @ kv[n * dh:(n + 1) * dh]) / math.sqrt(dh)
                # detr normalises over heads and positions together (softmax of weights.flatten(2))
                expected[bi, qi] = logits.flatten().softmax(0).reshape(heads, h, w)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(got[1, :, :, :, 3] == 0)
    torch.testing.assert_close(got.sum((2, 3, 4)), torch.ones(b, nq))


def _group_norm(x, gn: nn.GroupNorm):
    c = x.shape[1]
    g = x.reshape(x.shape[0], gn.num_groups, -1)
    mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
    g = (g - mean) / torch.sqrt(var + gn.eps)
    return g.reshape(x.shape) * gn.weight.reshape(1, c, 1, 1) + gn.bias.reshape(1, c, 1, 1)


def _nearest(x, size):
    rows = [math.floor(i * x.shape[-2] / size[0]) for i in range(size[0])]
    cols = [math.floor(j * x.shape[-1] / size[1]) for j in range(size[1])]
    return x[..., rows, :][..., cols]


def test_mask_head_matches_per_query_recomputation():
    b, nq, heads, d = 2, 3, 8, 128
    fpn_dims = (24, 16, 8)
    head = _randomize_(MaskHeadSmallConv(d + heads, fpn_dims, d)).eval()
    x = torch.randn(b, d, 3, 4)
    bbox_mask = torch.rand(b, nq, heads, 3, 4)
    fpns = [torch.randn(b, 24, 5, 7), torch.randn(b, 16, 9, 13), torch.randn(b, 8, 18, 25)]  # odd ratios on purpose
    with torch.no_grad():
        got = head(x, bbox_mask, fpns)
        assert got.shape == (b * nq, 1, 18, 25)
        for bi in range(b):
            for qi in range(nq):
                y = torch.cat([x[bi:bi + 1], bbox_mask[bi, qi][None]], 1)
                y = F.relu(_group_norm(F.conv2d(y, head.lay1.weight, head.lay1.bias, padding=1), head.gn1))
                y = F.relu(_group_norm(F.conv2d(y, head.lay2.weight, head.lay2.bias, padding=1), head.gn2))
                for fpn, adapter, conv, gn in zip(fpns, (head.adapter1, head.adapter2, head.adapter3),
                                                  (head.lay3, head.lay4, head.lay5), (head.gn3, head.gn4, head.gn5),
                                                  strict=True):
                    skip = F.conv2d(fpn[bi:bi + 1], adapter.weight, adapter.bias)
                    y = skip + _nearest(y, skip.shape[-2:])
                    y = F.relu(_group_norm(F.conv2d(y, conv.weight, conv.bias, padding=1), gn))
                expected = F.conv2d(y, head.out_lay.weight, head.out_lay.bias, padding=1)
                # detr's layout: row b * Q + q of the flattened batch
                torch.testing.assert_close(got[bi * nq + qi], expected[0], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- whole model


def test_forward_equals_detector_then_masks_and_subsets_of_queries():
    model = _randomize_(build_model(TINY_PAN)).eval()
    assert isinstance(model, DETRsegm)
    images, padding = _images()
    with torch.no_grad():
        full = model(images, padding)
        det = model.forward_detector(images, padding)
        masks = model.forward_masks(det)
        keep = torch.tensor([3, 1])
        subset = model.forward_masks(det, hs=det["hs"][:, keep])
    assert full["pred_masks"].shape == (2, 4, 16, 16)
    assert torch.equal(full["pred_masks"], masks)
    assert torch.equal(full["pred_logits"], det["pred_logits"])
    assert torch.equal(full["pred_boxes"], det["pred_boxes"])
    # A query's mask does not depend on which other queries are computed with it (what the split export relies on).
    torch.testing.assert_close(subset, full["pred_masks"][:, keep], rtol=1e-5, atol=1e-5)
    assert det["hs"].shape == (2, 4, 128)
    assert det["memory_mask"].shape == det["memory"].shape[:1] + det["memory"].shape[2:]
    assert det["memory_mask"][1].any() and not det["memory_mask"][0].any()
    assert [det[k].shape[-1] for k in ("fpn_s16", "fpn_s8", "fpn_s4")] == [4, 8, 16]


def test_outputs_and_aux_outputs_follow_the_decoder_layers():
    model = _randomize_(build_model(TINY_PAN.replace(dec_layers=3)))
    images, padding = _images()
    captured = {}
    model.detr.transformer.register_forward_hook(lambda m, i, out: captured.update(hs=out[0]))
    model.train()  # dropout is 0 and BatchNorm frozen, so training mode computes the same numbers
    with torch.no_grad():
        train_out = model(images, padding)
    hs = captured["hs"]
    model.eval()
    with torch.no_grad():
        eval_out = model(images, padding)
        expected_logits = model.detr.class_embed(hs)
        expected_boxes = model.detr.bbox_embed(hs).sigmoid()
    assert "aux_outputs" not in eval_out
    assert len(train_out["aux_outputs"]) == 2
    for i, aux in enumerate(train_out["aux_outputs"]):
        torch.testing.assert_close(aux["pred_logits"], expected_logits[i])
        torch.testing.assert_close(aux["pred_boxes"], expected_boxes[i])
    torch.testing.assert_close(eval_out["pred_logits"], expected_logits[-1])
    torch.testing.assert_close(train_out["pred_logits"], eval_out["pred_logits"])
    assert eval_out["pred_logits"].shape == (2, 4, 8)
    assert ((eval_out["pred_boxes"] > 0) & (eval_out["pred_boxes"] < 1)).all()


def test_detection_model_has_no_masks_and_aux_is_optional():
    model = build_model(TINY_DET.replace(aux_loss=False))
    assert isinstance(model, DETR)
    images, padding = _images()
    model.train()
    out = model(images, padding)
    assert set(out) == {"pred_logits", "pred_boxes"}
    assert out["pred_logits"].shape == (2, 5, 8) and out["pred_boxes"].shape == (2, 5, 4)
    out["pred_logits"].sum().backward()  # gradients reach the trained backbone stages
    assert model.backbone[0].body.layer4[0].conv1.weight.grad is not None
    assert model.backbone[0].body.conv1.weight.grad is None


# ---------------------------------------------------------------- configuration


ROUND_TRIP_CONFIGS = [
    TINY_PAN.replace(pre_norm=True),
    TINY_DET.replace(backbone="resnet34"),
    DETRConfig(backbone="resnet50", hidden_dim=256, nheads=16, enc_layers=3, dec_layers=2, num_queries=50,
               num_classes=91, masks=True, dilation=True, dropout=0.0, aux_loss=False),
    DETRConfig(backbone="resnet101", hidden_dim=64, nheads=2, enc_layers=0, dec_layers=1, dim_feedforward=128,
               masks=False, pre_norm=True, train_backbone=False),
]


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=lambda c: f"{c.backbone}-masks{c.masks}-pre{c.pre_norm}")
def test_config_from_state_dict_round_trips(config):
    with torch.device("meta"):
        state = build_model(config).state_dict()
    unknowable = {k: getattr(config, k) for k in ("dilation", "dropout", "aux_loss", "train_backbone")}
    if not config.masks:
        unknowable["nheads"] = config.nheads  # only the panoptic mask head reveals nheads
    assert config_from_state_dict(state, unknowable) == config


def test_config_from_state_dict_defaults_and_contradictions():
    with torch.device("meta"):
        det = build_model(TINY_DET.replace(hidden_dim=12, nheads=3)).state_dict()
        pan = build_model(TINY_PAN).state_dict()
    assert config_from_state_dict(det).nheads == 4  # 8 does not divide 12
    assert config_from_state_dict(pan).nheads == 8  # read from the mask head, no override needed
    with pytest.raises(PansegError, match=r"nheads=4 \(weights say 8\)"):
        config_from_state_dict(pan, {"nheads": 4})
    with pytest.raises(PansegError, match="num_classes"):
        config_from_state_dict(det, {"num_classes": 3})
    with pytest.raises(PansegError, match="query_embed"):
        config_from_state_dict({"foo.weight": torch.zeros(1)})
    without_head = {k: v for k, v in pan.items() if not k.startswith("mask_head.")}
    with pytest.raises(PansegError, match="no mask_head"):
        config_from_state_dict(without_head)


def test_config_dict_round_trip_and_validation():
    config = TINY_PAN.replace(dilation=False, dropout=0.25)
    as_dict = config.to_dict()
    assert all(isinstance(v, str | int | float | bool) for v in as_dict.values())
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert DETRConfig.from_dict(as_dict) == config
    with pytest.raises(PansegError, match="unknown model config keys: colour"):
        DETRConfig.from_dict({**as_dict, "colour": "red"})
    with pytest.raises(PansegError, match="hidden_dim must be int"):
        DETRConfig.from_dict({**as_dict, "hidden_dim": "128"})
    assert DETRConfig(backbone="resnet18", dilation=True).dilation  # DC5 for BasicBlock ResNets too
    with pytest.raises(PansegError, match="not divisible by nheads"):
        DETRConfig(hidden_dim=256, nheads=7, masks=False)
    with pytest.raises(PansegError, match="mask head"):
        DETRConfig(hidden_dim=64, nheads=8, masks=True)
    args = {"backbone": "resnet34", "hidden_dim": 128, "nheads": 8, "lr_backbone": 0.0, "num_classes": None,
            "lr": 1e-4}
    from_args = DETRConfig.from_args(args)
    assert (from_args.backbone, from_args.train_backbone, from_args.num_classes) == ("resnet34", False, 250)

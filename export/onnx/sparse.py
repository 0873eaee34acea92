"""Query-sparse export: a detector graph run once per image and a mask graph run only on the queries that survive the
score threshold.

Why two graphs and not one graph with a threshold input: selecting queries inside the graph needs NonZero, whose
output size depends on the data. ONNX Runtime copes, but TensorRT then needs an output allocator and cannot plan
memory ahead; with two graphs every shape is known before each run (the mask graph's kept-query dimension is an
ordinary dynamic dimension, one optimization profile ``1..batch*queries``), the threshold stays a runtime setting
(``panseg-rt infer --threshold``) without re-export, and an image batch where nothing is kept skips the mask graph.
The price is one extra engine call and a host round trip of the per-image tensors, small next to the mask head.

Batches: the kept (image, query) pairs of the whole batch are flattened into one mask-graph batch; ``image_index``
says which image each kept query belongs to, and the graph gathers that image's per-image tensors (Gather on axis
0), so images with different kept counts need neither padding nor one call each.

What the detector adds to detr's outputs is exactly what the mask head needs per image, computed once:

* ``attn_keys``: the attention map's key projection of the encoder memory (``k_linear``, a 1x1 conv) - per image in
  detr too, so moving it out of the mask graph changes nothing;
* ``lay1_image``: the image-feature half of the mask head's first 3x3 conv, plus its bias. detr feeds ``lay1`` with
  ``cat([expand(src_proj), attention maps])``: in-channels ``[:D]`` see the projected backbone feature (the same for
  every query), ``[D:]`` the query's ``nheads`` attention maps. A convolution is linear in its input channels (zero
  padding included), so ``lay1(x) = conv(src_proj, W[:, :D]) + b + conv(maps, W[:, D:])``; only the last term is per
  query. The weights are split here at export, the checkpoint is untouched.
* ``fpn_s16/s8/s4``: the mask head's 1x1 adapters on the backbone features (already per image in forward_detector).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.onnx.graph import DEFAULT_OPSET, Dims, ShapePolicy, export_module, sample_inputs
from runtime.contract import (
    ATTN_KEYS,
    DETECTOR_OUTPUTS,
    FPN_S4,
    FPN_S8,
    FPN_S16,
    HS,
    HS_KEPT,
    IMAGE_INDEX,
    IMAGES,
    KEPT_DIM,
    LAY1_IMAGE,
    MASK_GRAPH_INPUTS,
    MASK_GRAPH_OUTPUTS,
    MASKS_KEPT,
    MEMORY_MASK,
    MODEL_INPUTS,
    PADDING_MASK,
    PER_IMAGE_INPUTS,
    PRED_BOXES,
    PRED_LOGITS,
)

# symbolic (height, width) names of the per-image spatial tensors when the input size is dynamic
_SPATIAL_NAMES = {ATTN_KEYS: "feat", MEMORY_MASK: "feat", LAY1_IMAGE: "feat", FPN_S16: "s16", FPN_S8: "s8",
                  FPN_S4: "mask"}
TRACE_KEPT = 3  # kept queries in the traced mask batch: not 1, not the batch size, not the query count


def one_channel_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a convolution with one output channel (the mask head's ``out_lay``), as a depthwise
    convolution and a sum over the channels: the same products and sums, in another order.

    Why: ONNX Runtime's CPU kernels run convolutions in a channel-blocked layout (NCHWc) that pads the output channels
    to the block (16 with AVX-512), so the one-channel convolution computed 16 channels and kept one. Measured on the
    R50 mask graph: the slowest node per useful FLOP; see benchmarks/results/mask-graph-profile/README.md.
    """
    channels = conv.in_channels
    per_channel = F.conv2d(x, conv.weight.transpose(0, 1), None, stride=conv.stride, padding=conv.padding,
                           groups=channels)
    out = per_channel.sum(1, keepdim=True)
    return out if conv.bias is None else out + conv.bias.reshape(1, -1, 1, 1)


def split_first_conv(conv: nn.Conv2d, image_channels: int) -> tuple[Tensor, Tensor]:
    """(W_img, W_att): lay1's weight split by input channel, image features first (detr's concatenation order)."""
    return conv.weight[:, :image_channels], conv.weight[:, image_channels:]


def lay1_image_part(model: nn.Module, src_proj: Tensor) -> Tensor:
    """conv(src_proj, W_img) + bias: the per-image half of the mask head's first convolution."""
    lay1 = model.mask_head.lay1
    w_img, _ = split_first_conv(lay1, model.bbox_attention.hidden_dim)
    return F.conv2d(src_proj, w_img, lay1.bias, stride=lay1.stride, padding=lay1.padding)


class DetectorGraph(nn.Module):
    """DETRsegm's once-per-image part: detr's outputs plus the mask head's per-image inputs (see module docstring)."""

    output_names = DETECTOR_OUTPUTS

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, padding_mask: Tensor) -> tuple[Tensor, ...]:
        d = self.model.forward_detector(images, padding_mask)
        k_linear = self.model.bbox_attention.k_linear
        keys = F.conv2d(d["memory"], k_linear.weight[:, :, None, None], k_linear.bias)
        lay1_image = lay1_image_part(self.model, d["src_proj"])
        return (d[PRED_LOGITS], d[PRED_BOXES], d[HS], keys, d[MEMORY_MASK], lay1_image, d[FPN_S16], d[FPN_S8],
                d[FPN_S4])


class MaskGraph(nn.Module):
    """The mask head for K kept queries of any images: hs_kept [K, D], image_index int64 [K] -> masks [K, H/4, W/4].

    Per query exactly what DETRsegm.forward_masks computes for it (attention maps with detr's softmax over heads and
    positions together, then the conv/GroupNorm stack), with the per-image tensors gathered by ``image_index``; the
    last convolution is computed as :func:`one_channel_conv` (equal up to float rounding).
    """

    input_names = MASK_GRAPH_INPUTS
    output_names = MASK_GRAPH_OUTPUTS

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def attention_maps(self, hs: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """hs [K, D], keys [K, D, h, w] (k_linear applied), mask bool [K, h, w] -> [K, heads, h, w]."""
        att = self.model.bbox_attention
        heads, c = att.num_heads, att.hidden_dim // att.num_heads
        k, (h, w) = hs.shape[0], keys.shape[-2:]
        q = att.q_linear(hs).reshape(k, heads, 1, c)
        kh = keys.reshape(k, heads, c, h * w)
        weights = torch.matmul(q * att.normalize_fact, kh)  # [K, heads, 1, hw]
        weights = weights.masked_fill(mask.reshape(k, 1, 1, h * w), float("-inf"))
        weights = F.softmax(weights.reshape(k, heads * h * w), dim=-1)
        return weights.reshape(k, heads, h, w)

    def forward(self, hs_kept: Tensor, image_index: Tensor, attn_keys: Tensor, memory_mask: Tensor,
                lay1_image: Tensor, fpn_s16: Tensor, fpn_s8: Tensor, fpn_s4: Tensor) -> Tensor:
        head = self.model.mask_head
        maps = self.attention_maps(hs_kept, attn_keys.index_select(0, image_index),
                                   memory_mask.index_select(0, image_index))
        _, w_att = split_first_conv(head.lay1, self.model.bbox_attention.hidden_dim)
        x = F.conv2d(maps, w_att, None, stride=head.lay1.stride, padding=head.lay1.padding)
        x = F.relu(head.gn1(x + lay1_image.index_select(0, image_index)))
        x = F.relu(head.gn2(head.lay2(x)))
        for skip, conv, norm in zip((fpn_s16, fpn_s8, fpn_s4), (head.lay3, head.lay4, head.lay5),
                                    (head.gn3, head.gn4, head.gn5), strict=True):
            skip = skip.index_select(0, image_index)
            x = skip + F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = F.relu(norm(conv(x)))
        masks = one_channel_conv(head.out_lay, x)
        return masks.reshape(masks.shape[0], masks.shape[2], masks.shape[3])


def _per_image_dims(name: str, shape: Sequence[int], policy: ShapePolicy) -> list[int | str]:
    dims: list[int | str] = list(shape)
    dims[0] = "batch" if policy.dynamic_batch else policy.batch
    if name in _SPATIAL_NAMES and policy.dynamic_size:
        prefix = _SPATIAL_NAMES[name]
        dims[-2:] = [f"{prefix}_height", f"{prefix}_width"]
    return dims


def sparse_io(traced: Mapping[str, Tensor], policy: ShapePolicy) -> tuple[dict[str, Dims], dict[str, Dims]]:
    """Declared shapes of (detector graph, mask graph) inputs and outputs; symbolic names where dynamic."""
    b = "batch" if policy.dynamic_batch else policy.batch
    h, w = ("height", "width") if policy.dynamic_size else (policy.height, policy.width)
    detector: dict[str, Dims] = {IMAGES: [b, 3, h, w], PADDING_MASK: [b, h, w]}
    for name in DETECTOR_OUTPUTS:
        detector[name] = _per_image_dims(name, traced[name].shape, policy)
    hidden = traced[HS].shape[-1]
    masks: dict[str, Dims] = {HS_KEPT: [KEPT_DIM, hidden], IMAGE_INDEX: [KEPT_DIM]}
    masks.update({name: detector[name] for name in PER_IMAGE_INPUTS})
    masks[MASKS_KEPT] = [KEPT_DIM, *detector[FPN_S4][-2:]]
    return detector, masks


def _dynamic_axes(shapes: Mapping[str, Dims]) -> dict[str, dict[int, str]]:
    axes = {name: {a: d for a, d in enumerate(dims) if isinstance(d, str)} for name, dims in shapes.items()}
    return {name: a for name, a in axes.items() if a}


def trace_mask_inputs(traced: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
    """A kept-query batch to trace the mask graph with: TRACE_KEPT queries spread over the traced images."""
    hs = traced[HS]
    b, q = hs.shape[:2]
    image_index = torch.tensor([min(k * b // TRACE_KEPT, b - 1) for k in range(TRACE_KEPT)], dtype=torch.int64)
    query_index = torch.tensor([(3 * k + 1) % q for k in range(TRACE_KEPT)], dtype=torch.int64)
    return (hs[image_index, query_index], image_index, *(traced[n] for n in PER_IMAGE_INPUTS))


def export_sparse_model(model: nn.Module, policy: ShapePolicy, opset: int = DEFAULT_OPSET, simplify: bool = True
                        ) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, Dims], dict[str, Dims]]:
    """(detector graph, mask graph, their declared shapes) for a DETRsegm."""
    detector = DetectorGraph(model).eval()
    masks = MaskGraph(model).eval()
    inputs = sample_inputs(policy)
    with torch.no_grad():
        traced = dict(zip(DETECTOR_OUTPUTS, detector(*inputs), strict=True))
    detector_shapes, mask_shapes = sparse_io(traced, policy)
    detector_onnx = export_module(detector, inputs, MODEL_INPUTS, DETECTOR_OUTPUTS, _dynamic_axes(detector_shapes),
                                  opset, simplify, detector_shapes)
    mask_onnx = export_module(masks, trace_mask_inputs(traced), MASK_GRAPH_INPUTS, MASK_GRAPH_OUTPUTS,
                              _dynamic_axes(mask_shapes),
                              opset, simplify, mask_shapes)
    return detector_onnx, mask_onnx, detector_shapes, mask_shapes

"""PyTorch module -> ONNX graph: one generic export function, and the small wrapper for the full model.

Exporter choice: ``torch.onnx.export(dynamo=False)`` (the TorchScript tracer). Measured on this model (torch 2.14,
resnet18 tiny DETR): it exports in ~1 s at opset 17 with batch, height and width truly symbolic (a graph traced at
batch 2 runs at batch 1 and 3, and at any size), and after onnxslim uses only operators TensorRT parses. The dynamo
exporter took ~20 s, needs opset >= 18 (it emits Split with ``num_outputs``), and specialised the batch dimension to
the traced size (torch.export treats sizes 0/1 as static), so a dynamic batch would need extra care.

The tracer records the ops that ran, so every size the model computes from ``x.shape`` is recorded as a Shape op,
not a constant: detr's ``F.interpolate(mask, size=x.shape[-2:])``, the mask head's expand/flatten over batch and
queries, and the transformer's reshapes stay dynamic. The verification still runs the graph at batch sizes other
than the traced one, since that is the known detr export bug.

Inputs: ``images`` float32 [B, 3, H, W] (normalized, zero on padding) and ``padding_mask`` bool [B, H, W], True on
padding (detr's NestedTensor mask, as runtime.preprocess.pad_batch builds it). bool rather than uint8 because it is
what the model computes with (no Cast in the graph, no second convention to get wrong), ONNX Runtime takes numpy bool
directly, and TensorRT accepts bool network inputs.

To export pieces of the model separately, write another small wrapper whose ``forward`` takes and returns plain
tensors and call :func:`export_module` with its names and dynamic axes, as export/onnx/sparse.py does for the
query-sparse detector and mask graphs (the default for panoptic models; :func:`export_full_model` is ``--full``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx
import torch
from torch import Tensor, nn

from export.onnx.defaults import DEFAULT_OPSET
from runtime.contract import DETECTION_OUTPUTS, MODEL_INPUTS, PANOPTIC_OUTPUTS
from runtime.errors import PansegError

MIN_OPSET = 14
TRACE_BATCH = 2  # traced batch when the batch is dynamic: >1 so a frozen batch size shows up at batch 1
TRACE_SIZE = (96, 128)  # traced (height, width) when they are dynamic: not square, not the verification sizes

Dims = Sequence[int | str]


class FullModel(nn.Module):
    """DETR or DETRsegm as a function of plain tensors -> a tuple in the order of :attr:`output_names`."""

    def __init__(self, model: nn.Module, panoptic: bool):
        super().__init__()
        self.model = model
        self.output_names = PANOPTIC_OUTPUTS if panoptic else DETECTION_OUTPUTS

    def forward(self, images: Tensor, padding_mask: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images, padding_mask)
        return tuple(out[name] for name in self.output_names)


@dataclass(frozen=True)
class ShapePolicy:
    """Which input dimensions are fixed; None means dynamic (symbolic in the graph)."""

    batch: int | None = None
    height: int | None = None
    width: int | None = None

    @property
    def dynamic_batch(self) -> bool:
        return self.batch is None

    @property
    def dynamic_size(self) -> bool:
        return self.height is None

    def trace_shape(self) -> tuple[int, int, int]:
        h, w = (self.height, self.width) if not self.dynamic_size else TRACE_SIZE
        return (self.batch or TRACE_BATCH), h, w


def sample_inputs(policy: ShapePolicy) -> tuple[Tensor, Tensor]:
    """Images and a padding mask to trace with; the last image is padded so the mask path carries real work."""
    b, h, w = policy.trace_shape()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, h, w, generator=generator)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    if b > 1:
        mask[-1, (3 * h) // 4:, :] = True
        mask[-1, :, (3 * w) // 4:] = True
        images[-1] = images[-1].masked_fill(mask[-1], 0.0)
    return images, mask


def full_model_io(output_names: Sequence[str], output_shapes: Mapping[str, Sequence[int]], policy: ShapePolicy
                  ) -> tuple[dict[str, Dims], dict[str, dict[int, str]]]:
    """Declared shapes of inputs and outputs (symbolic names where dynamic) and the dynamic axes for the exporter."""
    b = "batch" if policy.dynamic_batch else policy.batch
    h, w = ("height", "width") if policy.dynamic_size else (policy.height, policy.width)
    shapes: dict[str, Dims] = {"images": [b, 3, h, w], "padding_mask": [b, h, w]}
    for name in output_names:
        dims: list[int | str] = list(output_shapes[name])
        dims[0] = b
        if name == "pred_masks" and policy.dynamic_size:
            dims[2:] = ["mask_height", "mask_width"]
        shapes[name] = dims
    dynamic = {name: {axis: d for axis, d in enumerate(dims) if isinstance(d, str)} for name, dims in shapes.items()}
    return shapes, {name: axes for name, axes in dynamic.items() if axes}


def export_module(module: nn.Module, inputs: Sequence[Tensor], input_names: Sequence[str],
                  output_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
                  opset: int = DEFAULT_OPSET, simplify: bool = True,
                  declared_shapes: Mapping[str, Dims] | None = None) -> onnx.ModelProto:
    """Export ``module`` (put in eval mode) with the TorchScript tracer, fold constants, simplify with onnxslim.

    ``declared_shapes`` (name -> dims, str for symbolic) are stamped on the graph's inputs and outputs afterwards, so
    the graph advertises the layout the runtime relies on (onnxslim renames the dims it infers).
    """
    if opset < MIN_OPSET:
        raise PansegError(f"opset {opset} is too old: use {MIN_OPSET} or later ({DEFAULT_OPSET}+ for TensorRT's "
                          "LayerNormalization)")
    module.eval()  # the exporter restores the original mode afterwards, recursively: wrappers must already be eval
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python values are expected
            torch.onnx.export(module, tuple(inputs), buffer, dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={k: dict(v) for k, v in (dynamic_axes or {}).items()},
                              do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the user needs one line
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise PansegError(f"ONNX export (opset {opset}) failed: {detail}") from exc
    model = onnx.load_from_string(buffer.getvalue())
    if simplify:
        model = simplify_graph(model)
    if declared_shapes:
        stamp_shapes(model, declared_shapes)
    return model


def simplify_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding, shape-op elimination, dead code removal (it keeps symbolic dims symbolic)."""
    import onnxslim

    try:
        return onnxslim.slim(model)
    except Exception as exc:  # noqa: BLE001 - an optional clean-up must not lose a valid export
        warnings.warn(f"onnxslim failed, keeping the unsimplified graph ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=2)
        return model


def stamp_shapes(model: onnx.ModelProto, shapes: Mapping[str, Dims]) -> None:
    """Set the declared dims of graph inputs and outputs (ints fixed, strings symbolic)."""
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        declared = shapes[value.name]
        if len(dims) and len(dims) != len(declared):
            raise PansegError(f"graph {value.name} has rank {len(dims)}, declared {len(declared)}")
        del dims[:]
        for d in declared:
            dim = value.type.tensor_type.shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = int(d)


def export_full_model(model: nn.Module, panoptic: bool, policy: ShapePolicy, opset: int = DEFAULT_OPSET,
                      simplify: bool = True) -> tuple[onnx.ModelProto, dict[str, Dims]]:
    """The whole model as one graph; returns it and the declared input/output shapes."""
    wrapper = FullModel(model, panoptic).eval()
    inputs = sample_inputs(policy)
    with torch.no_grad():
        traced_out = wrapper(*inputs)
    output_shapes = {name: tuple(t.shape) for name, t in zip(wrapper.output_names, traced_out, strict=True)}
    shapes, dynamic = full_model_io(wrapper.output_names, output_shapes, policy)
    onnx_model = export_module(wrapper, inputs, MODEL_INPUTS, wrapper.output_names, dynamic, opset, simplify, shapes)
    return onnx_model, shapes

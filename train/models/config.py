"""The model configuration: one plain dataclass, so checkpoints can store it as a dict of plain values.

Field names follow detr's command-line flags (``--hidden_dim``, ``--nheads``, ...) so a detr ``args`` namespace maps
onto it directly. :func:`config_from_state_dict` recovers everything the weights determine from a detr state dict,
so released checkpoints (which store only weights, or an ``argparse.Namespace``) can be rebuilt exactly.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.errors import PansegError

# Output channels of layer1..layer4 and blocks per layer of the torchvision ResNets detr supports.
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}
BACKBONE_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}
BOTTLENECK_BACKBONES = frozenset({"resnet50", "resnet101"})

# The mask head normalises with GroupNorm(8, c) at widths hidden+nheads, hidden/2, /4, /8, /16.
MASK_HEAD_GROUPS = 8

# Fields a state dict cannot tell (same shapes either way); nheads is among them only for detection models.
NOT_IN_WEIGHTS = ("dilation", "dropout", "aux_loss", "train_backbone")


@dataclass(frozen=True)
class DETRConfig:
    """Architecture of a DETR model; the defaults are detr's released COCO panoptic R50 model."""

    backbone: str = "resnet50"
    dilation: bool = False  # DC5: dilate layer4 instead of striding it (stride 16 instead of 32)
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_queries: int = 100
    num_classes: int = 250  # detr's rule: max category id + 1; one more logit is added for "no object"
    pre_norm: bool = False
    masks: bool = True  # panoptic model (DETRsegm) rather than the detector alone
    aux_loss: bool = True  # return the earlier decoder layers' predictions in training mode
    train_backbone: bool = True  # detr: lr_backbone > 0; False freezes the whole backbone

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise PansegError for a configuration detr's modules cannot be built with."""
        problems = []
        if self.backbone not in BACKBONE_CHANNELS:
            problems.append(f"backbone {self.backbone!r} is not one of {sorted(BACKBONE_CHANNELS)}")
        for name in ("hidden_dim", "nheads", "dim_feedforward", "num_queries", "num_classes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("enc_layers", "dec_layers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.dec_layers < 1:
            problems.append("dec_layers must be >= 1 (the heads read the decoder output)")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.hidden_dim % 4:
            problems.append(f"hidden_dim {self.hidden_dim} must be a multiple of 4 (sine encoding: sin/cos of x, y)")
        if self.nheads >= 1 and self.hidden_dim % self.nheads:
            problems.append(f"hidden_dim {self.hidden_dim} is not divisible by nheads {self.nheads}")
        groups = MASK_HEAD_GROUPS
        if self.masks and (self.hidden_dim % (16 * groups) or (self.hidden_dim + self.nheads) % groups):
            problems.append(
                f"the mask head (GroupNorm with {MASK_HEAD_GROUPS} groups) needs hidden_dim a multiple of "
                f"{16 * MASK_HEAD_GROUPS} and hidden_dim + nheads a multiple of {MASK_HEAD_GROUPS}; "
                f"got hidden_dim {self.hidden_dim}, nheads {self.nheads}"
            )
        if problems:
            raise PansegError("invalid model config: " + "; ".join(problems))

    @property
    def backbone_channels(self) -> tuple[int, int, int, int]:
        """Channels of the backbone's layer1..layer4 outputs (strides 4, 8, 16, 32)."""
        return BACKBONE_CHANNELS[self.backbone]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DETRConfig:
        """Inverse of :meth:`to_dict`; unknown keys or wrongly typed values are errors, missing keys take defaults."""
        if not isinstance(d, Mapping):
            raise PansegError(f"model config must be a dict, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_FIELD_TYPES))
        if unknown:
            raise PansegError(f"unknown model config keys: {', '.join(map(str, unknown))}")
        return cls(**{k: _coerce(k, v) for k, v in d.items()})

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> DETRConfig:
        """Build from detr-style flags (an argparse.Namespace or dict); flags that are absent or None keep defaults."""
        values = dict(vars(args) if not isinstance(args, Mapping) else args)
        picked = {k: values[k] for k in _FIELD_TYPES if values.get(k) is not None}
        if "train_backbone" not in picked and values.get("lr_backbone") is not None:
            picked["train_backbone"] = values["lr_backbone"] > 0
        picked.update(overrides)
        return cls.from_dict(picked)

    def replace(self, **changes: Any) -> DETRConfig:
        return self.from_dict({**self.to_dict(), **changes})


_FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(DETRConfig)}


def _coerce(key: str, value: Any) -> Any:
    want = _FIELD_TYPES[key]
    if want is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if want in (str, bool) and isinstance(value, want):
        return value
    raise PansegError(f"model config {key} must be {want.__name__}, got {value!r}")


def _has_prefix(keys: list[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _layer_count(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _infer_backbone(state_dict: Mapping[str, Any], keys: list[str], prefix: str) -> str:
    body = f"{prefix}backbone.0.body."
    blocks = tuple(_layer_count(keys, f"{body}layer{i}.") for i in range(1, 5))
    bottleneck = f"{body}layer1.0.conv3.weight" in state_dict
    for name, expected in BACKBONE_BLOCKS.items():
        if expected == blocks and (name in BOTTLENECK_BACKBONES) == bottleneck:
            return name
    kind = "bottleneck" if bottleneck else "basic-block"
    raise PansegError(
        f"state dict backbone ({kind} ResNet with {list(blocks)} blocks per stage) is none of {sorted(BACKBONE_BLOCKS)}"
    )


def config_from_state_dict(state_dict: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> DETRConfig:
    """Recover the configuration of a detr state dict (panoptic 'detr.'-prefixed layout or plain detection layout).

    Shapes determine everything except ``dilation``, ``dropout``, ``aux_loss``, ``train_backbone`` and, for a
    detection model, ``nheads`` (a panoptic model has it in the mask head's first width, hidden_dim + nheads);
    those come from ``overrides`` or the defaults (nheads: 8, or the largest of 4, 2, 1 dividing hidden_dim).
    An override that contradicts the weights is an error.
    """
    overrides = dict(overrides or {})
    keys = [str(k) for k in state_dict]
    masks = _has_prefix(keys, "mask_head.")
    prefix = "detr." if _has_prefix(keys, "detr.") else ""
    if masks and not prefix:
        raise PansegError("state dict has mask_head weights but no 'detr.'-prefixed detector weights")
    if prefix and not masks:
        raise PansegError("state dict has 'detr.'-prefixed weights but no mask_head weights")

    def shape(name: str) -> tuple[int, ...]:
        full = prefix + name
        if full not in state_dict:
            raise PansegError(f"not a DETR state dict: no {full!r}")
        return tuple(state_dict[full].shape)

    num_queries, hidden_dim = shape("query_embed.weight")
    enc_layers = _layer_count(keys, f"{prefix}transformer.encoder.layers.")
    dec_layers = _layer_count(keys, f"{prefix}transformer.decoder.layers.")
    if enc_layers:
        dim_feedforward = shape("transformer.encoder.layers.0.linear1.weight")[0]
    elif dec_layers:
        dim_feedforward = shape("transformer.decoder.layers.0.linear1.weight")[0]
    else:
        dim_feedforward = DETRConfig.dim_feedforward
    inferred: dict[str, Any] = {
        "backbone": _infer_backbone(state_dict, keys, prefix),
        "hidden_dim": hidden_dim,
        "enc_layers": enc_layers,
        "dec_layers": dec_layers,
        "dim_feedforward": dim_feedforward,
        "num_queries": num_queries,
        "num_classes": shape("class_embed.weight")[0] - 1,
        "pre_norm": f"{prefix}transformer.encoder.norm.weight" in state_dict,
        "masks": masks,
    }
    if masks:
        inferred["nheads"] = tuple(state_dict["mask_head.lay1.weight"].shape)[0] - hidden_dim
    in_channels = shape("input_proj.weight")[1]
    if in_channels != BACKBONE_CHANNELS[inferred["backbone"]][3]:
        raise PansegError(f"state dict input_proj takes {in_channels} channels, {inferred['backbone']} gives "
                          f"{BACKBONE_CHANNELS[inferred['backbone']][3]}")

    contradictions = [f"{k}={overrides[k]!r} (weights say {v!r})"
                      for k, v in inferred.items() if k in overrides and overrides[k] != v]
    if contradictions:
        raise PansegError("model settings contradict the weights: " + ", ".join(contradictions))
    values = {**overrides, **inferred}
    if "nheads" not in values:
        values["nheads"] = next(h for h in (8, 4, 2, 1) if hidden_dim % h == 0)
    return DETRConfig.from_dict(values)

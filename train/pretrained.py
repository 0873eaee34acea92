"""Starting a training run from released weights: a DETR checkpoint (``--pretrained``) or ImageNet ResNet weights
(``--backbone_weights``), from a file or a URL.

Fine-tuning detr's COCO release on one's own classes is the usual recipe: every tensor whose name and shape match is
loaded, the class head (and the query embeddings, with another ``--num_queries``) keep their fresh initialization
when their shape differs, and one summary line says what happened. Detection and panoptic checkpoints load into
either kind of model (detr's ``detr.`` prefix is added or removed). Files are read by
:func:`train.checkpoint.load_checkpoint` (file-kind sniffing, ``weights_only`` with the Namespace allow-list); URLs are
downloaded once into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``, hash-checked when the file name carries
one, as ``torch.hub.load_state_dict_from_url(check_hash=True)`` does) and then read the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from runtime.errors import PansegError
from train.checkpoint import load_checkpoint

DETR_PREFIX = "detr."
BACKBONE_BODY = "backbone.0.body."
# Tensors whose shape follows a training choice, not the architecture: a mismatch means "start these fresh".
REINITIALIZABLE = ("class_embed.weight", "class_embed.bias", "query_embed.weight")
# What every DETR state dict holds, detection or panoptic (after removing the 'detr.' prefix).
DETR_SIGNATURE = ("class_embed.weight", "query_embed.weight", "input_proj.weight")
RESNET_SIGNATURE = ("conv1.weight", "layer1.0.conv1.weight")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's HASH_REGEX: resnet50-0676ba61.pth -> 0676ba61
MASK_HEAD = ("mask_head.", "bbox_attention.")  # what a panoptic checkpoint has beyond the detector
_SHOWN = 3


def is_url(source: str) -> bool:
    return urlparse(str(source)).scheme in ("http", "https", "file")


def cached_download(url: str) -> Path:
    """The file behind ``url`` in torch.hub's download cache, downloaded (and hash-checked) on first use."""
    name = os.path.basename(urlparse(url).path)
    if not name:
        raise PansegError(f"{url}: the URL names no file")
    target = Path(torch.hub.get_dir()) / "checkpoints" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    match = _HASH_IN_NAME.search(name)
    print(f"downloading {url} to {target}", flush=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1) if match else None, progress=False)
    except (URLError, OSError) as exc:
        raise PansegError(f"{url}: download failed ({getattr(exc, 'reason', exc)})") from None
    except RuntimeError as exc:  # torch.hub's hash mismatch ("invalid hash value ...")
        raise PansegError(f"{url}: download is corrupt ({exc})") from None
    return target


def read_weights(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, name for messages) of a checkpoint file or URL."""
    path = cached_download(str(source)) if is_url(str(source)) else Path(source)
    return load_checkpoint(path)["model"], str(path)


@dataclass
class LoadSummary:
    """What a partial load did, tensor by tensor (model-side names)."""

    loaded: list[str] = field(default_factory=list)
    reinitialized: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # name, file, model shape
    not_in_file: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # in the file, no such tensor in the model

    def line(self, what: str, source: str) -> str:
        parts = [f"{what} {source}: loaded {len(self.loaded)} tensors"]
        reinit = ", ".join(f"{n} {f}->{m}" for n, f, m in self.reinitialized)
        parts.append(f"re-initialized {len(self.reinitialized)}" + (f" ({reinit})" if reinit else ""))
        parts.append(f"kept initialized {len(self.not_in_file)} not in the file{_examples(self.not_in_file)}")
        parts.append(f"ignored {len(self.ignored)} not in the model{_examples(self.ignored)}")
        return ", ".join(parts)


def _examples(names: list[str]) -> str:
    if not names:
        return ""
    more = ", ..." if len(names) > _SHOWN else ""
    return f" ({', '.join(names[:_SHOWN])}{more})"


def _is_panoptic(names: Mapping[str, object]) -> bool:
    return any(k.startswith(DETR_PREFIX) for k in names)


def to_model_names(state_dict: Mapping[str, torch.Tensor], model_panoptic: bool) -> dict[str, torch.Tensor]:
    """A detection or panoptic DETR state dict under the names of a detection or panoptic model."""
    if model_panoptic and not _is_panoptic(state_dict):
        return {DETR_PREFIX + k: v for k, v in state_dict.items()}
    if not model_panoptic and _is_panoptic(state_dict):  # the mask head has no place in a detector: ignored
        return {(k[len(DETR_PREFIX):] if k.startswith(DETR_PREFIX) else k): v for k, v in state_dict.items()}
    return dict(state_dict)


def load_matching(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str,
                  reinitializable: tuple[str, ...] = REINITIALIZABLE) -> LoadSummary:
    """Copy every tensor of ``weights`` whose name and shape match into ``model``; a shape mismatch is allowed only for
    names ending in ``reinitializable`` (they keep the model's initialization), any other is an error."""
    target = model.state_dict()
    summary = LoadSummary()
    wrong = []
    for name, value in weights.items():
        if name.endswith(".num_batches_tracked") and name not in target:
            continue  # a regular BatchNorm's step counter; FrozenBatchNorm2d has none
        if name not in target:
            summary.ignored.append(name)
        elif value.shape == target[name].shape:
            summary.loaded.append(name)
        elif name.endswith(reinitializable):
            summary.reinitialized.append((name, list(value.shape), list(target[name].shape)))
        else:
            wrong.append(f"{name} {list(value.shape)} vs {list(target[name].shape)}")
    if wrong:
        more = f", ... ({len(wrong)} in all)" if len(wrong) > _SHOWN else ""
        raise PansegError(f"{source}: weights do not fit this model (another backbone or size? match --backbone, "
                          f"--hidden_dim, --dim_feedforward ... to the checkpoint): wrong shape (file vs model): "
                          f"{', '.join(wrong[:_SHOWN])}{more}")
    summary.not_in_file = [k for k in target if k not in weights]
    with torch.no_grad():
        for name in summary.loaded:
            target[name].copy_(weights[name])  # state_dict() tensors share storage with the model's
    return summary


def _refuse_extra(source: str, extra: list[str]) -> None:
    """Tensors of the file that this model lacks mean another architecture (a deeper ResNet, more layers)."""
    if extra:
        raise PansegError(f"{source}: weights do not fit this model: {len(extra)} tensors have no place in it"
                          f"{_examples(extra)} (another backbone or more layers? match --backbone, --enc_layers, "
                          "--dec_layers ... to the checkpoint)")


def _missing(names: Mapping[str, object], signature: tuple[str, ...]) -> list[str]:
    return [s for s in signature if not any(k == s or k.endswith("." + s) for k in names)]


def load_pretrained(model: nn.Module, source: str | os.PathLike, report: bool = True) -> LoadSummary:
    """``--pretrained``: a DETR checkpoint (detr's release, detection or panoptic, or ours) into ``model``."""
    weights, name = read_weights(source)
    if _missing(weights, DETR_SIGNATURE):
        hint = " (ImageNet ResNet weights go to --backbone_weights)" if not _missing(weights, RESNET_SIGNATURE) else ""
        raise PansegError(f"{name}: not a DETR checkpoint: no {', '.join(_missing(weights, DETR_SIGNATURE))} among "
                          f"its {len(weights)} tensors (e.g. {', '.join(list(weights)[:_SHOWN])}){hint}")
    summary = load_matching(model, to_model_names(weights, _is_panoptic(model.state_dict())), name)
    _refuse_extra(name, [k for k in summary.ignored if not k.startswith(MASK_HEAD)])
    if report:
        print(summary.line("--pretrained", name), flush=True)
    return summary


def load_backbone_weights(model: nn.Module, source: str | os.PathLike, report: bool = True) -> LoadSummary:
    """``--backbone_weights``: torchvision ImageNet ResNet weights (``conv1.weight``, ``layer1.0...``; ``fc.*`` is
    ignored) into the DETR backbone, frozen BatchNorm statistics included. Nothing may be re-initialized."""
    weights, name = read_weights(source)
    if _missing(weights, RESNET_SIGNATURE) or any(k.startswith(BACKBONE_BODY) or "." + BACKBONE_BODY in k
                                                  for k in weights):
        hint = " (a DETR checkpoint goes to --pretrained)" if not _missing(weights, DETR_SIGNATURE) else ""
        raise PansegError(f"{name}: not torchvision ResNet weights: expected conv1.weight and layer1.0.* "
                          f"(found e.g. {', '.join(list(weights)[:_SHOWN])}){hint}")
    prefix = (DETR_PREFIX if _is_panoptic(model.state_dict()) else "") + BACKBONE_BODY
    renamed = {prefix + k: v for k, v in weights.items()}
    summary = load_matching(model, renamed, name, reinitializable=())
    summary.not_in_file = [k for k in summary.not_in_file if k.startswith(prefix)]
    summary.ignored = [k[len(prefix):] for k in summary.ignored]
    _refuse_extra(name, [k for k in summary.ignored if not k.startswith("fc.")])
    if summary.not_in_file:
        raise PansegError(f"{name}: not weights of this backbone: {len(summary.not_in_file)} of its tensors are "
                          f"missing{_examples(summary.not_in_file)}")
    if report:
        print(summary.line("--backbone_weights", name), flush=True)
    return summary

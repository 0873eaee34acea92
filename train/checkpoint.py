"""Safe checkpoint loading and atomic saving, in detr's layout.

detr saves ``{'model': state_dict, 'optimizer', 'lr_scheduler', 'epoch', 'args'}`` with ``args`` an
argparse.Namespace. We read those (and bare state dicts, and ``{'model'}``-only releases) with
``torch.load(weights_only=True)``: unpickling a checkpoint can otherwise run arbitrary code, so only tensors, plain
Python values and argparse.Namespace are allowed. Our own checkpoints add ``'config'`` (a plain dict of
:class:`DETRConfig`) and store ``args`` as a plain dict, so they need no allow-list at all.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime import filekind
from runtime.atomic import atomic_open
from runtime.errors import PansegError
from train.models import build_model
from train.models.backbone import FrozenBatchNorm2d
from train.models.config import NOT_IN_WEIGHTS, DETRConfig, config_from_state_dict

_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.dtype, torch.device)
_SHOWN = 3  # how many offending keys an error message lists


def _unsafe_global(exc: BaseException) -> str | None:
    """The module.name a weights_only load refused, from torch's error text (None if it failed for another reason)."""
    for e in (exc, exc.__context__):
        m = re.search(r"GLOBAL ((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*)", str(e or ""))
        if m:
            return m.group(1)
    return None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved from a DistributedDataParallel wrapper carry a 'module.' prefix on every key."""
    if all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely; always returns a dict whose 'model' is a state dict (and 'args', if any, a dict)."""
    path = Path(path)
    filekind.refuse_non_checkpoint(path)  # names a wrong file by its first bytes, before torch.load spends seconds
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = _unsafe_global(exc)
        if name is not None:
            raise PansegError(
                f"{path}: refused to load: it would import {name}, and only tensors, plain Python values and "
                "argparse.Namespace are allowed (a pickled object, or a malicious file)"
            ) from None
        raise PansegError(f"{path}: {filekind.NOT_READABLE_CHECKPOINT}") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError):
        # torch's text here is an internal detail (a byte offset, a record name) that helps no user.
        raise PansegError(f"{path}: {filekind.NOT_READABLE_CHECKPOINT}") from None

    if isinstance(obj, Mapping) and "model" in obj:
        ckpt = dict(obj)
    elif _is_state_dict(obj):
        ckpt = {"model": obj}
    else:
        found = f"dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise PansegError(f"{path}: not a checkpoint: expected a state dict or a dict with a 'model' entry, "
                          f"found a {found}")
    if not _is_state_dict(ckpt["model"]):
        raise PansegError(f"{path}: not a checkpoint: its 'model' entry is not a state dict of tensors")
    ckpt["model"] = _strip_ddp_prefix(ckpt["model"])
    if isinstance(ckpt.get("args"), argparse.Namespace):
        ckpt["args"] = vars(ckpt["args"])
    return ckpt


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, (torch.Tensor, *_PLAIN_SCALARS)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_plain(k, f"{where} key {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise PansegError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only "
                      "tensors and plain Python values (dict, list, str, numbers, bool, None)")


def save_checkpoint(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file, then rename): an interrupted save leaves the old file intact.

    A DETRConfig under 'config' and a Namespace under 'args' are stored as dicts; anything else that is not a tensor
    or a plain value is refused, so the file loads with ``weights_only=True`` and no allow-list.
    """
    obj = dict(obj)
    if isinstance(obj.get("config"), DETRConfig):
        obj["config"] = obj["config"].to_dict()
    if isinstance(obj.get("args"), argparse.Namespace):
        obj["args"] = vars(obj["args"])
    try:
        _check_plain(obj, "checkpoint")
    except PansegError as exc:
        raise PansegError(f"{path}: not saved: {exc}") from None
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def _config_hints(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """Settings the weights cannot tell, from the checkpoint's own 'config' (all of it) or detr's 'args'."""
    if isinstance(ckpt.get("config"), Mapping):
        return dict(ckpt["config"])
    args = ckpt.get("args")
    if not isinstance(args, Mapping):
        return {}
    hints = {k: args[k] for k in (*NOT_IN_WEIGHTS, "nheads") if args.get(k) is not None}
    if "train_backbone" not in hints and isinstance(args.get("lr_backbone"), int | float):
        hints["train_backbone"] = args["lr_backbone"] > 0
    return hints


def _frozen_bn_prefixes(model: nn.Module) -> set[str]:
    return {f"{name}." for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}


def check_state_dict_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Problems a strict load would hit, one short phrase each (empty list: it fits)."""
    expected = model.state_dict()
    frozen = _frozen_bn_prefixes(model)
    given = {k: v for k, v in state_dict.items()
             if not (k.endswith(".num_batches_tracked") and k[: -len("num_batches_tracked")] in frozen)}
    problems = []
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [f"{k} {list(given[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
             if k in given and given[k].shape != v.shape]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", wrong)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > _SHOWN else ""
            problems.append(f"{label}: {', '.join(items[:_SHOWN])}{more}")
    return problems


def load_model_from_checkpoint(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None
                               ) -> tuple[nn.Module, DETRConfig, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with and load its weights strictly; the model is in eval mode.

    The configuration comes from the weights' shapes, completed by the checkpoint's 'config' or detr 'args' and then
    by ``overrides`` (e.g. ``{'dilation': True}`` for a DC5 release that carries no args).
    """
    ckpt = load_checkpoint(path)
    try:
        config = config_from_state_dict(ckpt["model"], {**_config_hints(ckpt), **(overrides or {})})
    except PansegError as exc:
        raise PansegError(f"{path}: {exc}") from None
    model = build_model(config)
    problems = check_state_dict_fits(model, ckpt["model"])
    if problems:
        raise PansegError(f"{path}: weights do not fit a {config.backbone} model with {config.num_classes} classes, "
                          f"{config.num_queries} queries, masks={config.masks}: " + "; ".join(problems))
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    return model, config, ckpt

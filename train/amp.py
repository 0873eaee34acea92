"""Mixed precision: which autocast dtype a device trains in, and float32 outputs for the loss.

On CUDA, ``--amp`` is detr's float16 autocast with loss scaling. On a CPU with native bfloat16 (AVX512-BF16 or
AMX, which oneDNN uses for convolutions and matrix products) it is bfloat16 autocast: about twice as fast as
float32 for the demo model and needs no loss scaling, since bfloat16 keeps float32's exponent range. Weights,
optimizer state, the matcher and the losses stay float32.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.errors import PansegError


def cpu_supports_bfloat16() -> bool:
    """True when oneDNN has native bfloat16 kernels here (otherwise bfloat16 is emulated and slower than float32)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(device: str, amp: bool) -> torch.dtype | None:
    """The dtype ``--amp`` trains in on ``device``, or None for plain float32."""
    if not amp:
        return None
    if torch.device(device).type == "cuda":
        return torch.float16
    if not cpu_supports_bfloat16():
        raise PansegError("--amp on the CPU needs native bfloat16 (AVX512-BF16 or AMX); this CPU has neither")
    return torch.bfloat16


def to_float32(value: Any) -> Any:
    """Cast every floating tensor in nested dicts/lists/tuples to float32 (autocast outputs may be half)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: to_float32(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_float32(v) for v in value)
    return value

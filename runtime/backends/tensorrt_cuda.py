"""The CUDA runtime calls the TensorRT backend makes, through cuda-python (``cuda.bindings.runtime``), kept thin.

Why a module of its own: every call returns ``(error, *values)`` and must be checked; the current device is per host
thread, so each entry point re-selects its backend's device (:func:`use_device`); memory must be freed even when
``close()`` is never called (:class:`CudaResources`, released by a ``weakref.finalize`` that holds no reference to the
backend); and the bytes that cross between host and device are counted (:class:`TransferCounter`) so benchmarks can
show them. The CPU tests run all of this against a fake ``cudart`` (ctypes host memory standing in for the device).

cuda-python is imported when a backend is created, never at module import, so ``import runtime`` works without it.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import PansegError
from runtime.trt_sidecar import GpuInfo

UNAVAILABLE = "TensorRT backend not available"
INSTALL_HINT = ("install panseg[gpu-cu13] or panseg[gpu-cu12] (TensorRT and cuda-python for the driver's CUDA) on a "
                "machine with an NVIDIA GPU, or run the .onnx model with onnxruntime")
INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver
DRIVER_HINT = ("no NVIDIA driver, or one older than the CUDA that cuda-python/TensorRT were built for: on a CUDA 12 "
               "driver install the CUDA 12 builds (panseg[gpu-cu12]), or update the driver (CUDA 13 needs 580+)")


def import_cudart() -> Any:
    """cuda-python's CUDA runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` in cuda-python < 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise PansegError(f"{UNAVAILABLE}: cuda-python is not installed ({exc}); {INSTALL_HINT}") from exc
    return cudart


def cuda_check(cudart: Any, result: Any, what: str) -> Any:
    """cuda-python calls return ``(error, *values)``: raise on an error, else return the value(s)."""
    if isinstance(result, tuple):
        error, values = result[0], result[1:]
    else:
        error, values = result, ()
    code = int(getattr(error, "value", error))
    if code != 0:
        try:
            name = cudart.cudaGetErrorName(error)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001 - the name is only decoration for the message
            name = f"error {code}"
        hint = f" ({DRIVER_HINT})" if code == INSUFFICIENT_DRIVER else ""
        raise PansegError(f"CUDA {what} failed: {name}{hint}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def use_device(cudart: Any, device: int) -> None:
    """Make ``device`` current for this host thread (CUDA keeps the current device per thread)."""
    cuda_check(cudart, cudart.cudaSetDevice(device), f"cudaSetDevice({device})")


def current_gpu(cudart: Any | None = None, device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (made the current device)."""
    cudart = cudart or import_cudart()
    use_device(cudart, device)
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return GpuInfo(str(name).strip(), (int(props.major), int(props.minor)))


@dataclass
class TransferCounter:
    """Bytes and copies that crossed between host and device (and device-to-device copies, which do not cross)."""

    h2d_bytes: int = 0
    h2d_copies: int = 0
    d2h_bytes: int = 0
    d2h_copies: int = 0
    d2d_bytes: int = 0
    d2d_copies: int = 0

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, 0)

    @property
    def crossed_bytes(self) -> int:
        """Host <-> device bytes, both directions."""
        return self.h2d_bytes + self.d2h_bytes

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Buffer:
    """One tensor's device allocation and, when the host must see the tensor, a pinned host allocation.

    Allocated once, at the size of the largest tensor the engine's profile allows (the caller passes it): no call
    ever reallocates, so no call pays for a ``cudaFree`` (a device-wide sync) and a ``cudaMallocHost``."""

    def __init__(self, cudart: Any, capacity: int) -> None:
        self._cudart = cudart
        self.capacity = max(int(capacity), 1)  # an empty tensor still needs a valid address
        self.device = 0
        self.host = 0

    def device_address(self) -> int:
        if not self.device:
            self.device = int(cuda_check(self._cudart, self._cudart.cudaMalloc(self.capacity),
                                         f"cudaMalloc({self.capacity})"))
        return self.device

    def host_address(self) -> int:
        if not self.host:
            self.host = int(cuda_check(self._cudart, self._cudart.cudaMallocHost(self.capacity),
                                       f"cudaMallocHost({self.capacity})"))
        return self.host

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy view of the pinned host buffer (valid until the buffer is freed)."""
        count = int(np.prod(shape, dtype=np.int64))
        raw = (ctypes.c_uint8 * self.capacity).from_address(self.host_address())
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.device:
            cuda_check(self._cudart, self._cudart.cudaFree(self.device), "cudaFree")
            self.device = 0
        if self.host:
            cuda_check(self._cudart, self._cudart.cudaFreeHost(self.host), "cudaFreeHost")
            self.host = 0


class CudaResources:
    """Everything a backend holds on the device: its stream and buffers. Freed by ``release`` (from ``close()`` or
    from the backend's finalizer), which must not reference the backend itself."""

    def __init__(self, cudart: Any, device: int) -> None:
        self.cudart = cudart
        self.device = device
        self.lock = threading.Lock()  # one call at a time: the buffers are shared state
        self.counter = TransferCounter()
        self.buffers: dict[str, Buffer] = {}
        self.stream: Any = None
        self.stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    def copy(self, dst: int, src: int, nbytes: int, kind: str, what: str) -> None:
        """``cudaMemcpyAsync`` on this backend's stream; ``kind`` is "h2d", "d2h" or "d2d" (counted)."""
        if nbytes <= 0:
            return
        cudart = self.cudart
        kinds = {"h2d": cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                 "d2h": cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                 "d2d": cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice}
        cuda_check(cudart, cudart.cudaMemcpyAsync(dst, src, nbytes, kinds[kind], self.stream), what)
        counter = self.counter
        setattr(counter, f"{kind}_bytes", getattr(counter, f"{kind}_bytes") + nbytes)
        setattr(counter, f"{kind}_copies", getattr(counter, f"{kind}_copies") + 1)

    def synchronize(self) -> None:
        cuda_check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def release(self) -> list[str]:
        """Free the buffers and the stream (best effort); returns the problems met, for the caller to report."""
        problems = []
        cudart = self.cudart
        try:
            use_device(cudart, self.device)
            if self.stream is not None:
                cudart.cudaStreamSynchronize(self.stream)
        except PansegError as exc:
            problems.append(str(exc))
        for name, buffer in self.buffers.items():
            try:
                buffer.free()
            except PansegError as exc:  # best effort: closing must not hide the caller's own error
                problems.append(f"freeing the buffers of {name}: {exc}")
        self.buffers.clear()
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        return problems

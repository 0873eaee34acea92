"""TensorRT backend: a ``.plan`` built by ``python -m export.tensorrt``, run with TensorRT's Python API and cuda-python.

Loading order, so that every refusal is a clear message rather than a TensorRT log line or a crash:
side file (``model.plan.json``) -> plan digest -> TensorRT version and GPU compute capability against the side file
(runtime/trt_sidecar.py) -> deserialize -> execution context.

Per batch: input shapes are checked against the engine's optimization profile, set with ``set_input_shape``; inputs go
through pinned host buffers to device buffers (allocated with cuda-python, grown when a larger batch arrives, reused
otherwise); ``execute_async_v3`` runs on the backend's own stream; only the outputs the caller asks for are copied
back. TensorRT and cuda-python (``cuda.bindings.runtime``, as in NVIDIA's samples since TensorRT 10.14; pycuda is not
used: it has no wheels) are imported when a backend is created, never at module import, so the runtime imports on
machines without a GPU.

This module has not run on a GPU in this repository's CI; tests/test_tensorrt_gpu.py exercises it where one exists.
"""

from __future__ import annotations

import ctypes
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.errors import PansegError
from runtime.trt_sidecar import (
    GpuInfo,
    TensorProfile,
    check_engine_compatible,
    check_plan_digest,
    check_shapes_in_profile,
    format_shape,
    read_engine_sidecar,
)

UNAVAILABLE = "TensorRT backend not available"
INSTALL_HINT = ("install panseg[gpu] (tensorrt, cuda-python) on a machine with an NVIDIA GPU, or run the .onnx model "
                "with onnxruntime")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a one-line error saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise PansegError(f"{UNAVAILABLE}: tensorrt is not installed ({exc}); {INSTALL_HINT}") from exc
    return tensorrt


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
        raise PansegError(f"CUDA {what} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def current_gpu(cudart: Any | None = None, device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (made the current device)."""
    cudart = cudart or import_cudart()
    cuda_check(cudart, cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return GpuInfo(str(name).strip(), (int(props.major), int(props.minor)))


class _Buffer:
    """A device allocation and, when the host needs to see the tensor, a pinned host allocation of the same size."""

    def __init__(self, cudart: Any) -> None:
        self._cudart = cudart
        self.device = 0
        self.device_bytes = 0
        self.host = 0
        self.host_bytes = 0

    def ensure(self, nbytes: int, host: bool) -> None:
        nbytes = max(int(nbytes), 1)  # an empty tensor still needs a valid address
        cudart = self._cudart
        if nbytes > self.device_bytes:
            self._free_device()
            self.device = int(cuda_check(cudart, cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))
            self.device_bytes = nbytes
        if host and nbytes > self.host_bytes:
            self._free_host()
            self.host = int(cuda_check(cudart, cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
            self.host_bytes = nbytes

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy view of the pinned host buffer (valid until the buffer grows or is freed)."""
        count = int(np.prod(shape, dtype=np.int64))
        raw = (ctypes.c_uint8 * self.host_bytes).from_address(self.host)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def _free_device(self) -> None:
        if self.device:
            cuda_check(self._cudart, self._cudart.cudaFree(self.device), "cudaFree")
            self.device, self.device_bytes = 0, 0

    def _free_host(self) -> None:
        if self.host:
            cuda_check(self._cudart, self._cudart.cudaFreeHost(self.host), "cudaFreeHost")
            self.host, self.host_bytes = 0, 0

    def free(self) -> None:
        self._free_device()
        self._free_host()


@dataclass(frozen=True)
class _Tensor:
    name: str
    is_input: bool
    trt_dtype: Any
    dtype: np.dtype | None  # None: no numpy equivalent (bf16, fp8, ...)
    itemsize: int
    shape: tuple[int, ...]  # the engine's declared dims, -1 where dynamic


class TensorRTBackend(Backend):
    """A TensorRT plan with its ``.plan.json`` side file, on one GPU.

    device: CUDA device index. The plan must have been built for this device's compute capability (or be
        hardware-compatible) by this TensorRT version (or be version-compatible); otherwise loading is refused.
    check_digest: compare the plan's sha256 with the side file's (catches a side file left over from another build).
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, device: int = 0, check_digest: bool = True) -> None:
        super().__init__(path)
        trt = import_tensorrt()
        cudart = import_cudart()
        self._trt, self._cudart = trt, cudart
        if not self.path.is_file():
            what = "is not a file" if self.path.exists() else "no such engine file"
            raise PansegError(f"{self.path}: {what}")
        self._metadata, self.engine_info = read_engine_sidecar(self.path)
        plan = self.path.read_bytes()
        if check_digest:
            check_plan_digest(self.engine_info, plan, self.path)
        self.gpu = current_gpu(cudart, device)
        for warning in check_engine_compatible(self.engine_info, trt.__version__, self.gpu, self.path):
            warnings.warn(warning, RuntimeWarning, stacklevel=2)

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.engine_info.version_compatible:
            # A version-compatible plan carries TensorRT's lean runtime as host code; allow it for this trusted plan.
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise PansegError(f"{self.path}: TensorRT {trt.__version__} could not deserialize the plan (see its log "
                              "above)")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise PansegError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        self._tensors = [self._describe(self._engine.get_tensor_name(i)) for i in range(self._engine.num_io_tensors)]
        self._profiles = self._input_profiles()
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers = {t.name: _Buffer(cudart) for t in self._tensors}

    # -- engine description ---------------------------------------------------------------------------------------

    def _describe(self, name: str) -> _Tensor:
        trt, engine = self._trt, self._engine
        trt_dtype = engine.get_tensor_dtype(name)
        try:
            dtype: np.dtype | None = np.dtype(trt.nptype(trt_dtype))
        except TypeError:
            dtype = None
        itemsize = dtype.itemsize if dtype is not None else int(trt_dtype.itemsize)
        return _Tensor(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, trt_dtype, dtype, itemsize,
                       tuple(int(d) for d in engine.get_tensor_shape(name)))

    def _input_profiles(self) -> dict[str, TensorProfile]:
        """The engine's own profile 0 for every dynamic input (the side file's copy is for humans and tools)."""
        profiles = {}
        for t in self._tensors:
            if t.is_input and any(d < 0 for d in t.shape):
                lo, opt, hi = self._engine.get_tensor_profile_shape(t.name, 0)
                profiles[t.name] = TensorProfile(tuple(lo), tuple(opt), tuple(hi))
        return profiles

    def _spec(self, tensor: _Tensor) -> TensorSpec:
        """Dynamic dims take the symbolic names the ONNX export declared (e.g. "batch"), when the side file has them."""
        group = "inputs" if tensor.is_input else "outputs"
        declared = []
        try:
            declared = json.loads(self._metadata.get(group, "{}")).get(tensor.name, {}).get("shape", [])
        except (json.JSONDecodeError, AttributeError):
            pass
        dims = []
        for axis, d in enumerate(tensor.shape):
            if d >= 0:
                dims.append(d)
            else:
                name = declared[axis] if axis < len(declared) and isinstance(declared[axis], str) else None
                dims.append(name)
        return TensorSpec(tensor.name, tensor.dtype, tuple(dims))

    def input_specs(self) -> list[TensorSpec]:
        return [self._spec(t) for t in self._tensors if t.is_input]

    def output_specs(self) -> list[TensorSpec]:
        return [self._spec(t) for t in self._tensors if not t.is_input]

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    @property
    def profiles(self) -> dict[str, TensorProfile]:
        """Input name -> the shapes the engine accepts."""
        return dict(self._profiles)

    # -- inference -------------------------------------------------------------------------------------------------

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        check_shapes_in_profile({n: a.shape for n, a in feeds.items()}, self._profiles, self.path)
        trt_check = self._trt_check
        context, cudart, stream = self._context, self._cudart, self._stream
        for t in self._tensors:
            if t.is_input:
                trt_check(context.set_input_shape(t.name, tuple(feeds[t.name].shape)),
                          f"set_input_shape({t.name}, {format_shape(feeds[t.name].shape)})")
        wanted = set(outputs)
        shapes: dict[str, tuple[int, ...]] = {}
        for t in self._tensors:
            shape = (tuple(feeds[t.name].shape) if t.is_input
                     else tuple(int(d) for d in context.get_tensor_shape(t.name)))
            if any(d < 0 for d in shape):
                raise PansegError(f"{self.path}: output {t.name} has a data-dependent shape {shape}, which this "
                                  "backend does not support")
            if not t.is_input and t.name in wanted and t.dtype is None:
                raise PansegError(f"{self.path}: output {t.name} has type {t.trt_dtype}, which numpy cannot hold")
            shapes[t.name] = shape
            buffer = self._buffers[t.name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * t.itemsize
            buffer.ensure(nbytes, host=t.is_input or t.name in wanted)
            trt_check(context.set_tensor_address(t.name, buffer.device), f"set_tensor_address({t.name})")
            if t.is_input:
                array = feeds[t.name]
                np.copyto(buffer.host_array(shape, array.dtype), array)
                cuda_check(cudart, cudart.cudaMemcpyAsync(buffer.device, buffer.host, array.nbytes,
                                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                           f"copy of input {t.name} to the GPU")
        trt_check(context.execute_async_v3(int(stream)), "execute_async_v3")
        results: dict[str, np.ndarray] = {}
        for name in outputs:
            t = next(x for x in self._tensors if x.name == name)
            buffer = self._buffers[name]
            assert t.dtype is not None
            host = buffer.host_array(shapes[name], t.dtype)
            cuda_check(cudart, cudart.cudaMemcpyAsync(buffer.host, buffer.device, host.nbytes,
                                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                       f"copy of output {name} from the GPU")
            results[name] = host
        cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        # The pinned buffers are reused by the next call: hand out copies.
        return {name: np.array(array, copy=True) for name, array in results.items()}

    def _trt_check(self, ok: Any, what: str) -> None:
        if ok is False:
            raise PansegError(f"{self.path}: TensorRT {what} failed (see its log above)")

    # -- release ---------------------------------------------------------------------------------------------------

    def _release(self) -> None:
        # Context before engine before runtime (each needs the next alive); buffers once nothing can use them.
        cudart = self._cudart
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamSynchronize(self._stream)
        self._context = None
        self._engine = None
        self._runtime = None
        for name, buffer in getattr(self, "_buffers", {}).items():
            try:
                buffer.free()
            except PansegError as exc:  # best effort: closing must not hide the caller's own error
                warnings.warn(f"{self.path}: freeing the buffers of {name}: {exc}", RuntimeWarning, stacklevel=3)
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None


"""TensorRT backend: a ``.plan`` built by ``python -m export.tensorrt``, run with TensorRT's Python API and cuda-python.

Loading order, so that every refusal is a clear message rather than a TensorRT log line or a crash:
side file (``model.plan.json``) -> plan digest -> TensorRT version and GPU compute capability against the side file
(runtime/trt_sidecar.py) -> deserialize -> execution context.

Buffers: one device buffer per tensor, allocated on first use at the largest size the engine's optimization profile
allows (``get_max_output_size`` where TensorRT has it, else the output shapes at the profile's maximum inputs), so no
call reallocates; pinned host buffers only for the tensors that cross to or from the host. Per call: the device is
made current for the calling thread, input shapes are checked against the profile and set, inputs go host -> pinned
-> device, ``execute_async_v3`` runs on the backend's own stream, and only the requested outputs come back.
:meth:`TensorRTBackend.execute` also takes inputs that already live on the device (the query-sparse pair's hand-off,
runtime/backends/tensorrt_pair.py). Memory is freed by ``close()`` or, when that is never called, by a finalizer.
The CUDA calls themselves are in runtime/backends/tensorrt_cuda.py.

TensorRT and cuda-python (``cuda.bindings.runtime``; pycuda is not used: it has no wheels) are imported when a backend
is created, never at module import, so the runtime imports on machines without a GPU. The CPU tests run this module
against a fake TensorRT engine and a fake ``cudart``; tests/test_tensorrt_gpu.py runs it on a GPU where one exists.
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.backends.tensorrt_cuda import (
    INSTALL_HINT,
    UNAVAILABLE,
    Buffer,
    CudaResources,
    TransferCounter,
    cuda_check,
    current_gpu,
    import_cudart,
    use_device,
)
from runtime.errors import PansegError
from runtime.trt_sidecar import (
    TensorProfile,
    check_engine_compatible,
    check_plan_digest,
    check_shapes_in_profile,
    format_shape,
    read_engine_sidecar,
)

__all__ = ["DeviceTensor", "TensorRTBackend", "cuda_check", "current_gpu", "import_cudart", "import_tensorrt"]


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a one-line error saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise PansegError(f"{UNAVAILABLE}: tensorrt is not installed ({exc}); {INSTALL_HINT}") from exc
    return tensorrt


@dataclass(frozen=True)
class _Tensor:
    name: str
    is_input: bool
    trt_dtype: Any
    dtype: np.dtype | None  # None: no numpy equivalent (bf16, fp8, ...)
    itemsize: int
    shape: tuple[int, ...]  # the engine's declared dims, -1 where dynamic


@dataclass(frozen=True)
class DeviceTensor:
    """A tensor already on the device: where it is and its shape (its type is the engine's)."""

    address: int
    shape: tuple[int, ...]


def _release_resources(resources: CudaResources, source: str) -> None:
    """The finalizer (and ``close()``): free the device memory; never raises (it may run at interpreter exit)."""
    try:
        problems = resources.release()
    except Exception as exc:  # noqa: BLE001 - e.g. cuda-python already torn down at exit
        problems = [f"releasing CUDA memory: {exc}"]
    for problem in problems:
        warnings.warn(f"{source}: {problem}", RuntimeWarning, stacklevel=2)


class TensorRTBackend(Backend):
    """A TensorRT plan with its ``.plan.json`` side file, on one GPU.

    device: CUDA device index, made current for the calling thread on every call (so a call from any thread, or two
        backends on two GPUs, use the right one). The plan must have been built for this device's compute capability
        (or be hardware-compatible) by this TensorRT version (or be version-compatible); otherwise loading is refused.
    check_digest: compare the plan's sha256 with the side file's (catches a side file left over from another build).
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, device: int = 0, check_digest: bool = True) -> None:
        super().__init__(path)
        trt = import_tensorrt()
        cudart = import_cudart()
        self._trt, self._cudart = trt, cudart
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            raise PansegError(f"{self.path}: the CUDA device must be an index 0, 1, ..., got {device!r}")
        self.device = device
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
        self._tensors = {t.name: t for t in (self._describe(self._engine.get_tensor_name(i))
                                             for i in range(self._engine.num_io_tensors))}
        self._profiles = self._input_profiles()
        self._capacity = self._largest_sizes()
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._resources = CudaResources(cudart, device)
        # Frees the device memory when the backend is dropped without close(); it must not hold the backend itself.
        self._finalizer = weakref.finalize(self, _release_resources, self._resources, str(self.path))

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
        for t in self._tensors.values():
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
        return [self._spec(t) for t in self._tensors.values() if t.is_input]

    def output_specs(self) -> list[TensorSpec]:
        return [self._spec(t) for t in self._tensors.values() if not t.is_input]

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    @property
    def profiles(self) -> dict[str, TensorProfile]:
        """Input name -> the shapes the engine accepts."""
        return dict(self._profiles)

    def _largest_sizes(self) -> dict[str, int]:
        """Bytes of each tensor at the profile's maximum: the inputs' max shapes, the outputs' ``get_max_output_size``
        (TensorRT 10+) or their shapes with every input at its max (the model's outputs grow with its inputs)."""
        context = self._context
        for name, profile in self._profiles.items():
            self._trt_check(context.set_input_shape(name, profile.max), f"set_input_shape({name}, max)")
        max_output_size = getattr(context, "get_max_output_size", None)
        sizes = {}
        for t in self._tensors.values():
            if t.is_input:
                shape = self._profiles[t.name].max if t.name in self._profiles else t.shape
            else:
                shape = tuple(int(d) for d in context.get_tensor_shape(t.name))
            size = int(np.prod(shape, dtype=np.int64)) * t.itemsize if all(d >= 0 for d in shape) else -1
            if not t.is_input and max_output_size is not None:
                reported = int(max_output_size(t.name))
                size = max(size, reported)
            if size < 0:
                raise PansegError(f"{self.path}: output {t.name} has a data-dependent shape {shape}, which this "
                                  "backend does not support")
            sizes[t.name] = size
        return sizes

    # -- inference -------------------------------------------------------------------------------------------------

    @property
    def transfers(self) -> TransferCounter:
        """Host <-> device bytes and copies made by this backend since it was loaded (or since ``reset()``)."""
        return self._resources.counter

    @contextmanager
    def claim(self) -> Iterator[None]:
        """Hold the backend for one call: its lock, and its device current in the calling thread."""
        if self.closed:
            raise PansegError(f"{self.path}: {self.name} backend used after close()")
        with self._resources.lock:
            use_device(self._cudart, self.device)
            yield

    def _buffer(self, name: str) -> Buffer:
        buffers = self._resources.buffers
        if name not in buffers:
            buffers[name] = Buffer(self._cudart, self._capacity[name])
        return buffers[name]

    def dtype_of(self, name: str) -> tuple[Any, int]:
        """Tensor ``name``'s TensorRT type and its size in bytes per element."""
        t = self._tensors[name]
        return t.trt_dtype, t.itemsize

    def input_address(self, name: str) -> int:
        """The device address of input ``name``'s own buffer (for filling it on the device; see the pair)."""
        return self._buffer(name).device_address()

    def copy_on_device(self, dst: int, src: int, nbytes: int, what: str) -> None:
        """A device-to-device copy on this backend's stream (counted, crosses nothing). Call inside :meth:`claim`."""
        self._resources.copy(dst, src, nbytes, "d2d", what)

    def device_output(self, name: str) -> DeviceTensor:
        """Output ``name`` of the last :meth:`execute`, where it lies on the device (valid until the next call)."""
        if name not in self._shapes or name not in self._resources.buffers:
            raise PansegError(f"{self.path}: output {name} has not been computed yet")
        return DeviceTensor(self._resources.buffers[name].device, self._shapes[name])

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        with self.claim():
            return self.execute(feeds, {}, outputs)

    def execute(self, host_inputs: Mapping[str, np.ndarray], device_inputs: Mapping[str, DeviceTensor],
                fetch: Sequence[str]) -> dict[str, np.ndarray]:
        """Run once on inputs from the host and inputs already on the device; copy back only ``fetch``. Every output
        stays in its device buffer until the next call (:meth:`device_output`). Call inside :meth:`claim`."""
        shapes = {n: tuple(int(d) for d in a.shape) for n, a in host_inputs.items()}
        shapes.update({n: tuple(d.shape) for n, d in device_inputs.items()})
        check_shapes_in_profile(shapes, self._profiles, self.path)
        trt_check, context, resources = self._trt_check, self._context, self._resources
        for t in self._tensors.values():
            if t.is_input:
                trt_check(context.set_input_shape(t.name, shapes[t.name]),
                          f"set_input_shape({t.name}, {format_shape(shapes[t.name])})")
        for t in self._tensors.values():
            if not t.is_input:
                shapes[t.name] = tuple(int(d) for d in context.get_tensor_shape(t.name))
                if t.name in fetch and t.dtype is None:
                    raise PansegError(f"{self.path}: output {t.name} has type {t.trt_dtype}, which numpy cannot hold")
            nbytes = int(np.prod(shapes[t.name], dtype=np.int64)) * t.itemsize
            if nbytes > self._capacity[t.name] or any(d < 0 for d in shapes[t.name]):
                raise PansegError(f"{self.path}: {t.name} of shape {shapes[t.name]} does not fit the buffer sized "
                                  "for the engine's profile maximum")
            if t.name in device_inputs:
                address = device_inputs[t.name].address
            else:
                buffer = self._buffer(t.name)
                address = buffer.device_address()
                if t.is_input:
                    array = host_inputs[t.name]
                    np.copyto(buffer.host_array(shapes[t.name], array.dtype), array)
                    resources.copy(address, buffer.host, nbytes, "h2d", f"copy of input {t.name} to the GPU")
            trt_check(context.set_tensor_address(t.name, address), f"set_tensor_address({t.name})")
        trt_check(context.execute_async_v3(int(resources.stream)), "execute_async_v3")
        self._shapes = shapes
        results: dict[str, np.ndarray] = {}
        for name in fetch:
            t, buffer = self._tensors[name], self._buffer(name)
            assert t.dtype is not None
            host = buffer.host_array(shapes[name], t.dtype)
            resources.copy(buffer.host, buffer.device, host.nbytes, "d2h", f"copy of output {name} from the GPU")
            results[name] = host
        resources.synchronize()
        # The pinned buffers are reused by the next call: hand out copies.
        return {name: np.array(array, copy=True) for name, array in results.items()}

    def _trt_check(self, ok: Any, what: str) -> None:
        if ok is False:
            raise PansegError(f"{self.path}: TensorRT {what} failed (see its log above)")

    # -- release ---------------------------------------------------------------------------------------------------

    def _release(self) -> None:
        # Buffers once nothing can use them, then context before engine before runtime (each needs the next alive).
        with self._resources.lock:
            self._finalizer()
        self._context = None
        self._engine = None
        self._runtime = None

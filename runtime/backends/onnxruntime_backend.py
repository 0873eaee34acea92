"""ONNX Runtime backend: full graph optimization, the optimized graph cached in the user's cache, explicit providers.

``onnxruntime`` itself is imported only when a backend is created, so ``import runtime`` stays light. Importing this
module only checks (cheaply, through package metadata) that one ONNX Runtime wheel is installed: ``onnxruntime`` and
``onnxruntime-gpu`` ship the same module and silently overwrite each other's files when installed together.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import Backend, TensorSpec, check_feeds, check_output_names
from runtime.backends.tensorrt_ep import CUDA_EP, TENSORRT_EP, profiles_or_warn, provider_options, with_cuda_fallback
from runtime.cache_dir import model_cache_dir
from runtime.contract import KEY_MASK_GRAPH_OF
from runtime.cpuinfo import cpu_model
from runtime.errors import PansegError
from runtime.filehash import file_sha256
from runtime.metadata_props import decode_metadata_props

# Wheels that all install the `onnxruntime` module; any two together leave a broken mix of files.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}

CACHE_KIND = "ort"  # the folder under the user's panseg cache (runtime.cache_dir)
_DIGEST_CHARS = 16

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


@dataclass(frozen=True)
class OrtTensor:
    """An output left where ONNX Runtime put it (host or GPU memory) so that another session reads it in place."""

    value: Any  # onnxruntime.OrtValue

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())

    def shape_proxy(self) -> np.ndarray:
        """A zero-byte stand-in with this tensor's dtype and shape, for the usual feed checks (``check_feeds``)."""
        dtype = ORT_TYPES.get(self.value.data_type(), np.float32)
        return np.broadcast_to(np.zeros((), dtype), self.shape)


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_single_onnxruntime(version_of: Callable[[str], str | None] = _installed_version) -> None:
    """Raise if more than one ONNX Runtime wheel is installed (they overwrite each other's ``onnxruntime`` module)."""
    found = {d: v for d in ORT_DISTRIBUTIONS if (v := version_of(d)) is not None}
    if len(found) > 1:
        listed = ", ".join(f"{d} {v}" for d, v in found.items())
        raise PansegError(
            f"conflicting ONNX Runtime installs: {listed}; they share the 'onnxruntime' module and break each other. "
            f"Keep one: pip uninstall -y {' '.join(found)}, then pip install onnxruntime-gpu (GPU machines) "
            "or onnxruntime (CPU only)"
        )


check_single_onnxruntime()


def resolve_providers(providers: Sequence[str]) -> list[str]:
    """Short names ("cpu", "cuda", "tensorrt") or ORT names -> ORT provider names, CPU appended as the fallback."""
    if isinstance(providers, str):
        providers = [providers]
    resolved: list[str] = []
    for p in providers:
        name = PROVIDER_ALIASES.get(p.lower(), p)
        if name not in resolved:
            resolved.append(name)
    if not resolved:
        raise PansegError("no execution provider requested; use e.g. ('cpu',) or ('cuda',)")
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")
    return resolved


@lru_cache(maxsize=1)
def hardware_fingerprint() -> str:
    """CPU identity: ENABLE_ALL bakes CPU-specific layouts (NCHWc blocking) into the saved graph."""
    return f"{platform.system()}|{platform.machine()}|{cpu_model()}"


def cache_key(ort_version: str, providers: Sequence[str], options: dict[str, Any]) -> str:
    """Digest of everything that shapes the optimized graph except the source model itself."""
    blob = json.dumps(
        {"ort": ort_version, "providers": list(providers), "options": options, "hardware": hardware_fingerprint()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:_DIGEST_CHARS]


def cache_dir_for(model_path: Path, root: str | os.PathLike | None = None) -> Path:
    """This model file's cache folder: under ``root`` (default: the user's panseg cache), never beside the model."""
    return model_cache_dir(CACHE_KIND, model_path, root)


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


class OnnxRuntimeBackend(Backend):
    """An ONNX model run by ONNX Runtime.

    providers: in order of preference, short ("cpu", "cuda", "tensorrt") or ORT names; the CPU provider is always
        appended as the fallback for nodes the others do not take, and CUDA follows TensorRT (see
        runtime/backends/tensorrt_ep.py, which also gives TensorRT the model's optimization profile). A requested
        provider that this ONNX Runtime build lacks, or that fails to load (e.g. missing CUDA libraries), is an
        error, never a silent CPU fallback.
    intra_op_threads / inter_op_threads: thread pool sizes (None: ONNX Runtime's default, one per physical core);
        inter-op threads only matter with parallel execution, which is switched on when inter_op_threads > 1.
    optimized_cache: keep the ORT_ENABLE_ALL-optimized graph in this model's folder of the user's cache
        (``$PANSEG_CACHE_DIR``, ``$XDG_CACHE_HOME/panseg`` or ``~/.cache/panseg``, then ``ort/<name>-<path digest>``;
        see runtime.cache_dir) keyed by the source model's sha256, the ORT version, the providers, the options and
        the CPU, and load it instead of re-optimizing. With the TensorRT provider the graph holds compiled nodes that
        cannot be saved, so TensorRT's own engine and timing caches go to a subfolder keyed the same way instead.
    cache_root: the cache root to use instead of the user's (the model's folder is made under ``<root>/ort/``).
    device: the CUDA device of the CUDA and TensorRT providers.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] = ("cpu",),
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        optimized_cache: bool = True,
        allow_spinning: bool = True,
        cache_root: str | os.PathLike | None = None,
        device: int = 0,
    ) -> None:
        super().__init__(path)
        # ORT's worker threads busy-wait after each run (lowest latency for back-to-back calls). Turn it off when
        # another thread pool shares the cores between calls (e.g. torch in an interleaved benchmark): measured on
        # 2 cores with the demo model, spinning made eager's timings vary 21% instead of 3%.
        self.allow_spinning = allow_spinning
        import onnxruntime as ort  # lazy: the heavy import happens only when an engine is really loaded

        self._ort = ort
        self.providers = with_cuda_fallback(resolve_providers(providers))
        self.device = device
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise PansegError(
                f"{self.path}: execution provider {', '.join(missing)} requested but not available in onnxruntime "
                f"{ort.__version__}; available: {', '.join(available)}"
                + (" (the CUDA/TensorRT providers need onnxruntime-gpu and an NVIDIA GPU)"
                   if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(missing) else "")
            )
        if not self.path.is_file():
            what = "is not a file" if self.path.exists() else "no such model file"
            raise PansegError(f"{self.path}: {what}")
        for threads, label in ((intra_op_threads, "intra_op_threads"), (inter_op_threads, "inter_op_threads")):
            if threads is not None and threads < 0:
                raise PansegError(f"{label} must be >= 0 (0: ONNX Runtime's default), got {threads}")
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        uses_tensorrt = "TensorrtExecutionProvider" in self.providers
        self.cache_dir: Path | None = cache_dir_for(self.path, cache_root) if optimized_cache else None
        self.cache_path: Path | None = None  # the optimized model this session was loaded from or saved to
        self.cache_hit = False
        if self.cache_dir is not None:
            # Keyed by contents: a model re-exported to the same path must not be served the old graph or engine.
            self._source_digest = file_sha256(self.path)[:_DIGEST_CHARS]
            self._cache_key = cache_key(ort.__version__, self.providers, self._cache_options())
        self._provider_options = self._make_provider_options(uses_tensorrt)

        if self.cache_dir is not None and not uses_tensorrt:
            self._session = self._load_with_cache()
        else:
            self._session = self._create_session(self.path, self._session_options(optimize=True))
        self._check_providers_active()
        self._inputs = [self._spec(a) for a in self._session.get_inputs()]
        self._outputs = [self._spec(a) for a in self._session.get_outputs()]
        self._metadata = dict(self._session.get_modelmeta().custom_metadata_map)

    # -- session construction -------------------------------------------------------------------------------------

    def _session_options(self, optimize: bool, save_to: Path | None = None):
        ort = self._ort
        so = ort.SessionOptions()
        # A cached graph is already fully optimized: running the optimizers again would only cost load time.
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                       else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        if self.intra_op_threads is not None:
            so.intra_op_num_threads = self.intra_op_threads
        if not self.allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if self.inter_op_threads is not None:
            so.inter_op_num_threads = self.inter_op_threads
            if self.inter_op_threads > 1:
                so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        so.log_severity_level = 3  # errors only: ORT's warnings (e.g. about saving CPU-specific graphs) are expected
        if save_to is not None:
            so.optimized_model_filepath = str(save_to)
        return so

    def _make_provider_options(self, uses_tensorrt: bool) -> list[dict[str, Any]]:
        if not uses_tensorrt:
            return provider_options(self.providers, self.device, None, None)
        trt_dir = self.tensorrt_cache_dir if self.cache_dir is not None else None
        if trt_dir is not None:
            try:
                trt_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # unwritable cache: build the engines every time rather than fail
                warnings.warn(f"{trt_dir}: cannot create the TensorRT engine cache ({exc})", RuntimeWarning,
                              stacklevel=4)
                trt_dir = None
            else:
                self._prune_stale(self._source_digest)
        inputs, metadata = self._probe(self.path)
        detector = None
        owner = metadata.get(KEY_MASK_GRAPH_OF)
        if isinstance(owner, str) and self.path.with_name(owner).is_file():  # a mask graph: its detector's metadata
            detector = self._probe(self.path.with_name(owner))[1]
        profiles = profiles_or_warn(inputs, metadata, detector, str(self.path))
        return provider_options(self.providers, self.device, trt_dir, profiles)

    def _probe(self, model: Path) -> tuple[list[tuple[str, tuple]], dict[str, Any]]:
        """A graph's inputs and decoded metadata, read by a CPU session that optimizes nothing (the TensorRT provider
        needs its profile before its own session exists)."""
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
            raise PansegError(f"{model}: ONNX Runtime cannot load this model ({_short_error(exc)})") from exc
        inputs = [(a.name, tuple(a.shape)) for a in session.get_inputs()]
        try:
            metadata = decode_metadata_props(session.get_modelmeta().custom_metadata_map.items(), str(model))
        except PansegError:
            metadata = {}  # not a panseg model: no profile (profiles_or_warn says so)
        return inputs, metadata

    def _create_session(self, model: Path, options):
        try:
            return self._ort.InferenceSession(
                str(model), sess_options=options, providers=self.providers, provider_options=self._provider_options
            )
        except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
            raise PansegError(f"{model}: ONNX Runtime cannot load this model ({_short_error(exc)})") from exc

    def _cache_options(self) -> dict[str, Any]:
        # Thread counts do not change the optimized graph, so they are not part of the key.
        return {"graph_optimization_level": "ORT_ENABLE_ALL"}

    @property
    def tensorrt_cache_dir(self) -> Path:
        """Where the TensorRT provider keeps its engines and timing cache for this model's contents and settings."""
        assert self.cache_dir is not None
        return self.cache_dir / f"tensorrt-{self._source_digest}-{self._cache_key}"

    def _load_with_cache(self):
        assert self.cache_dir is not None
        source_digest = self._source_digest
        self.cache_path = self.cache_dir / f"{source_digest}-{self._cache_key}.onnx"
        if self.cache_path.is_file():
            try:
                session = self._create_session(self.cache_path, self._session_options(optimize=False))
                self.cache_hit = True
                return session
            except PansegError as exc:
                warnings.warn(f"{self.cache_path}: unreadable optimized-model cache, rebuilding it ({exc})",
                              RuntimeWarning, stacklevel=3)
                self.cache_path.unlink(missing_ok=True)
        return self._build_cache(source_digest)

    def _build_cache(self, source_digest: str):
        """Optimize the source model, letting ORT save the result to a temporary name that is renamed when done."""
        assert self.cache_dir is not None and self.cache_path is not None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # unwritable cache folder: run without the cache rather than fail
            warnings.warn(f"{self.cache_dir}: cannot create the optimized-model cache ({exc})", RuntimeWarning,
                          stacklevel=4)
            self.cache_path = None
            return self._create_session(self.path, self._session_options(optimize=True))
        tmp = self.cache_dir / f".{self.cache_path.name}.{os.getpid()}.tmp"
        try:
            session = self._create_session(self.path, self._session_options(optimize=True, save_to=tmp))
        except PansegError:
            tmp.unlink(missing_ok=True)
            _remove_if_empty(self.cache_dir)  # no empty cache folder left for a model that does not load
            raise
        try:
            if tmp.is_file():
                os.replace(tmp, self.cache_path)
                self._prune_stale(source_digest)
            else:
                self.cache_path = None
            return session
        finally:
            tmp.unlink(missing_ok=True)

    def _prune_stale(self, source_digest: str) -> None:
        """Drop cached graphs and TensorRT engines of earlier versions of the source model; other provider/ORT
        variants stay."""
        assert self.cache_dir is not None
        for old in self.cache_dir.glob("*.onnx"):
            if not old.name.startswith(source_digest + "-"):
                old.unlink(missing_ok=True)
        for old in self.cache_dir.glob("tensorrt-*"):
            if old.is_dir() and not old.name.startswith(f"tensorrt-{source_digest}-"):
                shutil.rmtree(old, ignore_errors=True)

    def _check_providers_active(self) -> None:
        active = self._session.get_providers()
        dropped = [p for p in self.providers if p not in active]
        if dropped:
            raise PansegError(
                f"{self.path}: execution provider {', '.join(dropped)} failed to initialise (ONNX Runtime fell back "
                f"to {', '.join(active)}); check the CUDA/cuDNN/TensorRT libraries match onnxruntime "
                f"{self._ort.__version__}"
            )

    @staticmethod
    def _spec(arg) -> TensorSpec:
        dtype = ORT_TYPES.get(arg.type)
        return TensorSpec(arg.name, np.dtype(dtype) if dtype is not None else None, tuple(arg.shape))

    # -- Backend interface ----------------------------------------------------------------------------------------

    @property
    def session(self):
        """The underlying ``onnxruntime.InferenceSession`` (for diagnostics and benchmarks)."""
        return self._session

    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def output_specs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(outputs, feeds)
        except Exception as exc:
            raise PansegError(f"{self.path}: inference failed ({_short_error(exc)})") from exc
        return dict(zip(outputs, values, strict=True))

    @property
    def device_location(self) -> tuple[str, int]:
        """Where outputs kept for another session live: ONNX Runtime's ("cuda", device) with the CUDA or TensorRT
        provider, else ("cpu", 0)."""
        return ("cuda", self.device) if {CUDA_EP, TENSORRT_EP} & set(self.providers) else ("cpu", 0)

    def infer_bound(self, feeds: Mapping[str, np.ndarray | OrtTensor], outputs: Sequence[str],
                    keep: Collection[str] = ()) -> dict[str, np.ndarray | OrtTensor]:
        """``infer`` through ONNX Runtime's IO binding: the outputs named in ``keep`` stay where this session's
        provider puts them (:attr:`device_location`) and come back as :class:`OrtTensor`; the others as numpy. Feeds
        may be such tensors from another session on the same device: they are bound in place, never copied."""
        if self._closed:
            raise PansegError(f"{self.path}: {self.name} backend used after close()")
        proxies = {n: v.shape_proxy() if isinstance(v, OrtTensor) else v for n, v in feeds.items()}
        checked = check_feeds(self.input_specs(), proxies, self.path)
        names = check_output_names(self.output_specs(), outputs, self.path)
        binding = self._session.io_binding()
        held = []  # the host arrays bound below must outlive the run
        for name in checked:
            value = feeds[name]
            if isinstance(value, OrtTensor):
                binding.bind_ortvalue_input(name, value.value)
            else:
                held.append(np.ascontiguousarray(checked[name]))
                binding.bind_cpu_input(name, held[-1])
        device, device_id = self.device_location
        for name in names:
            if name in keep:
                binding.bind_output(name, device, device_id)
            else:
                binding.bind_output(name, "cpu")
        try:
            self._session.run_with_iobinding(binding)
            values = binding.get_outputs()
        except Exception as exc:
            raise PansegError(f"{self.path}: inference failed ({_short_error(exc)})") from exc
        return {name: OrtTensor(value) if name in keep else value.numpy()
                for name, value in zip(names, values, strict=True)}

    def _release(self) -> None:
        # ORT has no explicit close; dropping the last reference frees the session and its arena.
        self._session = None

"""Pick the backend for an engine file: by its extension, or by an explicit ``--backend`` name.

Backend modules are imported only here, when chosen, so a CPU-only install never touches TensorRT and ``import
runtime`` never pays for onnxruntime.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from runtime.backends.base import Backend
from runtime.contract import ONNX_SUFFIX, TENSORRT_SUFFIXES
from runtime.errors import PansegError

ONNXRUNTIME = "onnxruntime"
TENSORRT = "tensorrt"

EXTENSIONS = {ONNX_SUFFIX: ONNXRUNTIME, **dict.fromkeys(TENSORRT_SUFFIXES, TENSORRT)}
BACKEND_NAMES = {"onnxruntime": ONNXRUNTIME, "ort": ONNXRUNTIME, "tensorrt": TENSORRT, "trt": TENSORRT}



def backend_name_for(path: str | os.PathLike, backend: str | None = None) -> str:
    """The canonical backend name for ``path``: ``backend`` if given, else from the file extension."""
    if backend is not None:
        name = BACKEND_NAMES.get(backend.lower())
        if name is None:
            raise PansegError(f"unknown backend {backend!r}; choose one of {', '.join(sorted(BACKEND_NAMES))}")
        return name
    suffix = Path(path).suffix.lower()
    name = EXTENSIONS.get(suffix)
    if name is None:
        accepted = ", ".join(f"{ext} ({b})" for ext, b in EXTENSIONS.items())
        raise PansegError(f"{path}: cannot tell the engine type from extension {suffix or '(none)'!r}; "
                          f"accepted: {accepted}, or pass --backend")
    return name


def select_backend(path: str | os.PathLike, backend: str | None = None, **options: Any) -> Backend:
    """Load ``path`` with the backend its extension (or ``backend``) names; ``options`` go to that backend."""
    name = backend_name_for(path, backend)
    if name == ONNXRUNTIME:
        from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, **options)
    try:
        from runtime.backends.tensorrt_backend import TensorRTBackend
    except ImportError as exc:  # tensorrt or cuda-python is missing
        from runtime.backends.tensorrt_cuda import INSTALL_HINT, UNAVAILABLE

        raise PansegError(f"{UNAVAILABLE}: {exc} (needed for {path}; {INSTALL_HINT})") from exc
    return TensorRTBackend(path, **options)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine options shared by every subcommand that runs a model."""
    group = parser.add_argument_group("engine")
    group.add_argument("--backend", choices=sorted(BACKEND_NAMES), default=None,
                       help="engine runtime (default: from the model file's extension: .onnx, .plan, .engine)")
    group.add_argument("--providers", default="cpu",
                       help="ONNX Runtime execution providers in order of preference, comma-separated: "
                            "cpu, cuda, tensorrt (default: cpu)")
    group.add_argument("--intra-op-threads", type=int, default=None, metavar="N",
                       help="ONNX Runtime threads per operator (default: one per physical core)")
    group.add_argument("--inter-op-threads", type=int, default=None, metavar="N",
                       help="ONNX Runtime threads across operators (>1 turns on parallel execution)")
    group.add_argument("--device", type=int, default=0, metavar="N",
                       help="CUDA device of the TensorRT backend and of ONNX Runtime's cuda/tensorrt providers "
                            "(default: 0)")
    group.add_argument("--no-ort-cache", dest="ort_cache", action="store_false",
                       help="do not cache the optimized graph (cached in $PANSEG_CACHE_DIR, default ~/.cache/panseg)")


def backend_options_from_args(path: str | os.PathLike, args: argparse.Namespace) -> dict[str, Any]:
    """Translate ``add_backend_arguments`` values into keyword options for the backend that will load ``path``."""
    device = getattr(args, "device", 0)
    if device < 0:
        raise PansegError(f"--device must be a CUDA device index 0, 1, ..., got {device}")
    if backend_name_for(path, args.backend) != ONNXRUNTIME:
        return {"device": device}
    providers = tuple(p.strip() for p in args.providers.split(",") if p.strip())
    options = {
        "providers": providers,
        "intra_op_threads": args.intra_op_threads,
        "inter_op_threads": args.inter_op_threads,
        "optimized_cache": args.ort_cache,
    }
    if any(p.lower() not in ("cpu", "cpuexecutionprovider") for p in providers):  # only GPU providers use it
        options["device"] = device
    return options

"""Write a Triton model repository for an exported model: ``REPO/panseg/config.pbtxt`` and a version folder with the
engine files, the runtime's code and ``model.py``, plus ``REPO/README.md``.

Why the runtime is copied into the version folder: the served model must run the same code as the ``panseg-rt
infer`` it was exported next to (byte-identical answers), whatever is installed in the server's execution
environment; a repository is then self-contained and versioned with its engine.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import runtime
from export.triton.config import ModelConfig, render_config
from export.triton.native import GraphModelConfig, GraphServing, graph_model_configs, render_graph_config
from export.triton.readme import render_readme
from runtime.atomic import atomic_write_bytes, dumps_json
from runtime.backends.triton_bls import GraphDescription, describe_graph
from runtime.categories import categories_to_json
from runtime.contract import IMAGES, is_tensorrt_file, sidecar_path
from runtime.errors import PansegError
from runtime.model import load_model
from runtime.serving.protocol import (
    ENGINE_DIR,
    ENGINES,
    ENGINES_NATIVE,
    ENGINES_PYTHON,
    GRAPHS_FILE,
    MODEL_NAME,
    PARAM_BACKEND,
    PARAM_CATEGORIES,
    PARAM_ENGINE,
    PARAM_ENGINES,
    PARAM_MAX_SIZE,
    PARAM_SIZE,
    PARAM_THREADS,
    graph_model_name,
)
from runtime.trt_sidecar import read_engine_sidecar

MODEL_PY = '''"""Triton Python-backend entry point of panseg's served model (written by python -m export.triton)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the runtime copied beside this file

from runtime.serving.triton_model import TritonPythonModel  # noqa: E402,F401
'''


@dataclass
class ServingSettings:
    """How the model serves: resize (None: the model's; max_size "none": no limit), threads, backend, and where its
    graphs run (``engines``: inside the panseg model, or as native Triton models called through BLS)."""

    size: int | None = None
    max_size: int | str | None = None
    threads: int | None = None
    backend: str | None = None
    config: ModelConfig = field(default_factory=ModelConfig)
    engines: str = ENGINES_PYTHON


@dataclass(frozen=True)
class RepositoryResult:
    repository: Path
    config: Path
    version_dir: Path
    engine_files: list[Path]
    graph_configs: dict[str, Path] = field(default_factory=dict)  # native variant: role -> its model's config


def _engine_files(model_files: list[Path]) -> list[Path]:
    """The model's engine files with their side files (TensorRT plans keep their metadata beside them)."""
    files = []
    for path in model_files:
        files.append(path)
        if sidecar_path(path).is_file():
            files.append(sidecar_path(path))
    return files


def _plan_max_batch(plan: Path) -> int:
    """The largest batch a TensorRT plan's optimization profile takes (its side file records the profile)."""
    return read_engine_sidecar(plan)[1].profile[IMAGES].max[0]


@dataclass
class _Loaded:
    """What the repository needs from the loaded model."""

    files: list[Path]
    engine_name: str
    categories: str
    graphs: dict[str, GraphDescription]
    graph_files: dict[str, Path]
    profile_max_batch: int | None


def _load(model_path: str | os.PathLike, settings: ServingSettings) -> _Loaded:
    native = settings.engines == ENGINES_NATIVE
    with load_model(model_path, settings.backend, {"optimized_cache": False}
                    if str(model_path).endswith(".onnx") else None) as model:
        roles = model.graphs() if native else {}
        return _Loaded(_engine_files(model.files), model.path.name,
                       dumps_json(categories_to_json(model.info.categories)),
                       {role: describe_graph(b, graph_model_name(role)) for role, b in roles.items()},
                       {role: b.path for role, b in roles.items()},
                       _plan_max_batch(model.path) if native and is_tensorrt_file(model.path) else None)


def write_repository(model_path: str | os.PathLike, repository: str | os.PathLike,
                     settings: ServingSettings | None = None, version: int = 1) -> RepositoryResult:
    """The repository for ``model_path`` (an .onnx single graph or query-sparse detector, or a .plan); refuses to
    overwrite an existing version folder. With ``settings.engines`` native, also one model per graph (see
    export/triton/native.py), and the ``panseg`` model keeps the graphs' descriptions instead of the engine files."""
    settings = settings or ServingSettings()
    if settings.engines not in ENGINES:
        raise PansegError(f"engines must be one of {', '.join(ENGINES)}, got {settings.engines!r}")
    if version < 1:
        raise PansegError(f"model version must be at least 1, got {version}")
    repository = Path(repository)
    model_dir = repository / MODEL_NAME
    version_dir = model_dir / str(version)
    loaded = _load(model_path, settings)
    parameters = {PARAM_ENGINE: loaded.engine_name, PARAM_BACKEND: settings.backend or "",
                  PARAM_SIZE: "" if settings.size is None else str(settings.size),
                  PARAM_MAX_SIZE: "" if settings.max_size is None else str(settings.max_size),
                  PARAM_THREADS: "" if settings.threads is None else str(settings.threads),
                  PARAM_CATEGORIES: loaded.categories}
    config = settings.config
    graph_configs: dict[str, GraphModelConfig] = {}
    if settings.engines == ENGINES_NATIVE:
        serving = GraphServing(config.max_batch_size, config.instances, config.kind, config.keep_versions,
                               settings.threads, settings.size, settings.max_size, loaded.profile_max_batch)
        graph_configs, batch = graph_model_configs(loaded.graphs, serving)
        parameters[PARAM_ENGINES] = ENGINES_NATIVE
        # The panseg model only decodes, selects and merges on the CPU; the graph models hold the GPU instances.
        config = dataclasses.replace(config, max_batch_size=batch, kind="cpu")
    config = dataclasses.replace(config, parameters=parameters)
    targets = [version_dir] + [repository / g.name / str(version) for g in graph_configs.values()]
    for target in targets:
        if target.exists():
            raise PansegError(f"{target}: exists; choose another --version or another output folder")
    partials = [t.with_name(f".{version}.partial") for t in targets]
    for partial in partials:
        shutil.rmtree(partial, ignore_errors=True)
    try:
        partials[0].mkdir(parents=True)
        shutil.copytree(Path(runtime.__file__).parent, partials[0] / "runtime",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (partials[0] / "model.py").write_text(MODEL_PY, encoding="utf-8")
        if graph_configs:
            (partials[0] / GRAPHS_FILE).write_text(
                dumps_json({role: g.to_json() for role, g in loaded.graphs.items()}, indent=1), encoding="utf-8")
            copied = []
            for partial, (role, graph) in zip(partials[1:], graph_configs.items(), strict=True):
                partial.mkdir(parents=True)
                copied.append(Path(shutil.copy2(loaded.graph_files[role], partial / graph.model_file)))
        else:
            (partials[0] / ENGINE_DIR).mkdir()
            copied = [Path(shutil.copy2(f, partials[0] / ENGINE_DIR / f.name)) for f in loaded.files]
        for partial, target in zip(partials, targets, strict=True):
            partial.rename(target)
    except OSError as exc:
        for partial in partials:
            shutil.rmtree(partial, ignore_errors=True)
        raise PansegError(f"{repository}: cannot write the model repository ({exc.strerror or exc})") from exc
    config_path = model_dir / "config.pbtxt"
    atomic_write_bytes(config_path, render_config(config).encode("utf-8"))
    graph_paths = {}
    for role, graph in graph_configs.items():
        graph_paths[role] = repository / graph.name / "config.pbtxt"
        atomic_write_bytes(graph_paths[role], render_graph_config(graph).encode("utf-8"))
    atomic_write_bytes(repository / "README.md", render_readme(repository, config, graph_configs).encode("utf-8"))
    files = [t / p.name for t, p in zip(targets[1:], copied, strict=True)] if graph_configs else \
        [version_dir / ENGINE_DIR / p.name for p in copied]
    return RepositoryResult(repository, config_path, version_dir, files, graph_paths)

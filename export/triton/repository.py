"""Write a Triton model repository for an exported model: ``REPO/panseg/config.pbtxt`` and a version folder with the
engine files, the runtime's code and ``model.py``, plus ``REPO/README.md``.

Why the runtime is copied into the version folder: the served model must run the same code as the ``panseg-rt
infer`` it was exported next to (byte-identical answers), whatever is installed in the server's execution
environment; a repository is then self-contained and versioned with its engine.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import runtime
from export.triton.config import ModelConfig, render_config
from export.triton.readme import render_readme
from runtime.atomic import dumps_json
from runtime.categories import categories_to_json
from runtime.contract import sidecar_path
from runtime.errors import PansegError
from runtime.model import load_model
from runtime.serving.protocol import (
    ENGINE_DIR,
    MODEL_NAME,
    PARAM_BACKEND,
    PARAM_CATEGORIES,
    PARAM_ENGINE,
    PARAM_MAX_SIZE,
    PARAM_SIZE,
    PARAM_THREADS,
)

MODEL_PY = '''"""Triton Python-backend entry point of panseg's served model (written by python -m export.triton)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the runtime copied beside this file

from runtime.serving.triton_model import TritonPythonModel  # noqa: E402,F401
'''


@dataclass
class ServingSettings:
    """How the model serves: resize (None: the model's; max_size "none": no limit), threads, backend."""

    size: int | None = None
    max_size: int | str | None = None
    threads: int | None = None
    backend: str | None = None
    config: ModelConfig = field(default_factory=ModelConfig)


@dataclass(frozen=True)
class RepositoryResult:
    repository: Path
    config: Path
    version_dir: Path
    engine_files: list[Path]


def _engine_files(model_files: list[Path]) -> list[Path]:
    """The model's engine files with their side files (TensorRT plans keep their metadata beside them)."""
    files = []
    for path in model_files:
        files.append(path)
        if sidecar_path(path).is_file():
            files.append(sidecar_path(path))
    return files


def write_repository(model_path: str | os.PathLike, repository: str | os.PathLike,
                     settings: ServingSettings | None = None, version: int = 1) -> RepositoryResult:
    """The repository for ``model_path`` (an .onnx single graph or query-sparse detector, or a .plan); refuses to
    overwrite an existing version folder."""
    settings = settings or ServingSettings()
    repository = Path(repository)
    model_dir = repository / MODEL_NAME
    version_dir = model_dir / str(version)
    if version < 1:
        raise PansegError(f"model version must be at least 1, got {version}")
    if version_dir.exists():
        raise PansegError(f"{version_dir}: exists; choose another --version or another output folder")
    with load_model(model_path, settings.backend, {"optimized_cache": False}
                    if str(model_path).endswith(".onnx") else None) as model:
        files = _engine_files(model.files)
        categories = dumps_json(categories_to_json(model.info.categories))
        engine_name = model.path.name
    parameters = {PARAM_ENGINE: engine_name, PARAM_BACKEND: settings.backend or "",
                  PARAM_SIZE: "" if settings.size is None else str(settings.size),
                  PARAM_MAX_SIZE: "" if settings.max_size is None else str(settings.max_size),
                  PARAM_THREADS: "" if settings.threads is None else str(settings.threads),
                  PARAM_CATEGORIES: categories}
    settings.config.parameters = parameters
    partial = version_dir.with_name(f".{version}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        (partial / ENGINE_DIR).mkdir(parents=True)
        copied = [Path(shutil.copy2(f, partial / ENGINE_DIR / f.name)) for f in files]
        shutil.copytree(Path(runtime.__file__).parent, partial / "runtime",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (partial / "model.py").write_text(MODEL_PY, encoding="utf-8")
        partial.rename(version_dir)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise PansegError(f"{repository}: cannot write the model repository ({exc.strerror or exc})") from exc
    config_path = model_dir / "config.pbtxt"
    config_path.write_text(render_config(settings.config), encoding="utf-8")
    (repository / "README.md").write_text(render_readme(repository, settings.config), encoding="utf-8")
    return RepositoryResult(repository, config_path, version_dir, [version_dir / ENGINE_DIR / f.name for f in copied])

"""The one small interface every inference engine sits behind (in the spirit of polygraphy's runners).

A backend is loaded by its constructor, describes its inputs and outputs, hands back the metadata the export wrote
(categories, normalization, resize policy, threshold, ... as JSON strings), runs ``infer`` on numpy arrays and is
closed explicitly or by a ``with`` block. Callers never see onnxruntime or TensorRT types.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import PansegError

Dim = int | str | None  # a fixed size, a symbolic name ("batch"), or unknown


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of one engine input or output; symbolic dims are names (str) or None."""

    name: str
    dtype: np.dtype | None  # None: a type numpy cannot hold (e.g. bfloat16)
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype if self.dtype is not None else '?'}[{dims}]"


class Backend(ABC):
    """An inference engine loaded from one file. Subclasses load in ``__init__`` and free resources in ``close``."""

    name: str = "backend"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._closed = False

    @abstractmethod
    def input_specs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def output_specs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def metadata(self) -> dict[str, str]:
        """Key -> string value stored with the engine by the export (JSON strings for structured values)."""

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _release(self) -> None:
        """Free the engine; called once by ``close``."""

    def infer(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the engine on ``feeds`` (input name -> array) and return the requested outputs (default: all)."""
        if self._closed:
            raise PansegError(f"{self.path}: {self.name} backend used after close()")
        checked = check_feeds(self.input_specs(), feeds, self.path)
        names = check_output_names(self.output_specs(), outputs, self.path)
        return self._infer(checked, names)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.path} ({state})>"


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray], source: Path) -> dict[str, np.ndarray]:
    """Refuse missing/unknown inputs, wrong dtypes, ranks and fixed sizes with a message naming the engine file."""
    expected = {s.name: s for s in specs}
    missing = [n for n in expected if n not in feeds]
    unknown = [n for n in feeds if n not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(unknown)}")
        raise PansegError(f"{source}: {'; '.join(parts)}; the engine takes {', '.join(expected) or 'no inputs'}")
    checked: dict[str, np.ndarray] = {}
    for name, spec in expected.items():
        array = np.asarray(feeds[name])
        if spec.dtype is not None and array.dtype != spec.dtype:
            raise PansegError(f"{source}: input {name} must be {spec.dtype}, got {array.dtype}")
        if len(array.shape) != len(spec.shape):
            raise PansegError(f"{source}: input {name} must have shape {spec.describe()}, got {tuple(array.shape)}")
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(want, int) and want >= 0 and want != got:
                raise PansegError(f"{source}: input {name} must have size {want} on axis {axis} "
                                  f"({spec.describe()}), got {tuple(array.shape)}")
        checked[name] = array
    return checked


def check_output_names(specs: Sequence[TensorSpec], outputs: Sequence[str] | None, source: Path) -> list[str]:
    names = [s.name for s in specs]
    if outputs is None:
        return names
    unknown = [n for n in outputs if n not in names]
    if unknown:
        raise PansegError(f"{source}: unknown output(s) {', '.join(unknown)}; the engine gives {', '.join(names)}")
    return list(outputs)

"""The demo's stages as plain records (name, steps, inputs, outputs), and the rule that decides which to rerun.

A stage is reused when its stamp (OUT/.stages/<name>.json, written only after the stage succeeded) records the same
steps, and every output exists and is at least as new as every input. Upstream reruns therefore cascade (their new
outputs are newer than the downstream outputs), an interrupted stage reruns (its stamp is removed before it starts),
and editing the recipe reruns training (the command line, hence the stamp, differs).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from benchmarks.command_line import repo_relative, shell_line
from runtime.atomic import atomic_write_json
from runtime.errors import PansegError

STAMP_FOLDER = ".stages"


class StageFailed(PansegError):
    """A stage's step failed; the message names the stage and the command, so the user can rerun it alone."""


class Step(Protocol):
    def shell(self, python: str | None = None) -> str: ...

    def run(self) -> None: ...


@dataclass(frozen=True)
class Command:
    """A subprocess; its output (tqdm bars included) goes straight to the terminal."""

    argv: tuple[str, ...]

    def shell(self, python: str | None = None) -> str:
        return shell_line(self.argv, python)

    def run(self) -> None:
        code = subprocess.run(self.argv, check=False).returncode
        if code != 0:
            raise StageFailed(f"exit code {code}")


@dataclass(frozen=True)
class CopyFirstFiles:
    """Copy the first ``count`` files (by name) matching ``pattern`` in ``source`` into ``folder``; chosen when the
    step runs, since the source may not exist yet when the stages are planned. Shown as the equivalent ``cp``."""

    source: Path
    pattern: str
    count: int
    folder: Path

    def shell(self, python: str | None = None) -> str:
        dest = shlex.quote(repo_relative(str(self.folder)))
        source = shlex.quote(repo_relative(str(self.source)))
        return (f"mkdir -p {dest} && cp $(ls {source}/{self.pattern} | head -n {self.count}) "
                f"{dest}/")

    def run(self) -> None:
        files = sorted(p for p in self.source.glob(self.pattern) if p.is_file())[:self.count]
        if not files:
            raise StageFailed(f"{self.source}: no files matching {self.pattern}")
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copy2(path, self.folder / path.name)


@dataclass(frozen=True)
class Stage:
    name: str
    steps: tuple[Step, ...]
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    description: str = ""

    def shell_lines(self) -> list[str]:
        return [step.shell() for step in self.steps]

    def stamp_lines(self) -> list[str]:
        """The commands as stamped: the interpreter always written ``python``, so running the demo through make
        (.venv/bin/python) or from an activated venv does not count as a changed command."""
        return [step.shell("python") for step in self.steps]


@dataclass
class StageResult:
    name: str
    status: str  # "ran", "reused" or "skipped"
    seconds: float | None  # wall time of the run that made the outputs (also for a reused stage, from its stamp)
    commands: list[str] = field(default_factory=list)
    reason: str = ""


def stamp_path(out: Path, name: str) -> Path:
    return out / STAMP_FOLDER / f"{name}.json"


def read_stamp(out: Path, name: str) -> dict | None:
    try:
        stamp = json.loads(stamp_path(out, name).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def stale_reason(stage: Stage, out: Path) -> str | None:
    """Why ``stage`` must run, or None when its outputs can be reused."""
    stamp = read_stamp(out, stage.name)
    if stamp is None:
        return "not run yet (or interrupted)"
    if stamp.get("commands") != stage.stamp_lines():
        return "its commands changed"
    missing = [p for p in stage.outputs if not p.exists()]
    if missing:
        return f"{missing[0]} is missing"
    absent = [p for p in stage.inputs if not p.exists()]
    if absent:
        return f"input {absent[0]} is missing"
    if stage.inputs and stage.outputs:
        newest_input = max(stage.inputs, key=lambda p: p.stat().st_mtime_ns)
        oldest_output = min(stage.outputs, key=lambda p: p.stat().st_mtime_ns)
        # Equal times count as up to date: coarse file-system clocks must not cause endless reruns.
        if oldest_output.stat().st_mtime_ns < newest_input.stat().st_mtime_ns:
            return f"{newest_input} is newer than {oldest_output}"
    return None


def run_stage(stage: Stage, out: Path, echo: Callable[..., object] = print) -> StageResult:
    """Run every step of a stage, printing each as a copyable shell line; stamp the stage when all succeeded."""
    stamp = stamp_path(out, stage.name)
    stamp.unlink(missing_ok=True)  # from here on, the old outputs no longer count as finished
    started = time.perf_counter()
    for step in stage.steps:
        echo(f"$ {step.shell()}", flush=True)
        try:
            step.run()
        except (StageFailed, OSError) as exc:
            raise StageFailed(f"stage {stage.name} failed ({exc}): {step.shell()}") from None
    seconds = time.perf_counter() - started
    atomic_write_json(stamp, {"commands": stage.stamp_lines(), "seconds": seconds}, indent=1)
    return StageResult(stage.name, "ran", seconds, stage.shell_lines())


def reuse_or_run(stage: Stage, out: Path, echo: Callable[..., object] = print) -> StageResult:
    reason = stale_reason(stage, out)
    if reason is None:
        echo(f"skip {stage.name}: up to date (outputs newer than inputs)", flush=True)
        stamp = read_stamp(out, stage.name) or {}
        return StageResult(stage.name, "reused", stamp.get("seconds"), stage.shell_lines())
    echo(f"run {stage.name}: {reason}", flush=True)
    return run_stage(stage, out, echo)


def check_removable(out: Path, protected: Sequence[Path] = ()) -> None:
    """Refuse to delete a folder that is not clearly a demo output (``--fresh``): /, home, the working folder, the
    repository, anything containing them, or a non-empty folder without the demo's stamp folder."""
    target = out.resolve()
    guarded = [Path("/"), Path.home(), Path.cwd(), *protected]
    for path in guarded:
        path = path.resolve()
        if target == path or target in path.parents:
            raise PansegError(f"{out}: refusing to delete it for --fresh (it is or contains {path})")
    if target.is_dir() and any(target.iterdir()) and not (target / STAMP_FOLDER).is_dir():
        raise PansegError(f"{out}: refusing to delete it for --fresh: not a demo output folder (no {STAMP_FOLDER}/); "
                          "choose another -o/--output or delete it yourself")
    if target.exists() and not target.is_dir():
        raise PansegError(f"{out}: -o/--output must be a folder")


def remove_output(out: Path, protected: Sequence[Path] = ()) -> None:
    check_removable(out, protected)
    if out.exists():
        shutil.rmtree(out)

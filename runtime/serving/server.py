"""Getting a Triton Inference Server and starting it on a model repository (``panseg-rt serve``).

Where the server comes from: the ``nvidia-pytriton`` wheel on PyPI bundles ``tritonserver`` (2.51 in 0.7.0), its
libraries and the Python backend with a stub per Python version. Only the server is used: the wheel is unpacked
(never pip-installed: its Python package pins numpy<2) into a root folder (below), next to

- ``backends/python/``: the Python backend plus the Python 3.11 stub (Triton looks for the stub there);
- ``env-py311/``: the models' execution environment. The 3.11 stub links Debian's libpython3.11, so the venv must be
  made with ``/usr/bin/python3.11`` (another 3.11 build fails inside the stub); numpy 2 in it broke output tensors,
  so it gets numpy<2, and the Pillow and ONNX Runtime versions of the running process, so that decoding and the
  engine give the same bytes as ``panseg-rt infer``.

The root folder is ``$PANSEG_TRITON_DIR`` if set (``make setup`` puts it in the project's venv), else
``<panseg cache>/triton``. Every step is skipped when its result is already there (a stamp file records what the
environment was made with). The server listens on loopback only, on free ports unless given.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.cache_dir import cache_root
from runtime.errors import PansegError

PYTRITON_VERSION = "0.7.0"
STUB_PYTHON = "3.11"
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
SERVER_MEMBERS = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")
STUB_NAME = "triton_python_backend_stub"
ENV_STAMP = ".panseg-env"
LOOPBACK = "127.0.0.1"
SHARED_MEMORY = Path("/dev/shm")
TRITON_DIR_ENV = "PANSEG_TRITON_DIR"  # where the server and its environment live (default: <panseg cache>/triton)


def execution_requirements() -> list[str]:
    """What the execution environment gets: numpy<2 and this process's Pillow, ONNX Runtime and tqdm versions."""
    pinned = [f"{name}=={importlib.metadata.version(name)}" for name in ("pillow", "onnxruntime", "tqdm")]
    return ["numpy<2", *pinned]


@dataclass(frozen=True)
class TritonInstall:
    """The unpacked server, its backend folder and the execution environment, under one root folder."""

    root: Path

    @property
    def server_dir(self) -> Path:
        return self.root / f"pytriton-{PYTRITON_VERSION}"

    @property
    def binary(self) -> Path:
        return self.server_dir / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def libraries(self) -> Path:
        return self.server_dir / "nvidia_pytriton.libs"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    @property
    def execution_env(self) -> Path:
        return self.root / f"env-py{STUB_PYTHON.replace('.', '')}"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    def server_ready(self) -> bool:
        return self.binary.is_file() and (self.backends / "python" / STUB_NAME).is_file()

    def env_ready(self) -> bool:
        stamp = self.execution_env / ENV_STAMP
        return stamp.is_file() and stamp.read_text().split("\n") == execution_requirements()


def default_install(environ: Mapping[str, str] = os.environ) -> TritonInstall:
    """``$PANSEG_TRITON_DIR``, else ``<panseg cache>/triton`` ($PANSEG_CACHE_DIR, else ~/.cache/panseg)."""
    if environ.get(TRITON_DIR_ENV):
        return TritonInstall(Path(environ[TRITON_DIR_ENV]).expanduser().resolve())
    return TritonInstall(cache_root(environ) / "triton")


def _run(command: Sequence[str], what: str) -> None:
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise PansegError(f"{what} failed (exit {done.returncode}): {tail}")


def find_wheel(install: TritonInstall, download: bool = True) -> Path:
    """The pytriton wheel in the install's wheels/ folder, downloaded with pip if missing."""
    pattern = f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"
    found = sorted(install.wheels.glob(pattern))
    if not found and download:
        install.wheels.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"nvidia-pytriton=={PYTRITON_VERSION}",
              "-d", str(install.wheels)], f"pip download nvidia-pytriton=={PYTRITON_VERSION}")
        found = sorted(install.wheels.glob(pattern))
    if not found:
        raise PansegError(f"{install.wheels}: no {pattern} (download it with pip download --no-deps "
                          f"nvidia-pytriton=={PYTRITON_VERSION})")
    return found[-1]


def unpack_server(install: TritonInstall, wheel: Path) -> None:
    """The server part of the wheel into ``server_dir`` (file modes kept), then the backend folder with the stub."""
    partial = install.server_dir.with_name(install.server_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                if not member.filename.startswith(SERVER_MEMBERS) or member.is_dir():
                    continue
                target = Path(archive.extract(member, partial))
                mode = (member.external_attr >> 16) & 0o777
                target.chmod(mode or 0o644)
    except (OSError, zipfile.BadZipFile) as exc:
        raise PansegError(f"{wheel}: cannot unpack the Triton server ({exc})") from exc
    binary = partial / install.binary.relative_to(install.server_dir)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    shutil.rmtree(install.server_dir, ignore_errors=True)
    partial.rename(install.server_dir)
    python_backend = install.backends / "python"
    shutil.rmtree(python_backend, ignore_errors=True)
    shutil.copytree(install.server_dir / "pytriton" / "tritonserver" / "backends" / "python", python_backend)
    stub = install.server_dir / "pytriton" / "tritonserver" / "python_backend_stubs" / STUB_PYTHON / STUB_NAME
    shutil.copy2(stub, python_backend / STUB_NAME)
    (python_backend / STUB_NAME).chmod(0o755)


def make_execution_env(install: TritonInstall) -> None:
    """A venv of Debian's python3.11 with the packages the served model imports (the runtime itself is copied into
    each model repository, so it always matches the export)."""
    if not SYSTEM_PYTHON.is_file():
        raise PansegError(f"{SYSTEM_PYTHON}: missing; Triton's Python {STUB_PYTHON} stub needs Debian's python3.11 "
                          "(apt-get install python3.11 python3.11-venv libpython3.11)")
    env = install.execution_env
    shutil.rmtree(env, ignore_errors=True)
    _run([str(SYSTEM_PYTHON), "-m", "venv", str(env)], f"{SYSTEM_PYTHON} -m venv {env}")
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *execution_requirements()], f"installing {' '.join(execution_requirements())} into {env}")
    (env / ENV_STAMP).write_text("\n".join(execution_requirements()))


def ensure_installed(install: TritonInstall | None = None, wheel: Path | None = None) -> TritonInstall:
    """Unpack the server and make the execution environment unless they are already there; returns the install."""
    install = install or default_install()
    install.root.mkdir(parents=True, exist_ok=True)
    if not install.server_ready():
        unpack_server(install, wheel or find_wheel(install))
    if not install.env_ready():
        make_execution_env(install)
    return install


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on loopback right now."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` started by any of its threads (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in path.read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def _process_state(pid: int) -> tuple[str, str] | None:
    """(command name, state letter) of a process from /proc/<pid>/stat, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    return name, text[text.rindex(")") + 2:].split()[0]


def stub_processes(server_pid: int) -> dict[int, bool]:
    """The server's Python-backend stubs: pid -> alive (a killed stub stays a zombie child until the server ends)."""
    stubs = {}
    for pid in _children(server_pid):
        state = _process_state(pid)
        if state is not None and STUB_NAME.startswith(state[0]):  # the kernel keeps 15 characters of the name
            stubs[pid] = state[1] not in ("Z", "X")
    return stubs


# Triton's backend folder for each model platform (a config names either a platform or a backend).
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch",
                     "tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow"}
_BACKEND_OF = re.compile(r'^(platform|backend): "([^"]+)"', re.MULTILINE)


def missing_backends(repository: Path, backends: Path) -> dict[str, str]:
    """Model -> the backend its config needs that ``backends`` lacks (the bundled server has the python backend only,
    so a native repository's graph models cannot load on it; Triton would only say so in its log)."""
    missing = {}
    for config in sorted(repository.glob("*/config.pbtxt")):
        match = _BACKEND_OF.search(config.read_text(encoding="utf-8", errors="replace"))
        if match is None:
            continue
        backend = PLATFORM_BACKENDS.get(match.group(2), match.group(2)) if match.group(1) == "platform" \
            else match.group(2)
        if not (backends / backend).is_dir():
            missing[config.parent.name] = backend
    return missing


class TritonServer:
    """A tritonserver process on ``repository``, on loopback: ``start`` waits until it is ready, ``stop`` ends it.
    Its log goes to ``log_path`` (default: ``server-<http port>.log`` in the install's root folder).

    Why a watchdog: when a model's stub process dies (killed, out of memory), Triton 2.51 keeps reporting itself and
    the model ready but answers every request with "Stub process ... is not healthy" and never restarts it. The
    server is therefore started with explicit model control (all models loaded at start) and, with ``watchdog``, a
    thread notices a dead stub within ``WATCH_INTERVAL`` and reloads the repository's models (unload + load starts
    new stubs); ``restarts`` counts how often."""

    WATCH_INTERVAL = 0.5

    def __init__(self, repository: str | os.PathLike, install: TritonInstall | None = None,
                 http_port: int | None = None, grpc_port: int | None = None, metrics_port: int | None = None,
                 log_path: str | os.PathLike | None = None, extra_args: Sequence[str] = (),
                 watchdog: bool = True) -> None:
        self.repository = Path(repository).resolve()
        if not (self.repository.is_dir()):
            raise PansegError(f"{repository}: no such model repository folder")
        self.install = install or default_install()
        ports = free_ports(3)
        self.http_port = http_port or ports[0]
        self.grpc_port = grpc_port or ports[1]
        self.metrics_port = metrics_port or ports[2]
        self.log_path = Path(log_path) if log_path else self.install.root / f"server-{self.http_port}.log"
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.shm_prefix = f"panseg_triton_{os.getpid()}_{self.http_port}_"  # this server's Python-backend regions
        self.watchdog = watchdog
        self.restarts = 0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    def command(self) -> list[str]:
        return [str(self.install.binary), "--model-repository", str(self.repository),
                "--backend-directory", str(self.install.backends), "--http-address", LOOPBACK,
                "--grpc-address", LOOPBACK, "--metrics-address", LOOPBACK, "--http-port", str(self.http_port),
                "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
                "--model-control-mode", "explicit", "--load-model", "*",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}", *self.extra_args]

    def environment(self) -> dict[str, str]:
        """The server's environment: its bundled libraries first on the library path (the stub copied into the
        backend folder no longer finds them through its own RPATH)."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.install.libraries),
                                                              env.get("LD_LIBRARY_PATH", "")) if p)
        return env

    def start(self, timeout: float = 120.0) -> TritonServer:
        if not self.install.server_ready():
            raise PansegError(f"{self.install.root}: no Triton server installed there (panseg-rt serve --install)")
        missing = missing_backends(self.repository, self.install.backends)
        if missing:
            listed = ", ".join(f"{model} needs the {backend} backend" for model, backend in missing.items())
            raise PansegError(f"{self.repository}: {listed}, which {self.install.backends} lacks (this server has "
                              f"the python backend only; serve a native repository with a full tritonserver)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.environment(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PansegError(f"tritonserver exited with code {self.process.returncode} before it was ready "
                                  f"({self._log_tail()})")
            if self.ready():
                if self.watchdog:
                    self._stopping.clear()
                    alive = {pid for pid, ok in stub_processes(self.process.pid).items() if ok}  # before returning
                    self._watcher = threading.Thread(target=self._watch, args=(alive,), name="triton-watchdog",
                                                     daemon=True)
                    self._watcher.start()
                return self
            time.sleep(0.25)
        self.stop()
        raise PansegError(f"tritonserver not ready after {timeout:.0f} s ({self._log_tail()})")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _post(self, path: str, timeout: float = 120.0) -> bytes:
        request = urllib.request.Request(f"http://{self.url}{path}", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.read()

    def reload_models(self) -> list[str]:
        """Unload and load every model the repository index lists as ready (new instances, new stubs)."""
        index = json.loads(self._post("/v2/repository/index"))
        names = [m["name"] for m in index if m.get("state") == "READY"]
        for name in names:
            self._post(f"/v2/repository/models/{name}/unload")
        for name in names:
            self._post(f"/v2/repository/models/{name}/load")
        return names

    def _watch(self, known_alive: set[int]) -> None:
        """Reload the models when a stub that was alive is found dead (see the class docstring). ``known_alive`` is
        the first look, taken by ``start`` before it returns: a stub killed right after the server became ready must
        already be known alive, or its death would never be noticed."""
        assert self.process is not None
        while not self._stopping.wait(self.WATCH_INTERVAL) and self.process.poll() is None:
            stubs = stub_processes(self.process.pid)
            if any(not stubs.get(pid, False) for pid in known_alive):
                try:
                    self.reload_models()
                    self.restarts += 1
                except (urllib.error.URLError, OSError, ValueError):
                    continue  # the server is going down, or busy: try again at the next look
                stubs = stub_processes(self.process.pid)
            known_alive = {pid for pid, alive in stubs.items() if alive}

    def _log_tail(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return f"no log at {self.log_path}"
        errors = [line for line in lines if line.startswith("E")]
        return f"{self.log_path}: " + " | ".join((errors or lines)[-3:])

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown (Triton waits up to 30 s for in-flight requests), then a kill. After a reload the model
        instance whose stub died never finishes unloading and Triton waits out its whole timeout for it, so then
        only a few seconds are given."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self.process is None or self.process.poll() is not None:
            return
        if self.restarts:
            timeout = min(timeout, 5.0)
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.remove_shared_memory()

    def remove_shared_memory(self) -> list[Path]:
        """Delete this server's Python-backend regions in /dev/shm: a killed stub's region, and every region after a
        killed server, are otherwise left there (1 MiB or more each)."""
        leftovers = sorted(SHARED_MEMORY.glob(f"{self.shm_prefix}*"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""`panseg-rt serve`: start a local Triton Inference Server on a model repository (``python -m export.triton``)."""

from __future__ import annotations

import argparse
import re
import signal
import time
from pathlib import Path

from runtime.errors import PansegError
from runtime.serving.protocol import EXECUTION_ENV_PATH, MODEL_NAME
from runtime.serving.server import TritonServer, default_install, ensure_installed

PROG = "panseg-rt serve"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", metavar="REPO", nargs="?",
                        help="model repository written by python -m export.triton (omit with --install-only)")
    parser.add_argument("--http-port", type=int, default=None, help="HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: a free one)")
    parser.add_argument("--metrics-port", type=int, default=None, help="metrics port (default: a free one)")
    parser.add_argument("--wheel", type=Path, default=None,
                        help="nvidia-pytriton 0.7.0 wheel to take the server from (default: pip download it once)")
    parser.add_argument("--install-only", action="store_true",
                        help="only unpack the server and make its execution environment (in the panseg cache)")


def check_execution_env(repository: Path) -> None:
    """The environment the repository's config names must exist, or the model fails to load with a vaguer error."""
    config = repository / MODEL_NAME / "config.pbtxt"
    if not config.is_file():
        raise PansegError(f"{repository}: not a panseg model repository (no {MODEL_NAME}/config.pbtxt)")
    match = re.search(rf'key: "{EXECUTION_ENV_PATH}" value: {{ string_value: "([^"]*)" }}', config.read_text())
    if match and "$$" not in match.group(1) and not Path(match.group(1)).is_dir():
        raise PansegError(f"{config}: {EXECUTION_ENV_PATH} {match.group(1)} does not exist (export the repository "
                          "again on this machine, or pass --execution-env to python -m export.triton)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.repository is None and not args.install_only:
        raise PansegError("give a model repository (or --install-only)")
    repository = Path(args.repository) if args.repository is not None else None
    if repository is not None:
        check_execution_env(repository)  # before installing anything
    install = ensure_installed(default_install(), args.wheel)
    if repository is None:
        print(f"{PROG}: tritonserver in {install.server_dir}, execution environment {install.execution_env}")
        return 0
    server = TritonServer(repository, install, args.http_port, args.grpc_port, args.metrics_port)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too (it runs in its own session)
    try:
        server.start()
        print(f"{PROG}: serving {repository} at http://{server.url} (gRPC 127.0.0.1:{server.grpc_port}, metrics "
              f"127.0.0.1:{server.metrics_port}); log {server.log_path}; Ctrl-C stops it", flush=True)
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        raise PansegError(f"tritonserver exited with code {server.process.returncode} (log {server.log_path})")
    finally:
        server.stop()

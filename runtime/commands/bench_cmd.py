"""`panseg-rt bench`: latency of an exported model (ONNX Runtime or TensorRT), trtexec-style, a row per graph of a
query-sparse pair and one for the whole model.

Numbers are checked here rather than by argparse types, so that a bad value is one line and exit 1 like any other
bad input. The timing method is described in runtime/bench.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_write_json
from runtime.backends import add_backend_arguments
from runtime.bench import DEFAULT_KEPT_FRACTION, BenchOptions, bench_engine
from runtime.commands.threads_option import backend_options_with_threads
from runtime.errors import PansegError
from runtime.model_info import describe_precision

PROG = "panseg-rt bench"
_SHAPE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchOptions()
    parser.add_argument("--engine", required=True, metavar="MODEL",
                        help="exported model: .onnx (ONNX Runtime) or .plan/.engine (TensorRT, metadata in "
                             "MODEL.json); a query-sparse detector's mask graph is loaded and timed too")
    parser.add_argument("--batch", type=int, default=None, metavar="N",
                        help="images per model call (default: the engine's fixed batch, the TensorRT profile's opt "
                             "batch, else 1)")
    parser.add_argument("--shape", default=None, metavar="HxW",
                        help="input height x width (default: the engine's fixed size, the TensorRT profile's opt "
                             "size, else what the model's resize policy gives a 640x480 photo, e.g. 800x1066)")
    parser.add_argument("--iterations", type=int, default=defaults.iterations, metavar="N",
                        help=f"timed engine calls, at least (default {defaults.iterations})")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, metavar="N",
                        help=f"untimed engine calls first, at least (default {defaults.warmup})")
    parser.add_argument("--warmup-seconds", type=float, default=defaults.warmup_seconds, metavar="S",
                        help="keep warming up for at least S seconds (default 0)")
    parser.add_argument("--duration", type=float, default=defaults.duration, metavar="S",
                        help="keep timing for at least S seconds, beyond --iterations (default 0)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime threads per operator (default: one per physical core)")
    parser.add_argument("--padding-fraction", type=float, default=defaults.padding_fraction, metavar="F",
                        help="mark the right F of each image as padding in the padding mask (default 0: none)")
    parser.add_argument("--kept", type=int, default=None, metavar="N",
                        help="queries kept per image, whose masks the mask graph computes (default: "
                             f"{DEFAULT_KEPT_FRACTION:.0%} of the model's queries, 20 of detr's 100; random inputs do "
                             "not pass a trained model's threshold, so the best N are kept whatever their score)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random input images")
    parser.add_argument("--json", metavar="OUT", help="also write every number and the raw samples here (atomically)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_arguments(parser)


def parse_shape(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = _SHAPE.match(text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise PansegError(f"--shape must be HEIGHTxWIDTH with positive integers, e.g. 800x1066, got {text!r}")
    return int(match[1]), int(match[2])


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """``add_backend_arguments`` options plus --threads (ONNX Runtime only)."""
    return backend_options_with_threads(args, PROG)


def run(args: argparse.Namespace) -> int:
    options = BenchOptions(batch=args.batch, shape=parse_shape(args.shape), iterations=args.iterations,
                           warmup=args.warmup, warmup_seconds=args.warmup_seconds, duration=args.duration,
                           seed=args.seed, padding_fraction=args.padding_fraction, kept=args.kept,
                           progress=not args.no_progress)
    options.check()
    if args.json and Path(args.json).is_dir():
        raise PansegError(f"{args.json}: is a directory; --json needs a file name")
    result = bench_engine(args.engine, options, backend=args.backend, backend_options=backend_options(args))
    print("\n".join(result.summary_lines()))
    print(f"Precision: {describe_precision(args.engine)}")
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if args.json:
        try:
            atomic_write_json(args.json, result.to_json(), indent=2)
        except OSError as exc:
            raise PansegError(f"{args.json}: cannot write ({exc.strerror or exc})") from exc
        print(f"wrote {args.json}")
    return 0

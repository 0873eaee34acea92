"""`panseg-rt bench`: latency of an exported model (ONNX Runtime or TensorRT), trtexec-style, a row per graph of a
query-sparse pair and one for the whole model.

Numbers are checked by argparse types (a usage error, exit 2), as in every panseg command. The timing method is
described in runtime/bench.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_write_json
from runtime.backends import add_backend_arguments
from runtime.bench import DEFAULT_KEPT_FRACTION, BenchOptions, bench_engine
from runtime.commands.threads_option import backend_options_with_threads
from runtime.errors import PansegError
from runtime.subcommands import (
    add_deprecated,
    fraction,
    non_negative_float,
    non_negative_int,
    parse_hw,
    positive_int,
)

PROG = "panseg-rt bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s MODEL [options]"
    defaults = BenchOptions()
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="exported model: .onnx (ONNX Runtime) or .plan/.engine (TensorRT, metadata in "
                             "MODEL.json); a query-sparse detector's mask graph is loaded and timed too")
    add_deprecated(parser, "--engine", "MODEL (the first argument)", dest="legacy_model")
    parser.add_argument("--batch", type=positive_int, default=None, metavar="N",
                        help="images per model call (default: the engine's fixed batch, the TensorRT profile's opt "
                             "batch, else 1)")
    parser.add_argument("--shape", type=parse_hw, default=None, metavar="HxW",
                        help="input height x width (default: the engine's fixed size, the TensorRT profile's opt "
                             "size, else what the model's resize policy gives a 640x480 photo, e.g. 800x1066)")
    parser.add_argument("--iterations", type=positive_int, default=defaults.iterations, metavar="N",
                        help=f"timed engine calls, at least (default {defaults.iterations})")
    parser.add_argument("--warmup", type=non_negative_int, default=defaults.warmup, metavar="N",
                        help=f"untimed engine calls first, at least (default {defaults.warmup})")
    parser.add_argument("--warmup-seconds", type=non_negative_float, default=defaults.warmup_seconds, metavar="S",
                        help="keep warming up for at least S seconds (default 0)")
    parser.add_argument("--duration", type=non_negative_float, default=defaults.duration, metavar="S",
                        help="keep timing for at least S seconds, beyond --iterations (default 0)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="ONNX Runtime threads per operator (default: one per physical core)")
    parser.add_argument("--padding-fraction", type=fraction, default=defaults.padding_fraction, metavar="F",
                        help="mark the right F of each image as padding in the padding mask (default 0: none)")
    parser.add_argument("--kept", type=positive_int, default=None, metavar="N",
                        help="queries kept per image, whose masks the mask graph computes (default: "
                             f"{100 * DEFAULT_KEPT_FRACTION:.0f}%% of the model's queries, 20 of detr's 100; random "
                             "inputs do not pass a trained model's threshold, so the best N are kept whatever their "
                             "score)")
    parser.add_argument("--seed", type=non_negative_int, default=defaults.seed, help="seed of the random input images")
    parser.add_argument("--json", metavar="FILE", help="also write every number and the raw samples here (atomically)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_arguments(parser)


def finish_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fold the deprecated ``--engine MODEL`` into the positional MODEL."""
    if args.legacy_model is not None:
        if args.model is not None:
            parser.error(f"give the model once: {args.model} or --engine {args.legacy_model}")
        args.model = args.legacy_model
    if args.model is None:
        parser.error("the following arguments are required: MODEL")


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """``add_backend_arguments`` options plus --threads (ONNX Runtime only)."""
    return backend_options_with_threads(args, PROG)


def run(args: argparse.Namespace) -> int:
    options = BenchOptions(batch=args.batch, shape=args.shape, iterations=args.iterations,
                           warmup=args.warmup, warmup_seconds=args.warmup_seconds, duration=args.duration,
                           seed=args.seed, padding_fraction=args.padding_fraction, kept=args.kept,
                           progress=not args.no_progress)
    options.check()
    if args.json and Path(args.json).is_dir():
        raise PansegError(f"{args.json}: is a directory; --json needs a file name")
    result = bench_engine(args.model, options, backend=args.backend, backend_options=backend_options(args))
    print("\n".join(result.summary_lines()))
    print(f"Precision: {result.precision}")
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if args.json:
        try:
            atomic_write_json(args.json, result.to_json(), indent=2)
        except OSError as exc:
            raise PansegError(f"{args.json}: cannot write ({exc.strerror or exc})") from exc
        print(f"wrote {args.json}")
    return 0

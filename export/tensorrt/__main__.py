"""`python -m export.tensorrt model.onnx [-o model.plan]`: build a TensorRT engine and its model.plan.json side file.

A query-sparse export (model.onnx + model.masks.onnx) gives two engines in one run: model.plan and model.masks.plan,
each with its side file; the mask engine's profile is derived from the detector's.

Flags follow trtexec where trtexec has one, and the equivalent trtexec command is printed. Exit status 0 when the plan
and side file were written (or, with --dry-run, when everything checked out), 1 on bad input, an unsupported
operator, a missing TensorRT or a failed build (one line on stderr, no file written), 2 on malformed flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from export.tensorrt import BuildOptions, EnginePlan, build_engine_file, plan_engine
from export.tensorrt.build import MAX_OPTIMIZATION_LEVEL, MiB, format_command
from export.tensorrt.profile import MIN_SIDE
from runtime.subcommands import ArgumentParser, add_deprecated, bhw_type, report_errors
from runtime.trt_sidecar import format_shape

PROG = "python -m export.tensorrt"
input_bhw = bhw_type(MIN_SIDE)  # the shape flags: the shared BxHxW parser, at least one backbone stride a side


def _gib(text: str) -> int:
    """--workspace in GiB (fractions allowed) -> bytes, a whole number of MiB as trtexec's --memPoolSize takes."""
    try:
        mib = round(float(text) * 1024)
    except ValueError:
        mib = 0
    if mib < 1:
        raise argparse.ArgumentTypeError(f"expected a size in GiB of at least 1 MiB (e.g. 4 or 0.5), got {text!r}")
    return mib * MiB


def _level(text: str) -> int:
    try:
        level = int(text)
    except ValueError:
        level = -1
    if not 0 <= level <= MAX_OPTIMIZATION_LEVEL:
        raise argparse.ArgumentTypeError(f"expected an integer 0..{MAX_OPTIMIZATION_LEVEL}, got {text!r}")
    return level


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("onnx", help="model exported by python -m export.onnx (FP32, or FP16/INT8 made beforehand)")
    p.add_argument("-o", "--output", help="engine file, .plan or .engine (default: the ONNX name with .plan)")
    shapes = p.add_argument_group("optimization profile (batch x height x width; images and padding_mask alike; "
                                  "default: from the model's resize policy)")
    shapes.add_argument("--min-shape", type=input_bhw, metavar="BxHxW", help="smallest input, e.g. 1x800x800")
    shapes.add_argument("--opt-shape", type=input_bhw, metavar="BxHxW", help="shape to tune for, e.g. 1x800x1066")
    shapes.add_argument("--max-shape", type=input_bhw, metavar="BxHxW", help="largest input, e.g. 4x1333x1333")
    b = p.add_argument_group("builder")
    b.add_argument("--workspace", type=_gib, metavar="GiB", help="workspace memory pool limit (trtexec --memPoolSize; "
                   "default: TensorRT's, the GPU's memory)")
    b.add_argument("--timing-cache", type=Path, metavar="FILE", help="timing cache to load (if it exists) and save")
    b.add_argument("--builder-optimization-level", type=_level, metavar="N",
                   help=f"0..{MAX_OPTIMIZATION_LEVEL}: higher builds longer, may run faster (TensorRT's default: 3)")
    b.add_argument("--version-compatible", action="store_true",
                   help="the plan also loads under newer TensorRT versions (may be slower)")
    b.add_argument("--hardware-compatibility", choices=("none", "same", "ampere+"), default="none",
                   help="none: this GPU model; same: GPUs of this compute capability; ampere+: any Ampere or newer "
                        "GPU (may be slower)")
    b.add_argument("--device", type=int, default=0, metavar="N", help="CUDA device to build on (default: 0)")
    b.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="no TF32 tensor cores for FP32 layers (exact-fp32 parity checks; slower on Ampere+)")
    b.add_argument("--inspect", action="store_true",
                   help="also write the engine inspector's layer dump (names, precisions, tactics) to "
                        "<plan>.layers.json")
    b.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.add_argument("--dry-run", action="store_true",
                   help="check the model and flags, print the profile and the trtexec command, build nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_deprecated(p, "--quiet", "--no-progress", action="store_true")
    return p


def describe(plan: EnginePlan) -> str:
    """The profile(s) and the trtexec line(s), as printed before building (and by --dry-run); a query-sparse detector
    is followed by its mask engine."""
    text = _describe_one(plan)
    return text if plan.mask is None else f"{text}\n{_describe_one(plan.mask)}"


def _describe_one(plan: EnginePlan) -> str:
    width = max((len(n) for n in plan.profiles), default=0)
    if plan.kept is None:
        header = f"optimization profile, batch x height x width: {plan.shape_range.describe()}"
    else:
        low, opt, high = plan.kept
        header = (f"mask engine profile: kept queries min {low}, opt {opt}, max {high}; per-image tensors follow the "
                  f"detector's {plan.shape_range.describe()}")
    lines = [f"{plan.onnx_path} -> {plan.output} (+ {plan.sidecar.name})", header]
    for name, p in plan.profiles.items():
        lines.append(f"  {name:<{width}}  min {format_shape(p.min)}  opt {format_shape(p.opt)}  "
                     f"max {format_shape(p.max)}")
    if not plan.profiles:
        lines.append("  (no dynamic inputs: the model's shapes are fixed)")
    if plan.note:
        lines.append(f"note: {plan.note}")
    lines += ["equivalent trtexec command:", f"  {format_command(plan.trtexec())}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = BuildOptions(workspace_bytes=args.workspace, timing_cache=args.timing_cache,
                           builder_optimization_level=args.builder_optimization_level,
                           version_compatible=args.version_compatible,
                           hardware_compatibility=args.hardware_compatibility, verbose=args.verbose,
                           device=args.device, tf32=args.tf32, inspect=args.inspect)
    plan = plan_engine(args.onnx, args.output, min_shape=args.min_shape, opt_shape=args.opt_shape,
                       max_shape=args.max_shape, options=options)
    print(describe(plan), flush=True)
    if args.dry_run:
        return 0
    info = build_engine_file(plan, progress=not args.no_progress)
    size = plan.output.stat().st_size / MiB
    print(f"wrote {plan.output} ({size:.1f} MiB; TensorRT {info.tensorrt_version}, {info.gpu.describe()}, "
          f"built in {info.builder.get('build_seconds', 0):.0f} s) and {plan.sidecar}")
    if plan.mask is not None:
        print(f"wrote {plan.mask.output} ({plan.mask.output.stat().st_size / MiB:.1f} MiB) and {plan.mask.sidecar}; "
              f"run the pair with panseg-rt infer {plan.output} IMAGES -o DIR")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())

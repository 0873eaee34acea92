"""`python -m export.precision MODEL.onnx --precision fp16|int8 -o OUT.onnx`: a reduced-precision variant of an export.

A separate step on an exported fp32 model rather than a flag of ``python -m export.onnx``: the variant depends only on
the exported graphs (not on the checkpoint or PyTorch), calibration and the sensitivity sweep take minutes on a large
model while the export takes seconds, and one fp32 export can then give every variant (fp16, int8 for TensorRT, int8
for the CPU) with the same verified fp32 model as their reference.

Exit status 0 when the variant was written (and met the gate, if any), 1 on bad input or when the gate is not met
(one line on stderr; nothing is written then).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.onnx.verify.images import list_images
from export.precision.agreement import Agreement, compare_runs, run_images
from export.precision.calibration import CalibrationImages
from export.precision.int8 import CALIBRATION_METHODS, Int8Flavour
from export.precision.sensitivity import format_sweep, sensitivity_sweep
from export.precision.variant import Int8Plan, Source, write_fp16, write_int8
from runtime.atomic import atomic_write_bytes, atomic_write_json
from runtime.contract import FP16, INT8, INT8_TARGETS, INT8_TENSORRT, ONNX_SUFFIX, mask_graph_name
from runtime.errors import PansegError
from runtime.model import load_model
from runtime.subcommands import positive_int, report_errors

PROG = "python -m export.precision"
DEFAULT_SWEEP_TARGET = 0.99
DEFAULT_FLOAT_BLOCKS = 2


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="the fp32 export (.onnx; a query-sparse detector brings its mask graph)")
    p.add_argument("-o", "--output", required=True, help="the variant's .onnx (a pair also writes OUT.masks.onnx)")
    p.add_argument("--precision", choices=(FP16, INT8), required=True)
    p.add_argument("--int8-target", choices=INT8_TARGETS, default=INT8_TENSORRT,
                   help="tensorrt: S8S8 symmetric QDQ (what TensorRT builds); cpu: U8S8 for ONNX Runtime on CPUs")
    p.add_argument("--calibration-images", metavar="PATH", nargs="+", action="extend",
                   help="int8: folders and image files to calibrate on (preprocessed as inference does)")
    p.add_argument("--calibration-method", choices=sorted(CALIBRATION_METHODS), default="minmax")
    p.add_argument("--max-images", type=positive_int, default=16, help="use at most this many calibration images")
    p.add_argument("--float-blocks", metavar="BLOCK", nargs="*",
                   help="int8: keep exactly these blocks in float and skip the sensitivity sweep")
    p.add_argument("--sweep-target", type=_fraction, default=DEFAULT_SWEEP_TARGET,
                   help="int8 sweep: stop keeping blocks in float once this category agreement with fp32 is reached")
    p.add_argument("--max-float-blocks", type=int, default=DEFAULT_FLOAT_BLOCKS,
                   help="int8 sweep: keep at most this many blocks in float")
    p.add_argument("--cache-dir", metavar="DIR", help="calibration cache folder (default: the panseg cache)")
    v = p.add_argument_group("verification and gate (against the fp32 model, on the verification images)")
    v.add_argument("--verify-images", metavar="PATH", nargs="+", action="extend",
                   help="folders and image files (default: the calibration images)")
    v.add_argument("--min-agreement", type=_fraction, help="fail unless the mean category-map agreement is at least")
    v.add_argument("--max-pq-drop", type=float, help="fail if PQ against the fp32 output drops by more (points)")
    v.add_argument("--threads", type=positive_int, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", metavar="FILE", help="write the report (settings, sweep, verification) as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    return p


def check_args(args: argparse.Namespace) -> tuple[Path, Path]:
    model, output = Path(args.model), Path(args.output)
    if not model.is_file():
        raise PansegError(f"{model}: {'is not a file' if model.exists() else 'no such model file'}")
    if output.suffix != ONNX_SUFFIX:
        raise PansegError(f"{output}: the variant's name must end in {ONNX_SUFFIX}")
    if output.resolve() == model.resolve() or output.is_dir():
        raise PansegError(f"{output}: would overwrite the source model or a folder")
    if args.precision == INT8 and not args.calibration_images:
        raise PansegError(f"{model}: --precision int8 needs --calibration-images (folders or image files)")
    if args.json and Path(args.json).is_dir():
        raise PansegError(f"{args.json}: is a directory; --json needs a file name")
    return model, output


def gate_failure(agreement: Agreement, args: argparse.Namespace) -> str | None:
    if args.min_agreement is not None and agreement.category_agreement < args.min_agreement:
        return (f"category-map agreement with fp32 {agreement.category_agreement:.4f} is below --min-agreement "
                f"{args.min_agreement}")
    if args.max_pq_drop is not None and agreement.pq_drop > args.max_pq_drop:
        return f"PQ against the fp32 output dropped {agreement.pq_drop:.2f} points, more than --max-pq-drop " \
               f"{args.max_pq_drop}"
    return None


def format_agreement(a: Agreement) -> str:
    return (f"against fp32 on {a.images} images: category agreement {a.category_agreement:.4f} (worst "
            f"{a.worst_category_agreement:.4f}), segment agreement {a.segment_agreement:.4f}, same segments "
            f"{a.same_segment_rate:.2f}, same kept queries {a.same_kept_rate:.2f}, PQ {a.pq:.2f}; worst errors: "
            f"logits {a.max_logits_error:.3g}, boxes {a.max_boxes_error:.3g}, masks {a.max_masks_error:.3g}")


def run(args: argparse.Namespace) -> int:
    model_path, output = check_args(args)
    say = (lambda _: None) if args.no_progress else (lambda line: print(line, file=sys.stderr, flush=True))
    with load_model(model_path, "onnxruntime") as fp32:
        info = fp32.info
    source = Source.open(model_path, info)
    calibration = list_images(args.calibration_images, args.max_images) if args.calibration_images else []
    verify_paths = list_images(args.verify_images) if args.verify_images else calibration
    if not verify_paths and (args.min_agreement is not None or args.max_pq_drop is not None):
        raise PansegError(f"{model_path}: the gate needs --verify-images (or --calibration-images)")
    report: dict[str, Any] = {"model": str(model_path), "output": str(output), "precision": args.precision}
    say(f"{PROG}: fp32 reference on {len(verify_paths)} images")
    reference = run_images(model_path, verify_paths, args.threads) if verify_paths else []

    with tempfile.TemporaryDirectory(prefix="panseg-precision-") as tmp:
        staged = Path(tmp) / "out" / output.name
        staged.parent.mkdir()
        if args.precision == FP16:
            say(f"{PROG}: converting to float16")
            files = write_fp16(source, staged)
        else:
            plan = Int8Plan(Int8Flavour.for_target(args.int8_target), args.calibration_method,
                            CalibrationImages.load(calibration, info), Path(args.cache_dir) if args.cache_dir else None)
            report["int8"] = {"flavour": plan.flavour.to_json(), "method": plan.method, "images": len(calibration),
                              "images_sha256": plan.images.digest}
            float_blocks = _choose_float_blocks(args, source, plan, calibration, Path(tmp), report, say)
            say(f"{PROG}: quantizing ({args.int8_target} flavour), float blocks: {', '.join(float_blocks) or 'none'}")
            files, cached = write_int8(source, plan, float_blocks, staged, Path(tmp))
            report["int8"]["calibration_cached"] = cached
            report["int8"]["float_blocks"] = float_blocks
        agreement = None
        if verify_paths:
            say(f"{PROG}: verifying against fp32")
            agreement = compare_runs(reference, run_images(staged, verify_paths, args.threads), info.categories)
            report["verification"] = agreement.to_json()
        failure = gate_failure(agreement, args) if agreement is not None else None
        report["gate"] = {"min_agreement": args.min_agreement, "max_pq_drop": args.max_pq_drop,
                          "passed": failure is None}
        if failure is None:  # the mask graph first, so a detector never names a missing file
            for staged_file in sorted(files, key=lambda f: f == staged):
                atomic_write_bytes(output.with_name(staged_file.name), staged_file.read_bytes())
    if "sweep_table" in report:
        print(report.pop("sweep_table"))
    if agreement is not None:
        print(f"{args.precision} variant {format_agreement(agreement)}")
    if args.json:
        atomic_write_json(args.json, report, indent=1)
    if failure is not None:
        print(f"{PROG}: gate failed: {failure}; nothing written", file=sys.stderr)
        return 1
    mask_note = f" and its mask graph {output.with_name(mask_graph_name(output))}" if source.mask_path else ""
    print(f"wrote {output}{mask_note} ({args.precision}"
          + (f", {args.int8_target} flavour" if args.precision == INT8 else "") + ")")
    return 0


def _choose_float_blocks(args: argparse.Namespace, source: Source, plan: Int8Plan, images: list[Path], tmp: Path,
                         report: dict[str, Any], say: Any) -> list[str]:
    """--float-blocks as given, or the sensitivity sweep's choice (its table goes into the report)."""
    if args.float_blocks is not None:
        unknown = [b for b in args.float_blocks if b not in source.block_names]
        if unknown:
            raise PansegError(f"{source.path}: no block {unknown[0]!r} (blocks: {', '.join(source.block_names)})")
        return list(args.float_blocks)
    say(f"{PROG}: fp32 reference on the {len(images)} calibration images")
    reference = run_images(source.path, images, args.threads)
    counts = {b: len(source.blocks.get(b, [])) + len(source.mask_blocks.get(b, [])) for b in source.block_names}
    sweep_dir = tmp / "sweep"
    sweep_dir.mkdir()

    def measure(blocks: Sequence[str]) -> Agreement:
        variant = sweep_dir / "variant.onnx"
        write_int8(source, plan, blocks, variant, tmp)
        return compare_runs(reference, run_images(variant, images, args.threads), source.info.categories)

    chosen, rows = sensitivity_sweep(source.block_names, counts, measure, args.sweep_target, args.max_float_blocks,
                                     say)
    report["sensitivity"] = {"target_category_agreement": args.sweep_target,
                             "max_float_blocks": args.max_float_blocks, "rows": [r.to_json() for r in rows],
                             "chosen": chosen}
    report["sweep_table"] = format_sweep(rows)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())

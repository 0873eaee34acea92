"""`python -m export.onnx CKPT [-o model.onnx]`: export a DETR checkpoint (ours or facebookresearch/detr's) to ONNX.

Exit status 0 when the model was written and verified (or verification was skipped with --no-verify), 1 on bad input
(one line on stderr, no file written) or when verification fails (the model is kept as NAME.failed.onnx).

Only light modules are imported up front: a file that cannot be a checkpoint (a photo, an exported model) is refused
from its first bytes before torch and onnx are imported, in a fraction of a second instead of several.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from export.onnx import defaults
from runtime.atomic import atomic_write_json
from runtime.errors import PansegError
from runtime.filekind import refuse_non_checkpoint
from runtime.postprocess import DEFAULT_THRESHOLD
from runtime.subcommands import (
    ArgumentParser,
    add_deprecated,
    hw_type,
    non_negative_float,
    positive_int,
    probability,
    report_errors,
)
from train.args import DEFAULT_DATA

PROG = "python -m export.onnx"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VERIFY_FOLDER = Path(DEFAULT_DATA) / "val2017"  # the synthetic data set's val images, as `python -m train` uses
GENERATED_IMAGES = 4


def image_hw(text: str) -> tuple[int, int]:
    """--static-shape: the shared HxW parser, at least one backbone stride a side. MIN_SIDE lives with the TensorRT
    profile, which imports onnx, so it is read only when the flag is given."""
    from export.tensorrt.profile import MIN_SIDE

    return hw_type(MIN_SIDE)(text)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 32:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes of at least 32, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file (.pth): our training's, detr main.py's, or a detr release")
    p.add_argument("-o", "--output", help="output .onnx (default: the checkpoint's stem + .onnx, here)")
    p.add_argument("--categories", metavar="FILE",
                   help="COCO categories JSON (a list, or a dict with 'categories'); overrides the checkpoint's")
    p.add_argument("--opset", type=int, default=defaults.DEFAULT_OPSET, help="ONNX opset (17+ for TensorRT)")
    p.add_argument("--static-shape", type=image_hw, metavar="HxW",
                   help="fixed input height and width (default: dynamic)")
    p.add_argument("--batch", type=positive_int, help="fixed batch size (default: dynamic)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--full", action="store_true",
                   help="panoptic: detr's single graph with every query's mask, instead of the default query-sparse "
                        "pair NAME.onnx (detector) + NAME.masks.onnx (mask head on the kept queries only)")
    p.add_argument("--threshold", type=probability, default=DEFAULT_THRESHOLD,
                   help="default score threshold stored in the model (and used by verification)")
    v = p.add_argument_group("verification")
    v.add_argument("--no-verify", action="store_true", help="skip verification")
    v.add_argument("--verify-images", metavar="PATH", nargs="+", action="extend",
                   help="folders and image files to verify on (repeatable; default: "
                        f"{DEFAULT_VERIFY_FOLDER} here or in the repository, else {GENERATED_IMAGES} generated "
                        "synthetic images)")
    v.add_argument("--verify-sizes", type=_sizes, default=defaults.DEFAULT_SIZES, metavar="S1,S2",
                   help="shorter sides to verify at (dynamic shapes)")
    v.add_argument("--verify-max-images", type=positive_int, default=defaults.DEFAULT_MAX_IMAGES)
    v.add_argument("--atol-logits", type=non_negative_float, default=defaults.DEFAULT_LOGITS_ATOL)
    v.add_argument("--atol-boxes", type=non_negative_float, default=defaults.DEFAULT_BOXES_ATOL)
    v.add_argument("--atol-masks", type=non_negative_float, default=defaults.DEFAULT_MASKS_ATOL)
    v.add_argument("--rtol", type=non_negative_float, default=defaults.DEFAULT_RTOL,
                   help="added tolerance relative to the output's max |value|")
    v.add_argument("--min-pixel-agreement", type=probability, default=defaults.DEFAULT_MIN_PIXEL_AGREEMENT)
    v.add_argument("--json", metavar="FILE.json", help="also write the verification report here as JSON")
    add_deprecated(v, "--report", "--json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_deprecated(p, "--quiet", "--no-progress", action="store_true")
    return p


@contextlib.contextmanager
def verification_images(args: argparse.Namespace) -> Iterator[tuple[list[str] | None, str | None]]:
    """(--verify-images, None) when given (or None with --no-verify); else the default: the synthetic val images,
    from here or the repository, or, when there are none, a few generated synthetic images in a temporary folder for
    the duration. The second value is a note saying which default was used and what to pass instead."""
    if args.no_verify or args.verify_images is not None:
        yield args.verify_images, None
        return
    from export.onnx.verify import list_images

    advice = "pass --verify-images with folders or image files to verify on your own"
    for folder in (DEFAULT_VERIFY_FOLDER, REPO_ROOT / DEFAULT_VERIFY_FOLDER):
        try:
            list_images(folder)
        except PansegError:
            continue
        yield [str(folder)], f"verified on {folder} (no --verify-images; {advice})"
        return
    from PIL import Image

    from train.prepare.synthetic import generate_sample

    with tempfile.TemporaryDirectory(prefix="panseg-verify-") as tmp:
        for index in range(GENERATED_IMAGES):
            sample = generate_sample(0, "val", index, size=64)
            Image.fromarray(sample.image).save(Path(tmp) / f"synthetic_{index:03d}.png")
        yield [tmp], (f"verified on {GENERATED_IMAGES} generated synthetic images (no --verify-images and no "
                      f"{DEFAULT_VERIFY_FOLDER}; {advice})")


def run(args: argparse.Namespace) -> int:
    refuse_non_checkpoint(args.checkpoint)  # a wrong file is named now, not after seconds of importing torch
    if args.json and not str(args.json).endswith(".json"):
        raise PansegError(f"{args.json}: the report name must end in .json")
    return export_and_report(args)


def export_and_report(args: argparse.Namespace) -> int:
    """The export itself, for a file that may be a checkpoint: only here are torch and onnx imported."""
    from export.onnx.exporter import default_output_path, export_checkpoint
    from export.onnx.graph import ShapePolicy
    from export.onnx.verify import Tolerances, format_table, verdict_line

    height, width = args.static_shape or (None, None)
    policy = ShapePolicy(batch=args.batch, height=height, width=width)
    tolerances = Tolerances(args.atol_logits, args.atol_boxes, args.atol_masks, args.rtol, args.min_pixel_agreement)
    output = args.output or default_output_path(args.checkpoint)
    with verification_images(args) as (images, note):
        result = export_checkpoint(
            args.checkpoint, output, categories_file=args.categories, policy=policy, opset=args.opset,
            simplify=not args.no_simplify, run_verification=not args.no_verify, verify_images=images,
            verify_sizes=args.verify_sizes, verify_max_images=args.verify_max_images, tolerances=tolerances,
            threshold=args.threshold, progress=not args.no_progress, full=args.full)
    config = result.loaded.config
    kind = "panoptic" if config.masks else "detection-only"
    print(f"{result.loaded.path}: {kind} {config.backbone} model, {config.num_queries} queries, "
          f"{config.num_classes} classes, {len(result.loaded.categories)} categories "
          f"({result.loaded.categories_source}); exported in {result.export_seconds:.1f} s")
    if result.report is not None:
        print(format_table(result.report))
        print(f"(verified in {result.verify_seconds:.1f} s)")
        if note:
            print(f"({note})")
        if args.json:
            atomic_write_json(args.json, result.report.to_json(), indent=1)
    if not result.passed:
        kept = f"{result.path}" + (f" + {result.mask_path}" if result.mask_path else "")
        print(f"{PROG}: {verdict_line(result.report)}; model kept as {kept} for inspection", file=sys.stderr)
        return 1
    print(f"wrote {result.path}" + (f" and its mask graph {result.mask_path}" if result.mask_path else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())

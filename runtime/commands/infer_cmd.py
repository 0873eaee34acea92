"""`panseg-rt infer`: panoptic segmentation of image files with an exported model, in COCO panoptic format."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from runtime.backends import add_backend_arguments
from runtime.commands.threads_option import backend_options_with_threads
from runtime.infer import infer
from runtime.inputs import Failure
from runtime.outputs import FAILURES_FILE
from runtime.pipeline import InferOptions
from runtime.subcommands import add_deprecated, positive_int, probability

PROG = "panseg-rt infer"
EXIF_CHOICES = ("auto", "apply", "ignore")
MORE_POSITIONALS = "inputs"  # INPUT... may also follow the options: infer MODEL -o DIR *.jpg (runtime/subcommands.py)


def _max_size(text: str) -> int | str | None:
    if text.lower() in ("none", "model"):  # "model" is the default: argparse passes string defaults through type
        return None if text.lower() == "none" else "model"
    return positive_int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s MODEL INPUT... -o DIR [options]"
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="exported model: .onnx (ONNX Runtime) or .plan/.engine (TensorRT, metadata in MODEL.json)")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files (any extension), folders (their image files) or glob patterns (quote them; "
                             "** recurses)")
    add_deprecated(parser, "--engine", "MODEL (the first argument)", dest="legacy_model")
    add_deprecated(parser, "--input", "INPUT... (the arguments after MODEL)", action="extend", nargs="+",
                   dest="legacy_inputs")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="writes DIR/panoptic/<stem>.png, DIR/predictions.json (COCO panoptic results, readable "
                             "by panseg-rt eval and panopticapi), DIR/records/, DIR/timings.json")
    parser.add_argument("--threshold", type=probability, default=None,
                        help="keep queries whose class probability exceeds this (default: the model's, usually 0.85)")
    parser.add_argument("--nms-iou", type=probability, default=None, metavar="IOU",
                        help="box NMS before the mask merge: drop a thing query whose box overlaps a higher-scoring "
                             "one of the same category by IoU above this (off by default, as in detr; helps briefly "
                             "trained models that predict an object twice; also skips the duplicates' masks)")
    parser.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                        help="images per engine call (default 1). Images of the same processed size are batched "
                             "together first; only the leftovers of different sizes are padded to a common size, "
                             "and padding changes a DETR image's result slightly (detr's own batching does too)")
    parser.add_argument("--overlay", action="store_true",
                        help="also write DIR/overlay/<stem>.jpg: segments in category colours with labels, thing "
                             "boxes and scores over the photo")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="threads per operator of the engine (ONNX Runtime intra-op threads; default: one per "
                             "physical core; ignored with a warning for TensorRT); preprocessing of the next batch "
                             "runs in one more thread")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every image; by default a rerun skips the images already finished in DIR with "
                             "the same model and settings")
    parser.add_argument("--coco-json", metavar="FILE",
                        help="COCO (panoptic) JSON of the dataset the inputs belong to: inputs are matched to its "
                             "images by file name and take their image ids; PNGs are named like its panoptic "
                             "annotations (image name up to the first dot + .png). Default: image_id = file stem")
    parser.add_argument("--size", type=positive_int, default=None, metavar="N",
                        help="resize the shorter side to N (default: the model's, e.g. 800)")
    parser.add_argument("--max-size", type=_max_size, default="model", metavar="N",
                        help="limit the longer side to N, or 'none' (default: the model's, e.g. 1333)")
    parser.add_argument("--exif", choices=EXIF_CHOICES, default="auto",
                        help="EXIF orientation: apply it, or ignore it to keep the stored pixel layout as COCO "
                             "annotations do (auto: ignore with --coco-json, apply otherwise)")
    parser.add_argument("--no-prefetch", dest="prefetch", action="store_false",
                        help="preprocess each batch only when the engine wants it (no overlap; for timing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_arguments(parser)


def finish_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fold the deprecated ``--engine MODEL --input PATH...`` into the positional ``MODEL INPUT...``."""
    if args.legacy_model is not None:
        args.inputs = ([args.model] if args.model is not None else []) + args.inputs
        args.model = args.legacy_model
    args.inputs = args.inputs + (args.legacy_inputs or [])
    if args.model is None or not args.inputs:
        parser.error("the following arguments are required: MODEL INPUT...")


def _backend_options(args: argparse.Namespace) -> dict:
    return backend_options_with_threads(args, PROG)


def _report_failure(failure: Failure) -> None:
    tqdm.write(f"{PROG}: skipped {failure}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    exif = args.exif if args.exif != "auto" else ("ignore" if args.coco_json else "apply")
    options = InferOptions(threshold=args.threshold, batch_size=args.batch_size, overlay=args.overlay,
                           overwrite=args.overwrite, size=args.size, apply_exif=exif == "apply",
                           progress=not args.no_progress, prefetch=args.prefetch, nms_iou=args.nms_iou)
    if args.max_size != "model":
        options.max_size = args.max_size
    report = infer(args.model, args.inputs, args.output, options, coco_json=args.coco_json, backend=args.backend,
                   backend_options=_backend_options(args), on_failure=_report_failure)
    print(f"{PROG}: {report.summary_line()}")
    print(f"{PROG}: model precision {report.precision}")
    print(report.written_line())
    if report.failures:
        print(f"{PROG}: {len(report.failures)} of {report.total} images failed (listed above and in "
              f"{FAILURES_FILE})", file=sys.stderr)
        return 1
    return 0

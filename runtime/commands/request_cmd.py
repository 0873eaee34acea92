"""`panseg-rt request`: panoptic segmentation of images by a Triton server, written as `panseg-rt infer` writes."""

from __future__ import annotations

import argparse
import sys

from runtime.inputs import Failure
from runtime.outputs import FAILURES_FILE, PREDICTIONS_FILE
from runtime.serving.client import request_to_folder
from runtime.subcommands import positive_int

PROG = "panseg-rt request"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="the server's HTTP address, e.g. 127.0.0.1:8000")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="writes DIR/panoptic/<stem>.png and DIR/predictions.json (as panseg-rt infer)")
    parser.add_argument("--threshold", type=float, default=None, help="class probability threshold (default: "
                        "the model's)")
    parser.add_argument("--nms-iou", type=float, default=None, metavar="IOU", help="box NMS among things (off)")
    parser.add_argument("--concurrency", type=positive_int, default=4, metavar="N",
                        help="requests in flight at once (default 4)")


def _report(failure: Failure) -> None:
    print(f"{PROG}: failed {failure}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    done, failures = request_to_folder(args.url, args.images, args.output, args.threshold, args.nms_iou,
                                       args.concurrency, on_failure=_report)
    print(f"{PROG}: wrote {args.output}/{PREDICTIONS_FILE} ({done} images)")
    if failures:
        print(f"{PROG}: {len(failures)} images failed (listed above and in {FAILURES_FILE})", file=sys.stderr)
        return 1
    return 0

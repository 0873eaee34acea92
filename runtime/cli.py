"""`panseg-rt`: the runtime's command line (no torch). Subcommand modules are imported lazily."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from runtime.subcommands import run_subcommand

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("runtime.commands.bench_cmd", "engine-only latency and throughput of an exported model (trtexec-style)"),
    "eval": ("runtime.commands.eval_cmd", "PQ/SQ/RQ of panoptic predictions against ground truth (panopticapi rules)"),
    "infer": ("runtime.commands.infer_cmd", "panoptic segmentation of images with an exported model (COCO panoptic)"),
    "request": ("runtime.commands.request_cmd", "panoptic segmentation of images by a Triton server (panseg-rt serve)"),
    "serve": ("runtime.commands.serve_cmd", "start a local Triton Inference Server on a model repository"),
    "sheet": ("runtime.commands.sheet_cmd", "contact sheets of an infer output folder: image | segments | overlay"),
    "validate": ("runtime.commands.validate_cmd", "check a COCO panoptic JSON + PNG folder against the format"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommand("panseg-rt", "panseg's lean runtime (no torch).", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())

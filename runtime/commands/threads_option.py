"""``--threads N`` of the commands that run an engine (``infer``, ``bench``): one rule, so both behave the same.

``--threads`` is a shorthand for ONNX Runtime's ``--intra-op-threads``; TensorRT has no such setting, so there it is
ignored with a warning that names the option (a silently ignored option makes a user believe it took effect).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runtime.backends import backend_name_for, backend_options_from_args
from runtime.errors import PansegError


def backend_options_with_threads(args: argparse.Namespace, prog: str) -> dict[str, Any]:
    """``add_backend_arguments``' options plus ``--threads`` as ONNX Runtime's intra-op threads."""
    options = backend_options_from_args(args.model, args)
    if args.threads is None:
        return options
    if backend_name_for(args.model, args.backend) != "onnxruntime":
        print(f"{prog}: warning: --threads applies to ONNX Runtime only; ignored for TensorRT", file=sys.stderr)
        return options
    if args.intra_op_threads is not None and args.intra_op_threads != args.threads:
        raise PansegError(f"--threads {args.threads} and --intra-op-threads {args.intra_op_threads} disagree; "
                          "give one of them")
    options["intra_op_threads"] = args.threads
    return options

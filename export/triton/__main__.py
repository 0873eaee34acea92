"""``python -m export.triton MODEL -o REPO``: write a Triton model repository serving an exported model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from export.triton.config import INSTANCE_KINDS, ModelConfig
from export.triton.repository import ServingSettings, write_repository
from runtime.errors import PansegError
from runtime.serving.protocol import ENGINES, ENGINES_PYTHON, MODEL_NAME
from runtime.serving.server import default_install
from runtime.subcommands import non_negative_int, positive_int, report_errors

PROG = "python -m export.triton"
CPU_INSTANCES = 2


def _max_size(text: str) -> int | str:
    return "none" if text.lower() == "none" else positive_int(text)


def default_instances(kind: str, engines: str) -> int:
    """``CPU_INSTANCES`` where the python engines run on the CPU, else 1 (a GPU instance holds its own engine memory;
    native graph models batch instead). Why two: one request at a time leaves cores idle (decode, merge and PNG run
    on one thread, and a small model's engine threads scale poorly); two instances overlap two requests."""
    return CPU_INSTANCES if kind == "cpu" and engines == ENGINES_PYTHON else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("model", metavar="MODEL", help="exported model: .onnx (single graph or query-sparse "
                        "detector; its mask graph is taken along) or .plan (with its .json side file)")
    parser.add_argument("-o", "--output", required=True, metavar="REPO", help="model repository folder to write")
    parser.add_argument("--version", type=positive_int, default=1, help="model version folder (default 1)")
    parser.add_argument("--keep-versions", type=positive_int, default=1, metavar="N",
                        help="version policy: serve the latest N versions (default 1)")
    parser.add_argument("--max-batch-size", type=non_negative_int, default=8, metavar="N",
                        help="images per model call (default 8; 0: no batching)")
    parser.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_false",
                        help="answer each request alone instead of batching concurrent ones")
    parser.add_argument("--queue-delay-us", type=non_negative_int, default=0, metavar="US",
                        help="dynamic batching: how long a request may wait for others (default 0: requests that "
                             "queued while the instances were busy are batched, a lone one is not held back)")
    parser.add_argument("--instances", type=positive_int, default=None, metavar="N",
                        help=f"model instances (default {CPU_INSTANCES} for the python engines on the CPU, so that one "
                             "instance's decoding and encoding overlap the other's engine run; else 1); their ONNX "
                             "Runtime threads share the cores unless --threads is given")
    parser.add_argument("--kind", choices=sorted(INSTANCE_KINDS), default="cpu",
                        help="instance kind (default cpu; gpu for TensorRT plans)")
    parser.add_argument("--size", type=positive_int, default=None, metavar="N",
                        help="resize the shorter side to N (default: the model's)")
    parser.add_argument("--max-size", type=_max_size, default=None, metavar="N",
                        help="limit the longer side to N, or 'none' (default: the model's)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="ONNX Runtime threads per instance (default: the physical cores divided among the "
                             "instances, at least 1)")
    parser.add_argument("--engines", choices=ENGINES, default=ENGINES_PYTHON,
                        help="where the graphs run: python (default): inside the panseg model; native: as their own "
                             "onnxruntime_onnx / tensorrt_plan models (GPU servers), called by it through BLS")
    parser.add_argument("--execution-env", metavar="PATH", default=None,
                        help="the Python 3.11 environment the model runs in on the server (default: the one "
                             "panseg-rt serve makes in the panseg cache)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.max_size is not None and args.size is not None and args.max_size != "none" \
                and args.max_size < args.size:
            raise PansegError(f"--max-size {args.max_size} is below --size {args.size}")
        instances = args.instances or default_instances(args.kind, args.engines)
        config = ModelConfig(max_batch_size=args.max_batch_size, dynamic_batching=args.dynamic_batching,
                             queue_delay_us=args.queue_delay_us, instances=instances, kind=args.kind,
                             keep_versions=args.keep_versions,
                             execution_env=args.execution_env or str(default_install().execution_env))
        settings = ServingSettings(size=args.size, max_size=args.max_size, threads=args.threads, config=config,
                                   engines=args.engines)
        result = write_repository(args.model, args.output, settings, args.version)
        models = ", ".join([MODEL_NAME, *(p.parent.name for p in result.graph_configs.values())])
        print(f"{PROG}: wrote {result.repository} (models {models}, version {result.version_dir.name}: "
              f"{', '.join(p.name for p in result.engine_files)}); serve it with: "
              + ("a tritonserver with the onnxruntime/tensorrt backends (see its README.md)" if result.graph_configs
                 else f"panseg-rt serve {result.repository}"))
        return 0

    return report_errors(PROG, body)


if __name__ == "__main__":
    sys.exit(main())

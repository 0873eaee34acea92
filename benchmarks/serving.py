"""Serving benchmark: a Triton server against in-process ``panseg-rt infer`` on the same photos, in the same run.

    python -m benchmarks.serving -o benchmarks/results/serving              # demo model (random R50) at --size 320
    python -m benchmarks.serving --model model.onnx --images DIR -o DIR [--size N] [--concurrency 1,2,4,8]
        [--requests 24] [--threads 2]

What is measured: ``infer`` (the library call behind ``panseg-rt infer``, batch size 1) on the request images, then
for dynamic batching on and off a server started from ``python -m export.triton`` repositories of the same model
and settings, and at each concurrency C, C client threads (one connection each) sending the images in turn; every
request's latency is timed at the client (encode, HTTP, queue, model, decode). The served answers are compared with
infer's, byte for byte. Serving overhead at concurrency 1 = served p50 / infer's per-image latency - 1. Writes
report.md, report.json and serving.png into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import defaults, hardware
from benchmarks.command_line import shell_line
from benchmarks.markdown import table
from export.onnx import export_checkpoint
from export.triton import ModelConfig
from export.triton.repository import ServingSettings, write_repository
from runtime.contract import IMAGE_EXTENSIONS
from runtime.errors import PansegError
from runtime.infer import infer
from runtime.outputs import PANOPTIC_DIR
from runtime.pipeline import InferOptions
from runtime.serving.client import PansegClient
from runtime.serving.server import TritonServer, default_install, ensure_installed
from runtime.subcommands import positive_int

BATCHING = {"dynamic batching on": True, "dynamic batching off": False}


def _levels(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="exported .onnx (default: the demo's random R50, exported here)")
    parser.add_argument("--images", type=Path, help="folder of photos (default: scikit-image's four photographs)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="report folder (report.md, report.json, serving.png)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the model, photos, repositories and outputs (default: a temporary one)")
    parser.add_argument("--size", type=positive_int, default=320, help="shorter side (default 320, a small run)")
    parser.add_argument("--concurrency", type=_levels, default=[1, 2, 4, 8], help="client concurrency levels")
    parser.add_argument("--requests", type=positive_int, default=24, help="timed requests per level (default 24)")
    parser.add_argument("--threads", type=positive_int, default=2, help="ONNX Runtime threads, in-process and served")
    return parser


def demo_model(folder: Path, photos: list[Path], size: int) -> Path:
    """The demo's random, non-degenerate DETR-R50 (benchmarks/defaults.py), exported without verification."""
    checkpoint = folder / "demo.pth"
    defaults.make_random_checkpoint(checkpoint, photos, size=size)
    return export_checkpoint(checkpoint, folder / "model.onnx", run_verification=False, progress=False).path


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)}


def run_in_process(model: Path, photos: list[Path], requests: int, args: argparse.Namespace, out: Path
                   ) -> dict[str, Any]:
    """``infer`` on ``requests`` images (the photos in turn, as separate files) at batch size 1; ms per image."""
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(requests):
        target = inputs / f"{k:04d}{photos[k % len(photos)].suffix}"
        target.write_bytes(photos[k % len(photos)].read_bytes())
        files.append(target)
    options = InferOptions(size=args.size, progress=False, overwrite=True)
    backend = {"intra_op_threads": args.threads}
    infer(model, files[:2], out / "infer_warmup", options, backend_options=backend)
    report = infer(model, [str(f) for f in files], out / "infer", options, backend_options=backend)
    return {"images": report.done, "ms_per_image": round(1000 * report.wall_seconds / report.done, 2),
            "images_per_second": round(report.done / report.wall_seconds, 2), "output": out / "infer", "files": files}


def load_level(url: str, payloads: list[bytes], concurrency: int, warmup: int = 1) -> tuple[list[float], float,
                                                                                              list[Any]]:
    """``concurrency`` threads, each with its own connection, sharing ``payloads``: latencies, wall seconds, answers."""
    answers: list[Any] = [None] * len(payloads)
    latencies: list[float] = []
    lock = threading.Lock()
    next_index = iter(range(len(payloads)))
    barrier = threading.Barrier(concurrency + 1)

    def worker() -> None:
        with PansegClient(url) as client:
            for _ in range(warmup):
                client.segment(payloads[0])
            barrier.wait()
            while True:
                with lock:
                    k = next(next_index, None)
                if k is None:
                    return
                started = time.perf_counter()
                try:
                    answers[k] = client.segment(payloads[k])
                except Exception as exc:  # noqa: BLE001 - counted as an error in the report
                    answers[k] = str(exc)
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started, answers


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Everything measured, as report.json stores it; ``out`` is the work folder."""
    photos = (sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if args.images
              else defaults.write_default_photos(out / "photos"))
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or demo_model(out, photos, args.size)
    install = ensure_installed(default_install())
    in_process = run_in_process(model, photos, args.requests, args, out)
    payloads = [f.read_bytes() for f in in_process["files"]]
    expected = [(out / "infer" / PANOPTIC_DIR / f"{f.stem}.png").read_bytes() for f in in_process["files"]]
    rows = []
    for label, batching in BATCHING.items():
        repository = out / ("repository-batching" if batching else "repository-no-batching")
        if not repository.exists():
            config = ModelConfig(max_batch_size=8, dynamic_batching=batching, execution_env=str(install.execution_env))
            write_repository(model, repository, ServingSettings(size=args.size, threads=args.threads, config=config))
        with TritonServer(repository, install, log_path=out / f"server-{'on' if batching else 'off'}.log") as server:
            for concurrency in args.concurrency:
                latencies, wall, answers = load_level(server.url, payloads, concurrency)
                errors = sum(isinstance(a, str) for a in answers)
                identical = sum(not isinstance(a, str) and a.png == e for a, e in zip(answers, expected, strict=True))
                rows.append({"batching": label, "concurrency": concurrency, "requests": len(payloads),
                             "errors": errors, "identical_to_infer": identical,
                             "rps": round(len(payloads) / wall, 2), **percentiles(latencies)})
                print(f"{label}, concurrency {concurrency}: {rows[-1]}", flush=True)
    return {"model": model.name if args.model is None else str(args.model), "size": args.size,
            "threads": args.threads, "machine": hardware.machine(),
            "versions": hardware.versions(),
            "in_process": {k: v for k, v in in_process.items() if k not in ("output", "files")}, "served": rows}


def summary(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The issue's two ratios per batching mode: serving overhead at concurrency 1 (served p50 over infer's per-image
    latency, minus 1), and throughput at concurrency 4 over concurrency 1."""
    infer_ms = report["in_process"]["ms_per_image"]
    ratios = {}
    for label in BATCHING:
        rows = {r["concurrency"]: r for r in report["served"] if r["batching"] == label}
        ratios[label] = {"overhead_at_concurrency_1": round(rows[1]["p50"] / infer_ms - 1, 3) if 1 in rows else None,
                         "throughput_4_over_1": round(rows[4]["rps"] / rows[1]["rps"], 2)
                         if 1 in rows and 4 in rows else None}
    return ratios


def _rounded(values: Any) -> str:
    return "?" if not values else ", ".join(f"{v:.1f}" for v in values)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def markdown(report: dict[str, Any]) -> str:
    ip = report["in_process"]
    machine = report["machine"]
    lines = ["# Serving benchmark: Triton vs in-process panseg-rt infer", "",
             f"`{report['command']}`", "",
             f"Model `{Path(report['model']).name}` at shorter side {report['size']}, {report['threads']} ONNX Runtime "
             f"threads, on {machine.get('cpu', 'this CPU')} ({machine.get('logical_cpus', '?')} logical CPUs; load "
             f"average {_rounded(machine.get('load_average_1_5_15'))} when the run started: other work shared the "
             "machine if it exceeds the CPU count). One model instance; latency timed at the client per request "
             "(after one warm-up request per client).", "",
             f"In-process `panseg-rt infer` (batch size 1): **{ip['ms_per_image']} ms per image**, "
             f"{ip['images_per_second']} images/s over {ip['images']} images.", ""]
    lines += table(["batching", "concurrency", "requests", "errors", "identical to infer", "req/s", "p50 ms",
                    "p90 ms", "p99 ms"],
                   [[r["batching"], r["concurrency"], r["requests"], r["errors"],
                     f"{r['identical_to_infer']}/{r['requests']}", r["rps"], r["p50"], r["p90"], r["p99"]]
                    for r in report["served"]])
    lines += ["Targets (issue #17): serving overhead at concurrency 1 <= 15% of the in-process per-image latency; "
              "throughput at concurrency 4 >= 1.3x concurrency 1.", ""]
    lines += table(["batching", "overhead at concurrency 1", "throughput 4 / 1"],
                   [[label, _percent(r["overhead_at_concurrency_1"]),
                     "n/a" if r["throughput_4_over_1"] is None else f"{r['throughput_4_over_1']}x"]
                    for label, r in summary(report).items()])
    lines += ["![requests per second and latency by concurrency](serving.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label in BATCHING:
        rows = [r for r in report["served"] if r["batching"] == label]
        levels = [r["concurrency"] for r in rows]
        left.plot(levels, [r["rps"] for r in rows], marker="o", label=label)
        right.plot(levels, [r["p50"] for r in rows], marker="o", label=f"{label}, p50")
        right.plot(levels, [r["p99"] for r in rows], marker="x", linestyle="--", label=f"{label}, p99")
    left.axhline(report["in_process"]["images_per_second"], color="gray", linestyle=":", label="in-process infer")
    right.axhline(report["in_process"]["ms_per_image"], color="gray", linestyle=":", label="in-process infer")
    left.set(xlabel="concurrency", ylabel="requests / s", title="throughput")
    right.set(xlabel="concurrency", ylabel="ms", title="latency per request")
    for axis in (left, right):
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        with defaults.temporary_folder("panseg-serving-") as scratch:
            report = run(args, args.work or Path(scratch))
    except PansegError as exc:
        print(f"python -m benchmarks.serving: error: {exc}", file=sys.stderr)
        return 1
    report = {"command": shell_line([sys.executable, "-m", "benchmarks.serving", *argv], python="python"), **report,
              "summary": summary(report)}
    (args.output / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.output / "report.md").write_text(markdown(report))
    plot(report, args.output / "serving.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmark: a Triton server against in-process ``panseg-rt infer`` on the same images, in the same run.

    python -m benchmarks.serving --model demo/model.onnx --images demo/data/val2017 -o DIR
        [--configs 2x1b,2x1,2x2b,1x2b] [--concurrency 1,2,4,8] [--requests 24] [--rounds 3] [--threshold T]
        [--size N]
    python -m benchmarks.serving -o DIR      # no model: a random R50 at --size 320 on scikit-image photos

The resize is the model's own (its metadata; the demo model's is 128) unless --size is given. Each serving
configuration ``IxT`` is I model instances with T ONNX Runtime threads each, ``b`` for dynamic batching on. For each,
a server on an ``export.triton`` repository of that configuration, and --rounds times in turn: ``infer`` (the
library call behind ``panseg-rt infer``, batch size 1, the same engine options) on the request images, the
baseline; then at each concurrency C, C client threads (one connection each) sending the images in turn. Rounds
spread a shared machine's changing load over the baseline and every level alike. Every request's latency is timed
at the client; the served answers are compared with infer's, byte for byte. Serving overhead at concurrency 1 =
mean served latency (1 / requests per second) / infer's mean per-image latency - 1, in wall and in CPU time;
throughput ratio = requests/s at concurrency 4 / at concurrency 1.

Where the time goes (benchmarks/serving_accounting.py): per request, CPU milliseconds of the client, the tritonserver
process and the model's stub processes (against infer's CPU per image), and Triton's own timers (queue, compute
input / infer / output, the whole request inside the server); and the stub's stages (decode + preprocess, engine,
merge, PNG, JSON) timed in this process without Triton (benchmarks/serving_stages.py), so that the stubs' CPU in the
server minus that is what the Python backend adds. Writes report.md, report.json and serving.png.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import defaults, hardware
from benchmarks.command_line import shell_line
from benchmarks.markdown import table
from benchmarks.serving_accounting import Snapshot, per_request
from benchmarks.serving_stages import STAGES, stage_cpu_ms
from export.triton import ModelConfig
from export.triton.repository import ServingSettings, write_repository
from runtime.atomic import atomic_write_bytes
from runtime.contract import IMAGE_EXTENSIONS
from runtime.errors import PansegError
from runtime.infer import infer
from runtime.model import load_model
from runtime.outputs import PANOPTIC_DIR
from runtime.pipeline import InferOptions
from runtime.serving.client import PansegClient
from runtime.serving.server import TritonServer, default_install, ensure_installed
from runtime.serving.triton_model import engine_options
from runtime.subcommands import positive_int

RANDOM_MODEL_SIZE = 320  # shorter side of the random R50 made when no --model is given
OVERHEAD_TARGET = 0.15  # issue #17: serving overhead at concurrency 1 at most 15% of infer's per-image latency
THROUGHPUT_TARGET = 1.3  # issue #17: requests/s at concurrency 4 at least 1.3x concurrency 1
DEFAULT_INFER = "panseg-rt infer"  # the in-process baseline with infer's own defaults (all cores, spinning threads)
# 2x1b: export.triton's default on 2 cores; 1x2b: one instance on all cores (the old default)
DEFAULT_CONFIGS = "2x1b,2x1,2x2b,1x2b"
_CONFIG = re.compile(r"^(\d+)x(\d+)(b?)$")


@dataclass(frozen=True)
class Configuration:
    """One way to serve: model instances, ONNX Runtime threads per instance, dynamic batching on or off."""

    instances: int
    threads: int
    batching: bool

    @classmethod
    def parse(cls, text: str) -> Configuration:
        match = _CONFIG.match(text.strip())
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise argparse.ArgumentTypeError(f"expected INSTANCESxTHREADS with an optional b (batching), e.g. 2x1b; "
                                             f"got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)), bool(match.group(3)))

    @property
    def name(self) -> str:
        return f"{self.instances}x{self.threads}{'b' if self.batching else ''}"

    @property
    def label(self) -> str:
        return (f"{self.instances} instance{'s' * (self.instances > 1)} x {self.threads} thread"
                f"{'s' * (self.threads > 1)}, batching {'on' if self.batching else 'off'}")


def _levels(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _configurations(text: str) -> list[Configuration]:
    return [Configuration.parse(part) for part in text.split(",") if part.strip()]


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="exported .onnx, e.g. demo/model.onnx (default: a random R50, "
                        "exported here)")
    parser.add_argument("--images", type=Path, help="folder of images, e.g. demo/data/val2017 (default: "
                        "scikit-image's four photographs)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="report folder (report.md, report.json, serving.png)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the model, photos, repositories and outputs (default: a temporary one)")
    parser.add_argument("--size", type=positive_int, default=None,
                        help=f"shorter side (default: the model's; {RANDOM_MODEL_SIZE} for the random R50)")
    parser.add_argument("--threshold", type=_threshold, default=None,
                        help="score threshold, in-process and in every request (default: the model's)")
    parser.add_argument("--configs", type=_configurations, default=_configurations(DEFAULT_CONFIGS),
                        help="serving configurations INSTANCESxTHREADS[b] (b: dynamic batching on, no queue delay), "
                             f"comma-separated (default {DEFAULT_CONFIGS})")
    parser.add_argument("--concurrency", type=_levels, default=[1, 2, 4, 8], help="client concurrency levels")
    parser.add_argument("--requests", type=positive_int, default=24,
                        help="timed requests per level and round (default 24)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="rounds per configuration, each running infer and then every level (default 3)")
    return parser


def random_model(folder: Path, photos: list[Path], size: int) -> Path:
    """The benchmarks' random, non-degenerate DETR-R50 (benchmarks/defaults.py), exported without verification."""
    from export.onnx import export_checkpoint

    checkpoint = folder / "demo.pth"
    defaults.make_random_checkpoint(checkpoint, photos, size=size)
    return export_checkpoint(checkpoint, folder / "model.onnx", run_verification=False, progress=False).path


def model_size(model: Path) -> int:
    """The shorter side the model's metadata says it is evaluated at."""
    with load_model(model, None, {"optimized_cache": False}) as loaded:
        return loaded.info.resize.size


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)}


def request_files(photos: list[Path], requests: int, folder: Path) -> list[Path]:
    """``requests`` image files, the photos in turn (separate files, so infer does each one's work)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(requests):
        target = folder / f"{k:04d}{photos[k % len(photos)].suffix}"
        target.write_bytes(photos[k % len(photos)].read_bytes())
        files.append(target)
    return files


def run_in_process(model: Path, files: list[Path], backend: dict[str, Any], args: argparse.Namespace, out: Path
                   ) -> dict[str, Any]:
    """``infer`` on ``files`` at batch size 1 with the engine options ``backend``: wall and CPU ms per image (CPU of
    the whole process: engine threads and the prefetch thread)."""
    options = InferOptions(size=args.size, threshold=args.threshold, progress=False, overwrite=True)
    infer(model, [str(f) for f in files[:2]], out / "warmup", options, backend_options=backend)
    cpu = time.process_time()
    report = infer(model, [str(f) for f in files], out, options, backend_options=backend)
    cpu = time.process_time() - cpu
    return per_image(report.done, report.wall_seconds, cpu)


def per_image(images: int, wall_seconds: float, cpu_seconds: float) -> dict[str, Any]:
    """An infer baseline: its totals, and wall and CPU ms per image."""
    return {"images": images, "wall_seconds": wall_seconds, "cpu_seconds": cpu_seconds,
            "ms_per_image": round(1000 * wall_seconds / images, 2),
            "cpu_ms_per_image": round(1000 * cpu_seconds / images, 2),
            "images_per_second": round(images / wall_seconds, 2)}


def combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several infer runs as one: their images, wall and CPU seconds added up."""
    return per_image(*(sum(r[k] for r in runs) for k in ("images", "wall_seconds", "cpu_seconds")))


def load_level(url: str, payloads: list[bytes], concurrency: int, threshold: float | None = None, warmup: int = 2
               ) -> tuple[list[float], float, list[Any], float]:
    """``concurrency`` threads, each with its own connection, sharing ``payloads``: latencies, wall seconds, answers
    and the client threads' CPU seconds (encoding, HTTP, decoding) over the timed requests."""
    answers: list[Any] = [None] * len(payloads)
    latencies: list[float] = []
    cpu: list[float] = []
    lock = threading.Lock()
    next_index = iter(range(len(payloads)))
    barrier = threading.Barrier(concurrency + 1)

    def worker() -> None:
        with PansegClient(url) as client:
            for _ in range(warmup):
                client.segment(payloads[0], threshold)
            barrier.wait()
            started_cpu = time.thread_time()
            while True:
                with lock:
                    k = next(next_index, None)
                if k is None:
                    break
                started = time.perf_counter()
                try:
                    answers[k] = client.segment(payloads[k], threshold)
                except Exception as exc:  # noqa: BLE001 - counted as an error in the report
                    answers[k] = str(exc)
                with lock:
                    latencies.append(time.perf_counter() - started)
            with lock:
                cpu.append(time.thread_time() - started_cpu)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started, answers, sum(cpu)


def serve_configuration(model: Path, config: Configuration, files: list[Path], args: argparse.Namespace, out: Path
                        ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One server on a repository of ``config``. ``args.rounds`` times in turn: infer in-process with the same engine
    options (the baseline), then each concurrency level; so that a machine whose load drifts (a shared one) weighs
    on the baseline and on every level alike. Returns the baseline and a row per level (latency, throughput, answers
    checked against infer's, where each request's time went), each summed over the rounds."""
    install = ensure_installed(default_install())
    repository = out / f"repository-{config.name}"
    if not repository.exists():
        model_config = ModelConfig(max_batch_size=8, dynamic_batching=config.batching, instances=config.instances,
                                   execution_env=str(install.execution_env))
        write_repository(model, repository, ServingSettings(size=args.size, threads=config.threads,
                                                            config=model_config))
    options = engine_options(str(config.threads), config.instances)
    payloads = [f.read_bytes() for f in files]
    baselines: list[dict[str, Any]] = []
    levels: dict[int, list[tuple[list[float], float, list[Any], float, Snapshot, Snapshot]]] = {
        c: [] for c in args.concurrency}
    with TritonServer(repository, install, log_path=out / f"server-{config.name}.log") as server:
        assert server.process is not None
        # every instance's first engine runs (slower: ORT's first call) before anything is timed
        load_level(server.url, payloads[:2 * config.instances], config.instances, args.threshold)
        for round_ in range(args.rounds):
            baseline = out / f"infer-{config.name}-{round_}"
            baselines.append(run_in_process(model, files, options, args, baseline))
            if round_ == 0:
                expected = [(baseline / PANOPTIC_DIR / f"{f.stem}.png").read_bytes() for f in files]
            for concurrency in args.concurrency:
                before = Snapshot.take(server.process.pid, server.metrics_port)
                measured = load_level(server.url, payloads, concurrency, args.threshold)
                levels[concurrency].append((*measured, before, Snapshot.take(server.process.pid,
                                                                             server.metrics_port)))
    rows = []
    for concurrency, runs in levels.items():
        latencies = [t for run in runs for t in run[0]]
        wall = sum(run[1] for run in runs)
        answers = [a for run in runs for a in run[2]]
        requests = len(answers)
        identical = sum(not isinstance(a, str) and a.png == e for a, e in zip(answers, expected * len(runs),
                                                                                strict=True))
        accounting = per_request([(run[4], run[5]) for run in runs], sum(run[3] for run in runs))
        cpu_ms = sum(accounting.get(f"cpu_{role}_ms") or 0.0 for role in ("client", "server", "stubs"))
        rows.append({"config": config.name, "concurrency": concurrency, "requests": requests,
                     "errors": sum(isinstance(a, str) for a in answers), "identical_to_infer": identical,
                     "rps": round(requests / wall, 2), **percentiles(latencies), **accounting,
                     "cores_used": round(cpu_ms * requests / wall / 1000, 2)})
        print(f"{config.label}, concurrency {concurrency}: {rows[-1]}", flush=True)
    return combined(baselines), rows


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Everything measured, as report.json stores it; ``out`` is the work folder."""
    photos = (sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if args.images
              else defaults.write_default_photos(out / "photos"))
    if not photos:
        raise PansegError(f"{args.images}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        args.size = args.size or RANDOM_MODEL_SIZE
    model = args.model or random_model(out, photos, args.size)
    size = args.size or model_size(model)
    files = request_files(photos, args.requests, out / "inputs")
    in_process = {DEFAULT_INFER: run_in_process(model, files, {}, args, out / "infer-default")}
    print(f"infer with its default engine options: {in_process[DEFAULT_INFER]}", flush=True)
    served = []
    for config in args.configs:
        options = engine_options(str(config.threads), config.instances)
        stages = stage_cpu_ms(model, files, options, args.size, args.threshold)
        in_process[config.name], rows = serve_configuration(model, config, files, args, out)
        in_process[config.name]["stub_stages_cpu"] = stages
        print(f"infer with {config.name}'s engine options {options}: {in_process[config.name]}", flush=True)
        served += rows
    return {"model": "random R50" if args.model is None else str(args.model), "size": size,
            "threshold": args.threshold, "images": len(photos), "rounds": args.rounds,
            "configs": {c.name: c.label for c in args.configs}, "machine": hardware.machine(),
            "versions": hardware.versions(), "in_process": in_process, "served": served}


def summary(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's two ratios per configuration: serving overhead at concurrency 1 (the mean served latency, 1 / the
    requests per second, over the mean per-image latency of infer with the same engine options, in the same rounds,
    minus 1; a p50 against infer's mean flattered serving on a noisy machine) and requests/s at concurrency 4 over
    concurrency 1; and whether both meet the targets. The same overhead in CPU time (client + server + stubs against
    infer's process), which other work on the machine does not inflate. Also the mean served latency at concurrency
    1 over ``panseg-rt infer`` with its default engine options: what a user choosing between the two sees."""
    ratios = {}
    default_ms = report["in_process"][DEFAULT_INFER]["ms_per_image"]
    for name in report["configs"]:
        baseline = report["in_process"][name]
        rows = {r["concurrency"]: r for r in report["served"] if r["config"] == name}
        one = rows.get(1)
        served_ms = 1000 / one["rps"] if one else None  # mean per request, as infer's is a mean per image
        cpu_ms = sum(one.get(f"cpu_{role}_ms") or 0.0 for role in ("client", "server", "stubs")) if one else None
        overhead = round(served_ms / baseline["ms_per_image"] - 1, 3) if served_ms else None
        ratio = round(rows[4]["rps"] / one["rps"], 2) if one and 4 in rows else None
        ratios[name] = {"overhead_at_concurrency_1": overhead, "throughput_4_over_1": ratio,
                        "cpu_overhead_at_concurrency_1": round(cpu_ms / baseline["cpu_ms_per_image"] - 1, 3)
                        if cpu_ms else None,
                        "over_default_infer": round(served_ms / default_ms - 1, 3) if served_ms else None,
                        "meets_targets": None if overhead is None or ratio is None
                        else overhead <= OVERHEAD_TARGET and ratio >= THROUGHPUT_TARGET}
    return ratios


def _rounded(values: Any) -> str:
    return "?" if not values else ", ".join(f"{v:.1f}" for v in values)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def _value(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _stub_stages(report: dict[str, Any]) -> list[str]:
    """The stub's work by stage, in this process (benchmarks/serving_stages.py), against the stubs' CPU per request
    in the server at concurrency 1: the difference is what the Python backend adds."""
    rows = []
    for name in report["configs"]:
        stages = report["in_process"][name].get("stub_stages_cpu")
        served = next((r for r in report["served"] if r["config"] == name and r["concurrency"] == 1), None)
        if not stages or not served or served.get("cpu_stubs_ms") is None:
            continue
        rows.append([name, *(stages[f"{s}_ms"] for s in STAGES), stages["service_ms"], served["cpu_stubs_ms"],
                     round(served["cpu_stubs_ms"] - stages["service_ms"], 2)])
    if not rows:
        return []
    return ["The stub's work per request, CPU ms, run in this process without Triton (same engine options), against "
            "the stubs' CPU per request in the server at concurrency 1:", "",
            *table(["config", "decode + preprocess", "engine", "merge", "PNG", "JSON", "service (all, with its "
                    "scratch file)", "stubs in the server", "Python backend adds"], rows)]


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    threshold = "the model's" if report.get("threshold") is None else report["threshold"]
    lines = ["# Serving benchmark: Triton vs in-process panseg-rt infer", "",
             f"`{report['command']}`", "",
             f"Model `{report['model']}` at shorter side {report['size']}, threshold {threshold}, "
             f"{report['images']} distinct images, on {machine.get('cpu', 'this CPU')} "
             f"({machine.get('logical_cpus', '?')} logical CPUs; load average "
             f"{_rounded(machine.get('load_average_1_5_15'))} when the run started: other work shared the machine if "
             "it exceeds the CPU count). Configuration IxT[b]: I model instances x T ONNX Runtime threads each, b: "
             f"dynamic batching on. {report.get('rounds', 1)} rounds per configuration (infer, then every level). "
             "Latency timed at the client per request (after two warm-up requests per client).",
             "", f"In-process `panseg-rt infer` (batch size 1): with its defaults (`{DEFAULT_INFER}`: one ONNX Runtime "
             "thread per physical core, threads spinning between runs), then in each round of a configuration with "
             "its engine options (its threads; no spinning with several instances), summed over the rounds:", ""]
    lines += table(["engine options of", "ms per image", "CPU ms per image", "images/s"],
                   [[name, r["ms_per_image"], r["cpu_ms_per_image"], r["images_per_second"]]
                    for name, r in report["in_process"].items()])
    lines += table(["config", "concurrency", "errors", "identical to infer", "req/s", "p50 ms", "p90 ms", "p99 ms"],
                   [[r["config"], r["concurrency"], r["errors"], f"{r['identical_to_infer']}/{r['requests']}",
                     r["rps"], r["p50"], r["p90"], r["p99"]] for r in report["served"]])
    lines += ["Where a request's time goes, per request: CPU ms of the client threads, the tritonserver process and "
              "the model's stub processes (compare infer's CPU ms per image above), and Triton's timers (mean ms: "
              "queue, compute input, compute infer = the stub's execute with its IPC, compute output, and the whole "
              "request inside the server); requests per model execution (dynamic batches); cores used = all that CPU "
              "over the level's wall time (work overlapping: above 1; a busy machine caps it).", ""]
    lines += table(["config", "concurrency", "CPU client", "CPU server", "CPU stubs", "queue", "input", "infer",
                    "output", "in server", "requests / execution", "cores used"],
                   [[r["config"], r["concurrency"], *(_value(r.get(k)) for k in (
                       "cpu_client_ms", "cpu_server_ms", "cpu_stubs_ms", "queue_ms", "compute_input_ms",
                       "compute_infer_ms", "compute_output_ms", "request_ms", "requests_per_execution",
                       "cores_used"))]
                    for r in report["served"]])
    lines += _stub_stages(report)
    lines += [f"Targets (issue #17): serving overhead at concurrency 1 <= {OVERHEAD_TARGET:.0%} of the in-process "
              f"per-image latency; throughput at concurrency 4 >= {THROUGHPUT_TARGET}x concurrency 1.", ""]
    lines += table(["config", "overhead at concurrency 1", "throughput 4 / 1", "meets both",
                    "CPU overhead at concurrency 1", f"concurrency 1 vs {DEFAULT_INFER} defaults"],
                   [[f"{name} ({report['configs'][name]})", _percent(r["overhead_at_concurrency_1"]),
                     "n/a" if r["throughput_4_over_1"] is None else f"{r['throughput_4_over_1']}x",
                     {True: "yes", False: "no", None: "n/a"}[r["meets_targets"]],
                     _percent(r["cpu_overhead_at_concurrency_1"]), _percent(r["over_default_infer"])]
                    for name, r in report["summary"].items()])
    lines += ["![requests per second and latency by concurrency](serving.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in report["configs"]:
        rows = [r for r in report["served"] if r["config"] == name]
        levels = [r["concurrency"] for r in rows]
        line, = left.plot(levels, [r["rps"] for r in rows], marker="o", label=name)
        right.plot(levels, [r["p50"] for r in rows], marker="o", color=line.get_color(), label=f"{name}, p50")
        right.plot(levels, [r["p99"] for r in rows], marker="x", linestyle="--", color=line.get_color(),
                   label=f"{name}, p99")
    default = report["in_process"][DEFAULT_INFER]
    left.axhline(default["images_per_second"], color="gray", linestyle=":", label=DEFAULT_INFER)
    right.axhline(default["ms_per_image"], color="gray", linestyle=":", label=DEFAULT_INFER)
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
    atomic_write_bytes(args.output / "report.json", (json.dumps(report, indent=1, default=str) + "\n").encode())
    atomic_write_bytes(args.output / "report.md", markdown(report).encode("utf-8"))
    plot(report, args.output / "serving.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m benchmarks.mask_profile MODEL.onnx [MODEL2.onnx ...]`: where a query-sparse model's mask graph spends
its time, per operator type and per node, and how close each heavy node comes to this machine's fp32 peak.

Each MODEL is a query-sparse detector; its mask graph (``MODEL.masks.onnx``, named in its metadata) is profiled as
``panseg-rt bench`` runs it: on the detector's real outputs for one photo (``--image``, default scikit-image's
astronaut), at the model's resize policy, with each image keeping its ``--kept`` best queries (default 20 of detr's
100, ``runtime.bench.top_queries``). ONNX Runtime's profiler times every node (benchmarks/ort_profile.py); FLOP/s is
set against the fp32 matmul peak measured in the same run (benchmarks/hardware.py, as ``benchmarks.latency`` does).
Several models are profiled in one run, taking turns on the same photo, so their times compare (e.g. a mask
graph before and after an export change). Writes ``report.md`` and ``report.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks import hardware
from benchmarks.command_line import repo_relative, shell_line
from benchmarks.markdown import table
from benchmarks.ort_profile import aggregate, load_events, original_weights
from runtime.atomic import atomic_write_bytes, atomic_write_json
from runtime.bench import top_queries
from runtime.contract import DETECTOR_OUTPUTS, IMAGES, PADDING_MASK
from runtime.cpuinfo import cpu_model
from runtime.errors import PansegError
from runtime.model import load_model
from runtime.preprocess import load_and_preprocess, pad_batch
from runtime.sparse import kept_mask_feeds
from runtime.subcommands import positive_int, report_errors

PROG = "python -m benchmarks.mask_profile"
TOP_NODES = 15


def mask_inputs(model_path: Path, image: Path, kept: int, threads: int) -> tuple[Path, dict[str, np.ndarray]]:
    """(the mask graph's file, its feeds): the detector run on ``image``, its ``kept`` best queries kept."""
    options = {"providers": ("cpu",), "intra_op_threads": threads, "optimized_cache": False}
    with load_model(model_path, "onnxruntime", options) as model:
        if model.masks is None:
            raise PansegError(f"{model_path}: not a query-sparse model (no mask graph to profile)")
        info, mask_path = model.info, Path(model.masks.path)
        array, _ = load_and_preprocess(image, info.resize.size, info.resize.max_size)
        images, padding = pad_batch([array])
        det = {k: np.asarray(v) for k, v in model.detector.infer({IMAGES: images, PADDING_MASK: padding},
                                                                 list(DETECTOR_OUTPUTS)).items()}
    return mask_path, kept_mask_feeds(det, top_queries(kept))


def profiling_session(path: Path, threads: int, folder: Path) -> ort.InferenceSession:
    """``path`` under ONNX Runtime's profiler, with all graph optimizations as the runtime loads it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / path.stem)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profile_graphs(graphs: Sequence[tuple[Path, dict[str, np.ndarray]]], threads: int, warmup: int, runs: int,
                   rounds: int, folder: Path) -> list[Path]:
    """Each (graph, feeds) run ``warmup`` times, then ``runs`` times per round, the graphs taking turns (in reverse
    order every other round) so that a machine whose load drifts weighs on all of them alike; the raw profiles."""
    sessions = [profiling_session(path, threads, folder) for path, _ in graphs]
    for session, (_, feeds) in zip(sessions, graphs, strict=True):
        for _ in range(warmup):
            session.run(None, feeds)
    order = list(range(len(graphs)))
    for round_index in range(rounds):
        for k in (order if round_index % 2 == 0 else order[::-1]):
            for _ in range(runs):
                sessions[k].run(None, graphs[k][1])
    return [Path(session.end_profiling()) for session in sessions]


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _gflops(value: float) -> str:
    return f"{value / 1e9:.1f}" if value else "-"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def markdown(report: dict[str, Any]) -> str:
    peak = report["peak"]
    lines = [f"# Mask graph profile: {', '.join(m['name'] for m in report['models'])}", "",
             f"CPU {report['cpu']}, {report['threads']} intra-op threads, ONNX Runtime {report['onnxruntime']} "
             f"(ORT_ENABLE_ALL), load average {report['load_before']} before / {report['load_after']} after. "
             f"Mask graph on the detector's outputs for {report['image']} ({report['mask_inputs']['hs_kept'][0]} kept "
             f"queries), {report['warmup']} warmup + {report['rounds']} x {report['runs']} profiled runs per model "
             "(the models taking turns). Peak: "
             f"{peak['flops_per_second'] / 1e9:.1f} GFLOP/s ({peak['method']}, {peak['threads']} threads).",
             "", f"Command: `{report['command']}`", ""]
    if len(report["models"]) > 1:
        ops = list(dict.fromkeys(o["op_type"] for m in report["models"] for o in m["profile"]["ops"]))
        header = ["operator", *(m["name"] for m in report["models"])]
        rows = [[op, *(_ms(next((o["ms"] for o in m["profile"]["ops"] if o["op_type"] == op), 0.0))
                       for m in report["models"])] for op in ops]
        rows += [["**summed node time**", *(_ms(m["profile"]["node_ms"]) for m in report["models"])],
                 ["**model_run**", *(_ms(m["profile"]["run_ms"]) for m in report["models"])],
                 ["useful GFLOP/s", *(_gflops(m["profile"]["flops"] / (m["profile"]["run_ms"] / 1e3))
                                      for m in report["models"])]]
        lines += ["## Side by side (ms per run)", "", *table(header, rows)]
    for m in report["models"]:
        p = m["profile"]
        achieved = p["flops"] / (p["run_ms"] / 1e3)
        lines += [f"## {m['name']}", "", f"`{m['mask_graph']}`: model_run {_ms(p['run_ms'])} ms, nodes "
                  f"{_ms(p['node_ms'])} ms, {p['flops'] / 1e9:.2f} useful GFLOP, {achieved / 1e9:.1f} GFLOP/s "
                  f"({_share(achieved / peak['flops_per_second'])} of peak).", "", "Per operator type:", ""]
        lines += table(["operator", "nodes", "ms", "share", "GFLOP", "GFLOP/s", "of peak"],
                       [[o["op_type"], o["nodes"], _ms(o["ms"]), _share(o["share"]), _gflops(o["flops"]),
                         _gflops(o["flop_per_s"]), _share(o["share_of_peak"])] for o in p["ops"]])
        lines += [f"Slowest {TOP_NODES} nodes:", ""]
        lines += table(["node", "operator", "output", "ms", "share", "GFLOP (executed)", "GFLOP/s", "of peak"],
                       [[f"`{n['node']}`", n["op_type"], "x".join(map(str, n["output_shape"])), _ms(n["ms"]),
                         _share(n["share"]),
                         f"{_gflops(n['flops'])} ({_gflops(n['executed_flops'])})" if n["flops"] else "-",
                         _gflops(n["flop_per_s"]), _share(n["share_of_peak"])] for n in p["nodes"][:TOP_NODES]])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    p.add_argument("models", nargs="+", type=Path, help="query-sparse detectors (MODEL.onnx beside MODEL.masks.onnx)")
    p.add_argument("--image", type=Path, help="the photo (default: scikit-image's astronaut)")
    p.add_argument("--kept", type=positive_int, default=20, help="queries kept per image (default: 20)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--warmup", type=positive_int, default=1, help="first runs, left out of the averages (default: 1)")
    p.add_argument("--runs", type=positive_int, default=3, help="profiled runs per model and round (default: 3)")
    p.add_argument("--rounds", type=positive_int, default=2,
                   help="rounds in which the models take turns (default: 2); every run after the warmup is averaged")
    p.add_argument("--peak-size", type=positive_int, default=2048, help="matrix size of the fp32 peak measurement")
    p.add_argument("--peak-repeats", type=positive_int, default=10,
                   help="timed matmuls per peak measurement, the best counts (default: 10; more on a busy machine)")
    p.add_argument("--out", type=Path, default=Path("mask-profile"), help="folder for report.md and report.json")
    return p


def _best_peak(*measured: dict[str, Any]) -> dict[str, Any]:
    """The faster of the peak measurements (before and after profiling): on a shared machine the slower one is the
    one that lost more time to other work."""
    best = max(measured, key=lambda m: m["flops_per_second"])
    return {**best, "method": best["method"] + f", the best of {len(measured)} such measurements (before and after)"}


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    for model in args.models:
        if not model.is_file():
            raise PansegError(f"{model}: {'is not a file' if model.exists() else 'no such model file'}")
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = hardware.load_average()
    with tempfile.TemporaryDirectory(prefix="panseg-mask-profile-") as tmp:
        image = args.image
        if image is None:
            from benchmarks.defaults import write_default_photos
            image = write_default_photos(Path(tmp), ("astronaut",))[0]
        if not image.is_file():
            raise PansegError(f"{image}: no such image")
        inputs = [mask_inputs(model, image, args.kept, args.threads) for model in args.models]  # bad models fail here
        peak_before = hardware.matmul_peak(args.threads, args.peak_size, args.peak_repeats)
        raws = []
        for k, (model, raw) in enumerate(zip(args.models, profile_graphs(inputs, args.threads, args.warmup, args.runs,
                                                                          args.rounds, Path(tmp)), strict=True)):
            raws.append(args.out / f"{k}-{model.stem}.profile.json")
            atomic_write_bytes(raws[-1], raw.read_bytes())
        peak = _best_peak(peak_before, hardware.matmul_peak(args.threads, args.peak_size, args.peak_repeats))
    models = []
    unique = len({m.stem for m in args.models}) == len(args.models)
    for model, (mask_path, _), raw in zip(args.models, inputs, raws, strict=True):
        weights = original_weights(onnx.load(str(mask_path), load_external_data=False))
        profile = aggregate(load_events(raw), args.warmup, weights, peak["flops_per_second"])
        name = model.stem if unique else f"{model.parent.name}/{model.stem}"
        models.append({"name": name, "mask_graph": repo_relative(str(mask_path)),
                       "raw_profile": raw.name, "profile": profile.to_json()})
        print(f"{model}: mask graph {profile.run_ms:.1f} ms per run", file=sys.stderr)
    feeds = inputs[0][1]
    report = {"cpu": cpu_model(), "threads": args.threads, "onnxruntime": ort.__version__,
              "command": shell_line([sys.executable, "-m", "benchmarks.mask_profile", *argv]),
              "image": image.name, "mask_inputs": {k: list(v.shape) for k, v in feeds.items()},
              "warmup": args.warmup, "runs": args.runs, "rounds": args.rounds, "peak": peak, "load_before": load_before,
              "load_after": hardware.load_average(), "models": models}
    atomic_write_json(args.out / "report.json", report, indent=1)
    atomic_write_bytes(args.out / "report.md", markdown(report).encode("utf-8"))
    print(f"wrote {args.out / 'report.md'} and report.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return report_errors(PROG, lambda: run(args, argv))


if __name__ == "__main__":
    sys.exit(main())

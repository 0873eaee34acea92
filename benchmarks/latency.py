"""End-to-end latency of every available backend against PyTorch eager, same photos, same run, same threads.

    python -m benchmarks.latency -o bench/latency                        # DETR-R50 (random weights) on photos
    python -m benchmarks.latency --checkpoint ckpt.pth --images DIR -o DIR [--onnx model.onnx [int8.onnx ...]]
        [--onnx-full model_full.onnx] [--plan model.plan [...]] [--backends eager,onnxruntime,onnxruntime-full,tensorrt]
        [--size 800] [--batch 1,2] [--warmup N --iterations N] [--threads N]

Backends (benchmarks/pipelines.py): eager (PyTorch + detr's PostProcessPanoptic), onnxruntime (the runtime's infer
path on the exported model, CPU: the query-sparse pair by default), onnxruntime-full (the same on detr's single
graph, every query's mask), onnxruntime-cuda / onnxruntime-tensorrt (ONNX Runtime GPU providers) and tensorrt (a
.plan); those that cannot run here are listed in the report as skipped, with the reason. Without --onnx /
--onnx-full the checkpoint is exported (and verified) into the output folder first (model.onnx + model.masks.onnx,
model_full.onnx). Several --onnx (or --plan) files, e.g. the fp32 export and its precision variants from
python -m export.precision, are timed in the same run: one row per (backend, model), named and labelled with the
precision the model's metadata records, each with its speedup against eager and against the same backend's fp32 model
and its agreement with eager. Calls are interleaved round-robin across every backend and model
(benchmarks/interleave.py). FLOPs per stage are counted at each backend's own kept-query count in the run
(benchmarks/flops.py). The report (report.md, report.json, two PNGs) is described in benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks import defaults, hardware
from benchmarks.agreement import agreement
from benchmarks.command_line import repo_relative, shell_line
from benchmarks.detr_reference import detr_eval_batch
from benchmarks.flops import STAGE_DESCRIPTIONS, count_call_flops, kept_queries
from benchmarks.interleave import image_groups, run_interleaved
from benchmarks.pipelines import (
    BACKENDS,
    BackendSpec,
    EagerPipeline,
    ResizeSettings,
    batch_key,
    build_runtime_pipeline,
    run_names,
    unavailable_reason,
)
from benchmarks.report import JSON_VERSION, add_speedups, markdown, result_row, warnings_for, write_report
from export.onnx import export_checkpoint
from export.onnx.loading import LoadedCheckpoint, load_for_export
from runtime.backends import select_backend
from runtime.contract import FP32, IMAGE_EXTENSIONS
from runtime.errors import PansegError
from runtime.model_info import ModelInfo, parse_model_info
from runtime.postprocess import DEFAULT_THRESHOLD
from runtime.subcommands import ArgumentParser, add_deprecated, non_negative_int, positive_int

VERIFY_MAX_IMAGES = 2
REDUCED_PRECISION_NOTE = ("reduced-precision models (python -m export.precision) are credited with the same FLOPs as "
                          "fp32, so their share of peak is against the fp32 matmul peak; speedup vs fp32 compares "
                          "each with the same backend's fp32 model in this run")
SPARSE_EXPORT_NAME = "model.onnx"  # + model.masks.onnx
FULL_EXPORT_NAME = "model_full.onnx"


def _positive_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _backend_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {unknown or text!r}; choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.latency", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path,
                   help="model checkpoint (default: DETR-R50 panoptic with random, deliberately non-degenerate "
                        "weights)")
    p.add_argument("--images", type=Path, help="folder of photos (default: scikit-image's astronaut, coffee, chelsea, "
                                               "rocket as JPEG)")
    p.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    add_deprecated(p, "--out", "-o/--output", type=Path)
    p.add_argument("--onnx", type=Path, nargs="+", action="extend",
                   help="exported model(s) the onnxruntime backends run, one row each, e.g. fp32.onnx int8.onnx "
                        "(default: export the checkpoint's query-sparse pair into -o/--output); the first one's "
                        "metadata sets the resize policy and threshold")
    p.add_argument("--onnx-full", type=Path,
                   help="detr's single-graph export the onnxruntime-full backend runs (default: export it into "
                        "-o/--output, or reuse --onnx when that is a single graph)")
    p.add_argument("--full", action="store_true",
                   help="when exporting for --onnx: detr's single graph instead of query-sparse")
    p.add_argument("--plan", type=Path, nargs="+", action="extend",
                   help="TensorRT .plan file(s) for the tensorrt backend, one row each")
    add_deprecated(p, "--engine", "--plan", "extend", type=Path, nargs="+")
    p.add_argument("--backends", type=_backend_list, default=list(BACKENDS),
                   help=f"comma-separated, from {', '.join(BACKENDS)} (default: all; unavailable ones are skipped "
                        "with a note)")
    p.add_argument("--size", type=positive_int,
                   help="resize shorter side (default: the model's own policy, 800 for detr)")
    p.add_argument("--max-size", type=positive_int,
                   help="longer side limit (default: the model's, scaled by --size like detr's 800/1333)")
    p.add_argument("--batch", type=_positive_list, default=[1], help="batch sizes, e.g. 1,2 (default: 1)")
    p.add_argument("--warmup", type=non_negative_int, default=1,
                   help="untimed iterations over all batches (default: 1)")
    p.add_argument("--iterations", type=positive_int, default=10,
                   help="timed iterations over all batches (default: 10)")
    p.add_argument("--threads", type=positive_int, default=torch.get_num_threads(),
                   help=f"torch and ONNX Runtime intra-op threads (default: {torch.get_num_threads()})")
    p.add_argument("--peak-size", type=positive_int, default=2048, help="matrix size of the fp32 peak measurement")
    p.add_argument("--target-kept", type=positive_int, default=20,
                   help="random model only: queries per image above the threshold (default: 20)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_deprecated(p, "--quiet", "--no-progress", action="store_true")
    return p


def _check_args(args: argparse.Namespace) -> None:
    given = [("--checkpoint", args.checkpoint), ("--onnx-full", args.onnx_full),
             *(("--onnx", p) for p in args.onnx or []), *(("--plan", p) for p in args.plan or [])]
    for flag, path in given:
        if path is not None and not path.is_file():
            raise PansegError(f"{path}: {flag} file not found")
    for flag, paths in (("--onnx", args.onnx or []), ("--plan", args.plan or [])):
        resolved = [p.resolve() for p in paths]
        twice = next((p for k, p in enumerate(paths) if resolved[k] in resolved[:k]), None)
        if twice is not None:
            raise PansegError(f"{twice}: given twice to {flag}")
    if args.images is not None and not args.images.is_dir():
        raise PansegError(f"{args.images}: --images must be a folder of photos")


def list_photos(folder: Path) -> list[Path]:
    photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not photos:
        raise PansegError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return photos


def resize_settings(args: argparse.Namespace, loaded: LoadedCheckpoint, info: ModelInfo | None) -> ResizeSettings:
    """The model's own resize policy (export metadata, else the checkpoint's), unless --size/--max-size say other."""
    size, max_size = (info.resize.size, info.resize.max_size) if info is not None else loaded.resize
    threshold = info.threshold if info is not None else DEFAULT_THRESHOLD
    if args.size is not None and args.size != size:
        max_size = None if max_size is None else max(args.size, round(max_size * args.size / size))
        size = args.size
    if args.max_size is not None:
        max_size = args.max_size
    if max_size is not None and max_size < size:
        raise PansegError(f"--max-size {max_size} is below the shorter side {size}")
    return ResizeSettings(size, max_size, threshold)


def eager_batch(paths: list[Path], settings: ResizeSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """detr's eval transform and padding of ``paths`` (eager's preprocessing), e.g. for counting FLOPs."""
    from train.datasets.coco import open_rgb

    images, mask, _ = detr_eval_batch([open_rgb(p) for p in paths], settings.size, settings.max_size)
    return images, mask


def _export(checkpoint: Path, path: Path, photos: list[Path], full: bool, no_progress: bool) -> float:
    """Export ``checkpoint`` to ``path`` (verified on the benchmark's photos); returns the seconds it took."""
    kind = "detr's single graph" if full else "query-sparse pair"
    print(f"exporting {checkpoint.name} -> {path} ({kind}, verified) ...", file=sys.stderr)
    started = time.perf_counter()
    exported = export_checkpoint(checkpoint, path, verify_images=photos[0].parent, verify_max_images=VERIFY_MAX_IMAGES,
                                 progress=not no_progress, full=full)
    if not exported.passed:
        raise PansegError(f"{exported.path}: the export failed verification; see python -m export.onnx "
                          f"{checkpoint}{' --full' if full else ''} --json FILE.json")
    return time.perf_counter() - started


def _model_info(path: Path) -> ModelInfo:
    with select_backend(path, "onnxruntime") as probe:
        return parse_model_info(probe.metadata(), str(path))


def prepare_models(args: argparse.Namespace, checkpoint: Path, photos: list[Path], needed: set[str],
                   model_record: dict[str, Any]) -> tuple[dict[str, list[Path]], ModelInfo | None]:
    """The model files of each ``model_file`` kind the running backends need ("onnx", "onnx-full", "engine"),
    exporting what was not given, and the metadata that decides the resize policy and threshold (the first
    --onnx's)."""
    out: Path = args.output
    onnx_paths, full_path = list(args.onnx or []), args.onnx_full
    if not onnx_paths and "onnx" in needed:
        onnx_paths = [out / SPARSE_EXPORT_NAME]
        model_record["export_seconds"] = _export(checkpoint, onnx_paths[0], photos, args.full, args.no_progress)
    onnx_path = onnx_paths[0] if onnx_paths else None
    info = full_info = None
    if onnx_path is not None:
        info = _model_info(onnx_path)
        model_record.update(onnx=[str(p) for p in onnx_paths], mask_graph=info.mask_graph,
                            export="query-sparse" if info.mask_graph else "full (single graph)")
    if full_path is None and "onnx-full" in needed:
        if info is not None and info.mask_graph is None:  # --onnx (or --full) is already detr's single graph
            full_path = onnx_path
        else:
            full_path = out / FULL_EXPORT_NAME
            model_record["export_full_seconds"] = _export(checkpoint, full_path, photos, True, args.no_progress)
    if full_path is not None:
        full_info = _model_info(full_path)
        if full_info.mask_graph is not None:
            raise PansegError(f"{full_path}: --onnx-full must be detr's single graph, but this is a query-sparse "
                              f"export (its mask graph is {full_info.mask_graph}); export one with python -m "
                              "export.onnx CHECKPOINT --full")
        model_record["onnx_full"] = str(full_path)
    files = {"onnx": onnx_paths, "onnx-full": [full_path] if full_path is not None else [],
             "engine": list(args.plan or [])}
    return files, info or full_info


def _start_runs(spec: BackendSpec, model_files: dict[str, list[Path]], loaded: LoadedCheckpoint,
                settings: ResizeSettings, info: ModelInfo | None, threads: int, eager_load_rss: int, stack: ExitStack
                ) -> list[tuple[Path | None, Any, dict[str, Any]]]:
    """One pipeline per model ``spec`` runs (eager: the checkpoint), loaded, with its record for the report: what it
    is, the model file and the precision its metadata records, and the memory loading it added."""
    record = {"description": spec.description, "status": "ran", "note": None, "runner": spec.name}
    if spec.runtime_backend is None:
        pipeline = EagerPipeline(loaded.model, {c.id: bool(c.isthing) for c in loaded.categories.values()},
                                 settings, info.mask_stride if info else 4)
        return [(None, pipeline, {**record, "model": "the checkpoint", "precision": FP32,
                                  "precision_detail": "fp32 (PyTorch)", "copies": pipeline.copies,
                                  "flops": pipeline.flops_kind, "load_rss_mb": eager_load_rss / 2**20})]
    started = []
    for path in model_files[spec.model_file]:  # prepare_models provides every needed file
        before = hardware.current_rss()
        pipeline = build_runtime_pipeline(spec, path, threads, settings)
        stack.callback(pipeline.close)
        precision = pipeline.info.precision
        started.append((path, pipeline, {**record, "model": repo_relative(str(path)), "precision": precision.label,
                                         "precision_detail": precision.describe(), "copies": pipeline.copies,
                                         "flops": pipeline.flops_kind,
                                         "load_rss_mb": (hardware.current_rss() - before) / 2**20}))
    return started


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    _check_args(args)
    torch.set_num_threads(args.threads)
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(defaults.temporary_folder()))
        photos = list_photos(args.images) if args.images else defaults.write_default_photos(scratch / "photos")
        model_record: dict[str, Any] = {"checkpoint": str(args.checkpoint) if args.checkpoint else None}
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = scratch / "detr_r50_random.pth"
            print("building DETR-R50 panoptic with random weights (no --checkpoint) ...", file=sys.stderr)
            model_record["random_init"] = defaults.make_random_checkpoint(
                checkpoint, photos, target_kept=args.target_kept, size=args.size or defaults.CALIBRATION_SIZE)
            notes.append(defaults.RANDOM_MODEL_NOTE.format(kept=args.target_kept))
        rss_before_model = hardware.current_rss()
        loaded = load_for_export(checkpoint)
        eager_load_rss = hardware.current_rss() - rss_before_model
        model_record["config"] = loaded.config.to_dict()

        selected = {name: BACKENDS[name] for name in args.backends}
        skipped = {name: reason for name, spec in selected.items()
                   if (reason := unavailable_reason(spec, args.plan or [])) is not None}
        needed = {s.model_file for n, s in selected.items() if s.runtime_backend and n not in skipped}
        model_files, info = prepare_models(args, checkpoint, photos, needed, model_record)
        settings = resize_settings(args, loaded, info)

        pipelines: dict[str, Any] = {}
        backend_records: dict[str, dict[str, Any]] = {}
        for name, spec in selected.items():
            if name in skipped:
                backend_records[name] = {"description": spec.description, "status": "skipped",
                                         "note": skipped[name], "runner": name, "model": None, "precision": None,
                                         "precision_detail": None, "copies": "-", "flops": "-", "load_rss_mb": 0.0}
                continue
            started = _start_runs(spec, model_files, loaded, settings, info, args.threads, eager_load_rss, stack)
            names = run_names(name, [(path, record["precision"]) for path, _, record in started])
            for run_name, (_, pipeline, record) in zip(names, started, strict=True):
                pipelines[run_name] = pipeline
                backend_records[run_name] = record
        if not pipelines:
            raise PansegError("no backend can run here: " + "; ".join(f"{n}: {r}" for n, r in skipped.items()))

        print("measuring the fp32 matmul peak ...", file=sys.stderr)
        peak = hardware.matmul_peak(args.threads, args.peak_size)
        rows = []
        flops_record = {}
        post_baselines: dict[str, dict[str, Any]] = {}
        for batch in args.batch:
            groups = image_groups(photos, batch)
            counted = [count_call_flops(loaded.model, *eager_batch(g, settings)) for g in groups]
            flops_record[str(batch)] = [c.to_json() for c in counted]
            with hardware.RssSampler() as sampler:
                runs = run_interleaved(pipelines, groups, args.iterations, args.warmup, not args.no_progress,
                                       f"batch {batch}")
            for name, result in runs.items():
                pipeline = pipelines[name]
                # the queries this backend kept in the run (its last call on each batch), summed over the batch
                kept = [kept_queries(pipeline.logits[batch_key(g)], settings.threshold) for g in groups]
                stage_flops = [c.breakdown(pipeline.flops_kind, k) for c, k in zip(counted, kept, strict=True)]
                row = result_row(name, backend_records[name], batch, result, stage_flops, kept,
                                 peak["flops_per_second"], sampler.peak_within([s.window for s in result.samples]))
                reference = runs["eager"].results if "eager" in runs else None
                row["agreement"] = (agreement([r for g in reference for r in g], [r for g in result.results for r in g],
                                              loaded.categories) if reference is not None else None)
                if "detr_original" in result.side_results:  # eager: both PyTorch post-processing baselines
                    post_baselines[str(batch)] = {
                        "detr_original_ms": row["stages_ms"]["postprocess"],
                        "torch_port_ms": row["side_ms"]["postprocess_torch_port"],
                        "agreement": agreement([r for g in result.results for r in g],
                                               [r for g in result.side_results["detr_original"] for r in g],
                                               loaded.categories),
                    }
                rows.append(row)
        add_speedups(rows)
        for name, pipeline in pipelines.items():  # what crossed host <-> device is known only after the calls
            backend_records[name]["copies"] = pipeline.copies
        if "eager" not in pipelines:
            notes.append("eager did not run: no speedups or agreement")
        if any(r["precision"] != FP32 for r in rows):
            notes.append(REDUCED_PRECISION_NOTE)
        if args.checkpoint is None:
            notes.append("agreement is meaningful here only because the random model was made non-degenerate "
                         "(see benchmarks/defaults.py); use a trained checkpoint for accuracy")
        machine = hardware.machine()
        report = {
            "json_version": JSON_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": shell_line([sys.executable, "-m", "benchmarks.latency", *argv], python="python"),
            "notes": notes,
            "warnings": warnings_for(rows),
            "machine": machine,
            "versions": hardware.versions(),
            "model": model_record,
            "settings": {"size": settings.size, "max_size": settings.max_size, "threshold": settings.threshold,
                         "threads": args.threads, "warmup": args.warmup, "iterations": args.iterations,
                         "batches": args.batch, "images": [_describe(p) for p in photos],
                         "order": "round-robin per (iteration, batch of images), order rotated each time",
                         "timed": "image file -> panoptic result (decode, resize, normalize, pad, model, merge)"},
            "peak": peak,
            "flops": {"method": "torch.utils.flop_counter.FlopCounterMode on the eager modules at each batch's "
                                "shape (matmul/conv, 2 per multiply-add), per stage; full (eager, single graph) = "
                                "every query's mask, sparse = detector + the queries kept in the run",
                      "stages": STAGE_DESCRIPTIONS, "per_batch": flops_record},
            "memory": {"process_peak_rss_mb": hardware.process_peak_rss() / 2**20,
                       "gpu": ("not measured by this benchmark yet" if any(
                           n != "eager" and backend_records[n]["copies"].startswith("host") for n in pipelines)
                           else "not applicable: no GPU backend ran")},
            "backends": backend_records,
            "postprocess_baselines": post_baselines,
            "results": rows,
        }
    write_report(report, out)
    return report


def _describe(path: Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as im:
        return {"name": path.name, "size": f"{im.width}x{im.height}"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        report = run(args, argv)
    except PansegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(markdown(report).split("## Stages")[0])
    print(f"report: {args.output / 'report.md'}, {args.output / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

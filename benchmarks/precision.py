"""`python -m benchmarks.precision`: a model's precision variants (fp16, INT8 CPU and INT8 TensorRT flavours), each
run end to end by ONNX Runtime on this CPU, with its latency and its agreement with fp32.

Two workloads:

- default, the benchmark R50 model: a random non-degenerate R50 (``make_random_checkpoint``) on the four
  scikit-image photos, shorter side 800, batch 1; the INT8 variants are calibrated on the same photos, everything
  quantized (``--variant-flags``).
- ``--model MODEL.onnx --coco-path DATA``: an existing trained fp32 export and its COCO-layout dataset (e.g. the
  demo's ``demo/model.onnx`` and ``demo/data``): the INT8 variants are calibrated on the first ``--max-images``
  *train2017* images (never val) with the sensitivity sweep, as the demo's int8-cpu stage does; fp32 and every
  variant then run on *val2017* and are scored against its panoptic ground truth (PQ, things, stuff: the numbers
  ``panseg-rt eval`` gives) and against fp32, with issue 15's PQ targets (benchmarks/precision_variants.py).

A measurement (a report, not a test). The TensorRT flavour is timed here only to show what ONNX Runtime makes of it on
a CPU; its engine is built on a GPU. Variants already in ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.command_line import repo_relative
from benchmarks.hardware import load_average
from benchmarks.markdown import table
from benchmarks.precision_variants import MAX_PQ_DROP, VARIANTS
from export.onnx.verify.images import list_images
from export.precision.__main__ import main as precision_main
from export.precision.agreement import ImageRun, compare_runs, run_images
from export.precision.int8 import CALIBRATION_METHODS
from runtime.atomic import atomic_write_bytes, atomic_write_json
from runtime.categories import Category, categories_from_json
from runtime.cpuinfo import cpu_flags, cpu_model
from runtime.errors import PansegError
from runtime.model import load_model
from runtime.panoptic_format import load_panoptic_json, read_panoptic_png
from runtime.pq import GROUPS, PQStat, pq_image_stats
from runtime.preprocess import load_and_preprocess, pad_batch
from runtime.subcommands import positive_int, report_errors

PROG = "python -m benchmarks.precision"
DEFAULT_METHOD = "minmax"  # export.precision's default; its INT8 variants keep the plain names (int8-cpu)
R50_VARIANT_FLAGS = "--float-blocks"  # everything quantized, no sweep (minutes per measurement at 800 px)


@dataclass(frozen=True)
class GroundTruth:
    """A COCO panoptic split: its categories and, per image file name, the PNG and the segments."""

    categories: dict[int, Category]
    annotations: dict[str, tuple[Path, list[dict[str, Any]]]]

    @classmethod
    def load(cls, coco_path: Path, split: str = "val2017") -> GroundTruth:
        gt_json = coco_path / "annotations" / f"panoptic_{split}.json"
        data = load_panoptic_json(gt_json)
        file_names = {i["id"]: i["file_name"] for i in data["images"]}
        annotations = {file_names[a["image_id"]]: (coco_path / f"panoptic_{split}" / a["file_name"],
                                                   a["segments_info"]) for a in data["annotations"]}
        return cls(categories_from_json(data["categories"], str(gt_json)), annotations)

    def pq(self, images: Sequence[Path], runs: Sequence[ImageRun]) -> dict[str, float]:
        """PQ per group (points) of the results ``runs`` gave on ``images``, panopticapi's rules."""
        stat = PQStat()
        for path, run in zip(images, runs, strict=True):
            if path.name not in self.annotations:
                raise PansegError(f"{path}: no ground truth for this image")
            png, segments = self.annotations[path.name]
            stat += pq_image_stats(read_panoptic_png(png), segments, run.result.id_map, run.result.segments_info,
                                   self.categories, where=str(path))
        summary = stat.summary(self.categories)
        return {group: 100 * summary[group]["pq"] for group, _ in GROUPS}


@dataclass(frozen=True)
class Workload:
    """What the variants are made from and measured on."""

    name: str  # file stem of the variants: <name>-<variant>.onnx
    fp32: Path
    calibration: list[str]  # export.precision --calibration-images [--max-images] arguments
    images: list[Path]  # timed, compared with fp32 (and scored against the ground truth, when there is one)
    ground_truth: GroundTruth | None
    variant_flags: list[str]


def r50_workload(out: Path, variant_flags: str | None) -> Workload:
    from benchmarks.defaults import make_random_checkpoint, write_default_photos
    from export.onnx import export_checkpoint

    photos = write_default_photos(out / "photos")
    ckpt = out / "r50.pth"
    if not ckpt.exists():
        make_random_checkpoint(ckpt, photos)
    fp32 = out / "r50.onnx"
    if not fp32.exists():
        export_checkpoint(ckpt, fp32, run_verification=False, progress=False)
    flags = R50_VARIANT_FLAGS if variant_flags is None else variant_flags
    return Workload("r50", fp32, [str(p) for p in photos], photos, None, flags.split())


def trained_workload(model: Path, coco_path: Path, calibration_images: int, variant_flags: str | None) -> Workload:
    for path in (model, coco_path / "train2017", coco_path / "val2017"):
        if not path.exists():
            raise PansegError(f"{path}: not found (--model is an fp32 export, --coco-path a COCO-layout dataset with "
                              "train2017/, val2017/, annotations/panoptic_val2017.json and panoptic_val2017/)")
    calibration = [str(coco_path / "train2017"), "--max-images", str(calibration_images)]
    return Workload(model.stem, model, calibration, list_images(coco_path / "val2017"), GroundTruth.load(coco_path),
                    (variant_flags or "").split())


def end_to_end_ms(model_path: Path, photos: Sequence[Path], threads: int, repeats: int) -> float:
    """Median over ``repeats`` rounds of the mean per-photo time of preprocessing + model.run (batch 1)."""
    options = {"providers": ("cpu",), "intra_op_threads": threads, "optimized_cache": False}
    rounds = []
    with load_model(model_path, "onnxruntime", options) as model:
        info = model.info
        for round_index in range(repeats + 1):  # the first round warms up
            started = time.perf_counter()
            for photo in photos:
                array, _ = load_and_preprocess(photo, info.resize.size, info.resize.max_size)
                model.run(*pad_batch([array]), info.threshold)
            if round_index:
                rounds.append((time.perf_counter() - started) * 1e3 / len(photos))
    return statistics.median(rounds)


def variant_runs(names: Sequence[str], methods: Sequence[str]) -> list[tuple[str, str, str | None]]:
    """(row name, variant, calibration method) to make and measure: every INT8 variant once per method, named
    ``int8-cpu`` for minmax (the default) and ``int8-cpu-<method>`` otherwise; fp16 once (no calibration)."""
    runs: list[tuple[str, str, str | None]] = []
    for name in names:
        if not name.startswith("int8"):
            runs.append((name, name, None))
            continue
        runs += [(name if method == DEFAULT_METHOD else f"{name}-{method}", name, method) for method in methods]
    return runs


def make_variants(work: Workload, names: Sequence[str], out: Path, threads: int,
                  methods: Sequence[str] = (DEFAULT_METHOD,)) -> dict[str, Path]:
    """fp32 and each variant's file (INT8 ones per calibration method), made with python -m export.precision unless
    already in ``out``."""
    models = {"fp32": work.fp32}
    for name, variant, method in variant_runs(names, methods):
        path = out / f"{work.name}-{name}.onnx"
        extra = [*work.variant_flags, "--calibration-method", method] if method is not None else []
        if not path.exists():
            code = precision_main([str(work.fp32), "-o", str(path), "--calibration-images", *work.calibration,
                                   "--threads", str(threads), "--json", str(out / f"{work.name}-{name}.json"),
                                   *VARIANTS[variant], *extra])
            if code:
                raise PansegError(f"{work.fp32}: making the {name} variant failed (exit code {code})")
        models[name] = path
    return models


def measure(work: Workload, models: dict[str, Path], threads: int, repeats: int) -> list[dict[str, Any]]:
    """One row per model: latency, agreement with fp32 and, with a ground truth, PQ and issue 15's target."""
    reference = run_images(work.fp32, work.images, threads)
    with load_model(work.fp32) as model:
        categories = model.info.categories
    rows: list[dict[str, Any]] = []
    for name, path in models.items():
        ms = end_to_end_ms(path, work.images, threads, repeats)
        runs = reference if name == "fp32" else run_images(path, work.images, threads)
        agreement = compare_runs(reference, runs, categories)
        row = {"model": name, "file": path.name, "ms_per_image": round(ms, 1),
               "speedup_vs_fp32": round(rows[0]["ms_per_image"] / ms, 2) if rows else 1.0,
               "category_agreement": round(agreement.category_agreement, 4),
               "segment_agreement": round(agreement.segment_agreement, 4),
               "same_segment_rate": round(agreement.same_segment_rate, 3), "pq_vs_fp32": round(agreement.pq, 2),
               "max_logits_error": round(agreement.max_logits_error, 4),
               # the mask graph runs on the kept queries: a variant that keeps more is slower for that reason alone
               "kept_queries_per_image": round(statistics.mean(r.kept.size for r in runs), 1)}
        if work.ground_truth is not None:
            pq = work.ground_truth.pq(work.images, runs)
            row["pq"] = pq
            if rows:
                drop = rows[0]["pq"]["All"] - pq["All"]
                allowed = MAX_PQ_DROP[next(v for v in MAX_PQ_DROP if name == v or name.startswith(v + "-"))]
                row.update(pq_drop_points=drop, max_pq_drop_points=allowed, target_met=drop <= allowed)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) > 1:  # fp32 once more at the end: how far the machine drifted while the variants ran
        rows[0]["ms_per_image_last"] = round(end_to_end_ms(work.fp32, work.images, threads, repeats), 1)
    return rows


def markdown(report: dict[str, Any]) -> str:
    """report.md: one row per model; PQ columns only when a ground truth scored them."""
    scored = "pq" in report["rows"][0]
    header = ["model", "ms/image", "vs fp32", "kept queries", "category agreement", "same segments", "PQ vs fp32",
              "worst logits error"]
    header += ["PQ", "PQ things", "PQ stuff", "PQ drop", "target"] if scored else []
    rows = []
    for r in report["rows"]:
        ms = r["ms_per_image"] if "ms_per_image_last" not in r else f"{r['ms_per_image']} / {r['ms_per_image_last']}"
        row = [r["model"], ms, f"{r['speedup_vs_fp32']:.2f}x", r.get("kept_queries_per_image", "-"),
               r["category_agreement"], r["same_segment_rate"], r["pq_vs_fp32"], r["max_logits_error"]]
        if scored:
            target = ("-" if "target_met" not in r else
                      f"<= {r['max_pq_drop_points']:.1f}: {'met' if r['target_met'] else 'NOT met'}")
            row += [*(f"{r['pq'][g]:.1f}" for g, _ in GROUPS),
                    f"{round(r.get('pq_drop_points', 0.0), 2) + 0.0:.2f}", target]
        rows.append(row)
    return "\n".join([f"# Precision variants of {report['model']}", "",
                      f"CPU {report['cpu']} ({', '.join(f for f, ok in report['flags'].items() if ok) or 'no'} "
                      f"extensions), {report['threads']} threads, ONNX Runtime end to end (preprocessing + model) on "
                      f"{len(report['images'])} images; calibration: {' '.join(report['calibration'])}. "
                      + (f"Load average (1, 5, 15 min) {report['load_average_before_after'][0]} before, "
                         f"{report['load_average_before_after'][1]} after; fp32's ms: first / last row of the run. "
                         if "load_average_before_after" in report else "") + "PQ vs fp32: "
                      "the variant scored with the fp32 output as ground truth"
                      + ("; PQ: against the dataset's panoptic ground truth (points), drop = fp32 minus the variant"
                         if scored else "") + ".", "", *table(header, rows)])


def _comma_choices(known: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of ``known`` names, each once, in the given order."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown or text!r}; choose from {', '.join(known)}")
        return list(dict.fromkeys(names))
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    p.add_argument("--out", type=Path, default=Path("precision-benchmark"), help="work folder (models, report.json)")
    p.add_argument("--model", type=Path, help="an existing trained fp32 export instead of the random R50 (needs "
                                              "--coco-path)")
    p.add_argument("--coco-path", type=Path, help="with --model: its dataset (train2017/ calibrates, val2017/ and "
                                                  "its panoptic ground truth measure)")
    p.add_argument("--max-images", type=positive_int, default=8,
                   help="with --model: calibrate on the first N train images (default: 8, as the demo does)")
    p.add_argument("--variants", type=_comma_choices(list(VARIANTS), "variant(s)"), default=list(VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--calibration-methods", type=_comma_choices(list(CALIBRATION_METHODS), "calibration method(s)"),
                   default=[DEFAULT_METHOD],
                   help="comma-separated: make and measure every INT8 variant once per calibration method, from "
                        f"{', '.join(CALIBRATION_METHODS)} (default: {DEFAULT_METHOD}; others are named "
                        "int8-cpu-<method>)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--variant-flags", help="extra flags for every INT8 variant (default: the R50 model "
                   f"{R50_VARIANT_FLAGS!r}: everything quantized, no sweep; --model: none, i.e. the sensitivity sweep)")
    return p


def run(args: argparse.Namespace) -> int:
    if (args.model is None) != (args.coco_path is None):
        raise PansegError("--model and --coco-path go together (an fp32 export and its dataset)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = (r50_workload(out, args.variant_flags) if args.model is None
            else trained_workload(args.model, args.coco_path, args.max_images, args.variant_flags))
    models = make_variants(work, args.variants, out, args.threads, args.calibration_methods)
    flags = cpu_flags()
    load_before = load_average()
    rows = measure(work, models, args.threads, args.repeats)
    load_after = load_average()
    report = {"cpu": cpu_model(), "flags": {f: f in flags for f in ("avx2", "avx512_vnni", "avx512_bf16")},
              "threads": args.threads, "load_average_before_after": [load_before, load_after],
              "model": repo_relative(str(work.fp32)),
              "calibration": [repo_relative(a) for a in work.calibration],
              "images": [p.name for p in work.images], "rows": rows}
    atomic_write_json(out / "report.json", report, indent=1)
    atomic_write_bytes(out / "report.md", markdown(report).encode("utf-8"))
    print(f"{report['cpu']}; {report['flags']}; wrote {out / 'report.json'} and report.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())

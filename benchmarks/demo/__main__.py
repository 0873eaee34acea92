"""The end-to-end demo on the built-in synthetic data: dataset -> detection training -> mask-head training -> verified
ONNX export -> `panseg-rt infer` with overlays -> `panseg-rt eval` -> the same with the optional box NMS -> the INT8
CPU variant (`python -m export.precision`, calibrated on train images) and its PQ -> latency of both models against
eager -> OUT/summary.md.

It only chains the real commands (printed as copyable shell lines, run as subprocesses); training flags come from
train/recipes.py alone. A rerun reuses every stage whose outputs are complete and newer than its inputs and whose
commands did not change (benchmarks/demo/stages.py); ``--fresh`` starts over; ``--quick`` is the size CI runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.command_line import REPO
from benchmarks.demo.stages import (
    STAMP_FOLDER,
    Command,
    CopyFirstFiles,
    Stage,
    StageResult,
    remove_output,
    reuse_or_run,
)
from benchmarks.demo.summary import INT8_CPU_FILES, build_summary, copy_to_docs, write_summary
from benchmarks.precision_variants import VARIANTS
from runtime.contract import mask_graph_name
from runtime.errors import PansegError
from runtime.subcommands import ArgumentParser, add_deprecated, report_errors
from runtime.timefmt import format_duration
from train.recipes import DEMO_RECIPES, Recipe, demo_recipe, machine, quick_recipe

PROG = "python -m benchmarks.demo"
NMS_IOU = "0.5"  # the demo's extra run with panseg-rt infer --nms-iou (a common NMS IoU; not tuned on the val set)

# Per size: the dataset (train.prepare synthetic flags), export verification, the INT8 calibration images
# (the first N train images; never val, which measures it) and the benchmark's extent.
SIZES = {
    "full": {"dataset": [], "verify": [], "calibration_images": 8, "bench_images": 4,
             "bench": ["--iterations", "10", "--warmup", "1"]},
    "quick": {"dataset": ["--train", "256", "--val", "16", "--size", "64"],
              "verify": ["--verify-sizes", "64,96", "--verify-max-images", "2"], "calibration_images": 8,
              "bench_images": 2, "bench": ["--iterations", "3", "--warmup", "1", "--peak-size", "512"]},
}


def plan(out: Path, size: str, recipe: Recipe) -> list[Stage]:
    """The demo's stages in order, each with the files it reads and the files that prove it finished."""
    py = sys.executable
    cfg = SIZES[size]
    data, ann = out / "data", out / "data" / "annotations"
    gt_json, gt_folder, val_images = ann / "panoptic_val2017.json", data / "panoptic_val2017", data / "val2017"
    dataset_files = tuple(ann / f"{kind}_{split}2017.json" for kind in ("instances", "panoptic")
                          for split in ("train", "val"))
    ckpt1, ckpt2 = out / "stage1" / "checkpoint.pth", out / "stage2" / "checkpoint.pth"
    onnx, masks_onnx = out / "model.onnx", out / "model.masks.onnx"
    infer, pred_json = out / "infer", out / "infer" / "predictions.json"
    int8 = out / INT8_CPU_FILES["model"]
    int8_masks, infer_int8 = out / mask_graph_name(int8), out / "infer_int8_cpu"
    int8_report, int8_pq = out / INT8_CPU_FILES["report"], out / INT8_CPU_FILES["pq"]
    bench_photos = out / "bench_images"

    def runtime(*args: str) -> Command:
        return Command((py, "-m", "runtime", *args))

    return [
        Stage("dataset", (
            Command((py, "-m", "train.prepare", "synthetic", "-o", str(data), *cfg["dataset"])),
            *(runtime("validate", str(ann / f"panoptic_{split}2017.json"), str(data / f"panoptic_{split}2017"),
                      "--check-area") for split in ("train", "val")),
        ), outputs=dataset_files, description="generate the synthetic dataset and validate both splits"),
        Stage("stage1", (Command((py, "-m", "train", *recipe.stage1_args(str(data), str(ckpt1.parent)))),),
              inputs=dataset_files, outputs=(ckpt1,), description="train detection"),
        Stage("stage2", (Command((py, "-m", "train", *recipe.stage2_args(str(data), str(ckpt2.parent),
                                                                         str(ckpt1)))),),
              inputs=(*dataset_files, ckpt1), outputs=(ckpt2,), description="train the mask head (frozen detector)"),
        Stage("export", (Command((py, "-m", "export.onnx", str(ckpt2), "-o", str(onnx), "--verify-images",
                                  str(val_images), *cfg["verify"], "--json", str(out / "export_report.json"))),),
              inputs=(ckpt2,), outputs=(onnx, masks_onnx, out / "export_report.json"),
              description="export ONNX, verified against eager"),
        Stage("infer", (runtime("infer", str(onnx), str(val_images), "-o", str(infer),
                                "--overlay", "--coco-json", str(gt_json)),),
              inputs=(onnx, masks_onnx, gt_json), outputs=(pred_json,), description="panseg-rt infer on val"),
        Stage("eval", (runtime("eval", "--gt-json", str(gt_json), "--gt-folder", str(gt_folder), "--pred-json",
                               str(pred_json), "--pred-folder", str(infer / "panoptic"), "--json",
                               str(out / "pq.json")),),
              inputs=(gt_json, pred_json), outputs=(out / "pq.json",), description="PQ against the val set"),
        Stage("nms", (
            runtime("infer", str(onnx), str(val_images), "-o", str(out / "infer_nms"),
                    "--coco-json", str(gt_json), "--nms-iou", NMS_IOU),
            runtime("eval", "--gt-json", str(gt_json), "--gt-folder", str(gt_folder), "--pred-json",
                    str(out / "infer_nms" / "predictions.json"), "--pred-folder", str(out / "infer_nms" / "panoptic"),
                    "--json", str(out / "pq_nms.json")),
        ), inputs=(onnx, masks_onnx, gt_json), outputs=(out / "pq_nms.json",),
            description=f"the same with the optional box NMS among things (--nms-iou {NMS_IOU}; off by default)"),
        Stage("int8-cpu", (
            Command((py, "-m", "export.precision", str(onnx), "-o", str(int8), *VARIANTS["int8-cpu"],
                     "--calibration-images", str(data / "train2017"), "--max-images", str(cfg["calibration_images"]),
                     "--json", str(int8_report))),
            runtime("infer", str(int8), str(val_images), "-o", str(infer_int8), "--coco-json", str(gt_json)),
            runtime("eval", "--gt-json", str(gt_json), "--gt-folder", str(gt_folder), "--pred-json",
                    str(infer_int8 / "predictions.json"), "--pred-folder", str(infer_int8 / "panoptic"), "--json",
                    str(int8_pq)),
        ), inputs=(onnx, masks_onnx, gt_json), outputs=(int8, int8_masks, int8_report, int8_pq),
            description="the INT8 CPU variant (U8S8, calibrated on train images) and its PQ on val"),
        Stage("bench", (
            CopyFirstFiles(val_images, "*.jpg", cfg["bench_images"], bench_photos),
            Command((py, "-m", "benchmarks.latency", "--checkpoint", str(ckpt2), "--onnx", str(onnx), str(int8),
                     "--images", str(bench_photos), "-o", str(out / "bench"), *cfg["bench"])),
        ), inputs=(ckpt2, onnx, masks_onnx, int8, int8_masks), outputs=(out / "bench" / "report.json",),
            description="latency: ONNX Runtime (fp32 and INT8 CPU) against PyTorch eager"),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=Path("demo"), help="output folder (default: demo/)")
    add_deprecated(parser, "--out", "-o/--output", type=Path)
    parser.add_argument("--quick", action="store_true", help="the small size CI runs (a few minutes)")
    parser.add_argument("--recipe", choices=sorted(DEMO_RECIPES),
                        help="training recipe of the full demo (default: demo-bf16 where the CPU has native "
                             "bfloat16, else demo-fp32; see train/recipes.py)")
    parser.add_argument("--fresh", action="store_true", help="delete the output folder first instead of reusing stages")
    parser.add_argument("--skip-bench", action="store_true", help="skip the latency benchmark")
    parser.add_argument("--docs", type=Path, metavar="DIR",
                        help="also copy summary.md, a few overlays and the bench plots into DIR (e.g. docs/demo)")
    return parser


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def run(args: argparse.Namespace) -> int:
    out: Path = args.output.absolute()  # shown relative to the repository when inside it (benchmarks/command_line.py)
    size = "quick" if args.quick else "full"
    started = time.perf_counter()
    if args.fresh:
        remove_output(out, protected=[REPO])
    elif out.exists() and not out.is_dir():
        raise PansegError(f"{out}: -o/--output must be a folder")
    (out / STAMP_FOLDER).mkdir(parents=True, exist_ok=True)  # marks the folder as the demo's (see --fresh)
    if args.quick and args.recipe:
        raise PansegError("--recipe picks the full demo's training recipe; --quick always trains the quick one")
    recipe = quick_recipe() if args.quick else demo_recipe(args.recipe)
    cpu = machine(recipe)
    print(f"CPU: {cpu['cpu']} ({cpu['features']}) -> recipe {recipe.name}, training in {recipe.precision}: "
          f"{cpu['note']}", flush=True)
    stages = plan(out, size, recipe)
    total = len(stages) + 1
    results: list[StageResult] = []
    for k, stage in enumerate(stages, start=1):
        print(f"\n[{k}/{total}] {stage.name}: {stage.description} (elapsed {_clock(time.perf_counter() - started)})",
              flush=True)
        if stage.name == "bench" and args.skip_bench:
            print("skip bench: --skip-bench", flush=True)
            results.append(StageResult(stage.name, "skipped", None, reason="--skip-bench"))
            continue
        result = reuse_or_run(stage, out)
        results.append(result)
        if result.status == "ran":
            print(f"[{k}/{total}] {stage.name}: done in {format_duration(result.seconds)}", flush=True)
    print(f"\n[{total}/{total}] summary (elapsed {_clock(time.perf_counter() - started)})", flush=True)
    summary = build_summary(out, size, results, time.perf_counter() - started, bench_ran=not args.skip_bench,
                            nms_iou=float(NMS_IOU), machine=cpu)
    md, js = write_summary(summary, out)
    pq = summary["pq"]
    print("PQ " + ", ".join(f"{g} {100 * pq[g]['pq']:.1f}" for g in pq) + f" (export {summary['export']['verdict']})")
    print(f"wrote {md} and {js} in {_clock(time.perf_counter() - started)}")
    if args.docs:
        copied = copy_to_docs(summary, out, args.docs)
        print(f"copied {len(copied)} files to {args.docs}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(PROG, lambda: run(args),
                         interrupted="interrupted; finished stages are kept, rerun to continue")


if __name__ == "__main__":
    sys.exit(main())

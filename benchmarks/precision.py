"""`python -m benchmarks.precision [--out DIR]`: the benchmark R50 model in fp32, fp16, INT8 CPU and INT8 TensorRT
flavours, each run end to end by ONNX Runtime on this CPU, with its latency and its agreement with fp32.

A one-off measurement (a report, not a test): a random non-degenerate R50 (``make_random_checkpoint``) on the four
scikit-image photos, shorter side 800, batch 1, 2 threads; the INT8 variants are calibrated on the same photos. The
TensorRT flavour is timed here only to show what ONNX Runtime makes of it on a CPU; its engine is built on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.defaults import make_random_checkpoint, write_default_photos
from export.onnx import export_checkpoint
from export.precision.__main__ import main as precision_main
from export.precision.agreement import compare_runs, run_images
from export.precision.int8 import cpu_flags
from runtime.bench import cpu_model
from runtime.model import load_model
from runtime.preprocess import load_and_preprocess, pad_batch

VARIANTS = {  # name -> python -m export.precision flags
    "fp16": ["--precision", "fp16"],
    "int8-cpu": ["--precision", "int8", "--int8-target", "cpu"],
    "int8-tensorrt": ["--precision", "int8", "--int8-target", "tensorrt"],
}


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="precision-benchmark", help="work folder (models, report.json)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variant-flags", default="--float-blocks", help="extra flags for every INT8 variant (default: "
                   "everything quantized, no sweep; pass '' to run the sensitivity sweep)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photos = write_default_photos(out / "photos")
    ckpt = out / "r50.pth"
    if not ckpt.exists():
        make_random_checkpoint(ckpt, photos)
    fp32 = out / "r50.onnx"
    if not fp32.exists():
        export_checkpoint(ckpt, fp32, run_verification=False, progress=False)
    models = {"fp32": fp32}
    for name, flags in VARIANTS.items():
        path = out / f"r50-{name}.onnx"
        extra = args.variant_flags.split() if name.startswith("int8") else []
        if not path.exists():
            code = precision_main([str(fp32), "-o", str(path), "--calibration-images", *map(str, photos),
                                   "--verify-images", *map(str, photos), "--threads", str(args.threads),
                                   "--json", str(out / f"r50-{name}.json"), *flags, *extra])
            if code:
                return code
        models[name] = path
    reference = run_images(fp32, photos, args.threads)
    with load_model(fp32) as model:
        categories = model.info.categories
    flags = cpu_flags()
    report = {"cpu": cpu_model(), "flags": {f: f in flags for f in ("avx2", "avx512_vnni", "avx512_bf16")},
              "threads": args.threads, "photos": [p.name for p in photos], "rows": []}
    base_ms = None
    for name, path in models.items():
        ms = end_to_end_ms(path, photos, args.threads, args.repeats)
        base_ms = base_ms or ms
        agreement = compare_runs(reference, run_images(path, photos, args.threads), categories)
        row = {"model": name, "ms_per_image": round(ms, 1), "speedup_vs_fp32": round(base_ms / ms, 2),
               "category_agreement": round(agreement.category_agreement, 4),
               "segment_agreement": round(agreement.segment_agreement, 4),
               "same_segment_rate": round(agreement.same_segment_rate, 3), "pq_vs_fp32": round(agreement.pq, 2),
               "max_logits_error": round(agreement.max_logits_error, 4)}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"{report['cpu']}; {report['flags']}; wrote {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

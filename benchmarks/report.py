"""report.json (every number), report.md (the tables a reader wants) and two PNG plots, all written atomically.

Each row of ``results`` is one (backend, batch size); ``backend`` names the run: the backend's name, or with several
models (``--onnx fp32.onnx int8.onnx``) the backend and the model's precision (benchmarks.pipelines.run_names).
Definitions, so the JSON can be checked against itself:

- ``runner``: the backend (benchmarks.pipelines.BACKENDS) that ran it; ``precision``: the model's precision label
  from its metadata (runtime.model_info.PrecisionInfo.label: fp32, fp16, int8-cpu, int8-tensorrt; eager: fp32); the
  model file and the longer description are in ``backends``.

- ``latency_ms``: runtime.bench.latency_stats of the per-call wall times (one call = one batch, file to panoptic
  result), plus ``p50`` (= median); percentiles by numpy's linear interpolation.
- ``throughput_images_per_s`` = batch * 1000 / mean latency.
- ``stages_ms``: mean seconds per stage x 1000; ``stage_sum_ms`` their sum (about the mean latency; the rest is call
  overhead).
- ``speedup_vs_eager`` = eager's mean latency / this mean latency, same batch size, same run.
- ``speedup_vs_fp32`` = the mean latency of the same runner's first fp32 model / this mean latency, same batch size,
  same run (None when that runner timed no fp32 model).
- ``side_ms``: mean ms of a call's untimed by-products (eager: ``postprocess_torch_port``, panseg's vectorized torch
  port of detr's post-processing run on the same outputs, outside the timed total).
- ``postprocess_baselines`` (top level, per batch): eager's two PyTorch post-processing times and the agreement of
  detr's published code with the torch port on the same outputs.
- ``postprocess_share`` = stages_ms["postprocess"] / mean latency; ``postprocess_speedup_vs_detr`` = eager's
  postprocess stage (detr's published PostProcessPanoptic) / this row's; ``postprocess_speedup_vs_torch_port`` =
  eager's side_ms["postprocess_torch_port"] / this row's postprocess stage (same batch, same run).
- ``kept_queries``: per image batch, the queries this backend kept in the run (select_queries at the threshold on its
  own logits, summed over the batch); ``masks_per_call`` the mean number of query masks it computed (full: batch x
  queries; query-sparse: the kept ones).
- ``flops_per_group``: per image batch, FLOPs per stage (benchmarks/flops.py: backbone, transformer, mask_per_image,
  mask_queries), ``masks`` and their ``total``; ``flops_stages`` their mean over the batches; ``flops_per_call`` =
  flops_stages["total"]. ``achieved_flops_per_second`` = flops_per_call / (engine stage mean in seconds);
  ``share_of_peak`` = achieved / the measured matmul peak.
- ``cv_same_input``: the largest coefficient of variation among calls on the *same* batch of images (the overall CV
  also contains the differences between photos); above 5% the row is flagged unstable.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.flops import STAGE_TITLES
from benchmarks.flops import STAGES as FLOP_STAGES
from benchmarks.interleave import PipelineRun
from benchmarks.markdown import table
from benchmarks.pipelines import STAGES
from runtime.atomic import atomic_write_bytes, atomic_write_json
from runtime.bench import PERCENTILE_METHOD, UNSTABLE_CV, latency_stats
from runtime.contract import FP32

JSON_VERSION = 4  # 2: onnxruntime-full backend, per-stage FLOPs at the kept count measured in the run;
#                  3: eager post-processing = detr's published code, the torch port as a side baseline;
#                  4: several models per backend (model.onnx a list), rows' runner/precision/speedup_vs_fp32
LATENCY_PLOT = "latency_distribution.png"
STAGES_PLOT = "stages.png"


def result_row(backend: str, record: Mapping[str, Any], batch: int, run: PipelineRun,
               flops_per_group: Sequence[Mapping[str, int]], kept_queries: Sequence[int], peak: float,
               peak_rss: int | None) -> dict[str, Any]:
    """The numbers of one (backend, batch) from its samples and its per-stage FLOPs of each image batch, labelled
    from the backend's ``record`` (runner, precision); speedups and agreement are added by the caller."""
    totals_ms = np.array([s.total * 1e3 for s in run.samples])
    stats = latency_stats(totals_ms).to_json()
    stats["p50"] = stats["median"]
    stages = {stage: float(np.mean([s.stages[stage] for s in run.samples]) * 1e3) for stage in STAGES}
    by_group: dict[int, list[float]] = {}
    for s in run.samples:
        by_group.setdefault(s.group, []).append(s.total * 1e3)
    cv_same = max(latency_stats(v).cv for v in by_group.values())
    flops_stages = {key: float(np.mean([g[key] for g in flops_per_group])) for key in (*FLOP_STAGES, "total")}
    flops = flops_stages["total"]
    achieved = flops / (stages["engine"] / 1e3)
    return {
        "backend": backend,
        "runner": record["runner"],
        "precision": record["precision"],
        "batch": batch,
        "calls": len(run.samples),
        "latency_ms": stats,
        "throughput_images_per_s": batch * 1e3 / stats["mean"],
        "stages_ms": stages,
        "stage_sum_ms": sum(stages.values()),
        "side_ms": {key: float(np.mean([s.side_seconds[key] for s in run.samples]) * 1e3)
                    for key in (run.samples[0].side_seconds if run.samples else {})},
        "postprocess_share": stages["postprocess"] / stats["mean"],
        "kept_queries": [int(k) for k in kept_queries],
        "masks_per_call": float(np.mean([g["masks"] for g in flops_per_group])),
        "flops_per_group": [dict(g) for g in flops_per_group],
        "flops_stages": flops_stages,
        "flops_per_call": flops,
        "achieved_flops_per_second": achieved,
        "share_of_peak": achieved / peak,
        "peak_rss_mb": None if peak_rss is None else peak_rss / 2**20,
        "cv_same_input": cv_same,
        "unstable": bool(cv_same > UNSTABLE_CV),
        "samples_ms": totals_ms.tolist(),
    }


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Per row, against the eager row of the same batch (None without one): ``speedup_vs_eager`` (end to end) and the
    post-processing speedups against detr's published code and against panseg's torch port; and
    ``speedup_vs_fp32`` against the first fp32 row of the same runner and batch (None without one)."""
    eager = {r["batch"]: r for r in rows if r["backend"] == "eager"}
    fp32: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        if r["precision"] == FP32:
            fp32.setdefault((r["runner"], r["batch"]), r)
    for r in rows:
        base = eager.get(r["batch"])
        post = r["stages_ms"]["postprocess"]
        r["speedup_vs_eager"] = None if base is None else base["latency_ms"]["mean"] / r["latency_ms"]["mean"]
        same = fp32.get((r["runner"], r["batch"]))
        r["speedup_vs_fp32"] = None if same is None else same["latency_ms"]["mean"] / r["latency_ms"]["mean"]
        r["postprocess_speedup_vs_detr"] = None if base is None else base["stages_ms"]["postprocess"] / post
        port = None if base is None else base["side_ms"].get("postprocess_torch_port")
        r["postprocess_speedup_vs_torch_port"] = None if port is None else port / post


def warnings_for(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    found = []
    for r in rows:
        if r["unstable"]:
            found.append(f"timings unstable: {r['backend']} batch {r['batch']}: coefficient of variation "
                         f"{r['cv_same_input']:.1%} on the same input (> {UNSTABLE_CV:.0%}); the machine was busy or "
                         "the run too short")
    return found


# ------------------------------------------------------------------------------------------------------ markdown


def _ms(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _flops(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} "


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _postprocess_section(report: Mapping[str, Any]) -> list[str]:
    rows = report["results"]
    out = ["## Post-processing (mask upsampling + panoptic merge at the original size), ms per call", "",
           "Two PyTorch baselines on eager's own outputs in the same calls: detr's PostProcessPanoptic as published "
           "(benchmarks/detr_reference.py; eager's postprocess stage; PNG encoding left out, as in every backend's "
           "stage) and panseg's vectorized torch port of it (benchmarks/torch_postprocess.py; timed outside eager's "
           "total).", ""]
    for batch, b in report.get("postprocess_baselines", {}).items():
        check = b["agreement"]
        out += [f"- batch {batch}: detr's published code {_ms(b['detr_original_ms'])} ms, torch port "
                f"{_ms(b['torch_port_ms'])} ms; their outputs agree on {check['pixel_agreement']:.4f} of the pixels "
                f"(PQ {check['pq']:.4f}; the port fixes detr's padded batches, so batches above 1 may differ)"]
    if report.get("postprocess_baselines"):
        out += [""]
    out += table(["backend", "batch", "postprocess ms", "share of end to end", "vs detr's code", "vs torch port"],
                  [[r["backend"], r["batch"], _ms(r["stages_ms"]["postprocess"]), f"{r['postprocess_share']:.1%}",
                    _ratio(r["postprocess_speedup_vs_detr"]), _ratio(r["postprocess_speedup_vs_torch_port"])]
                   for r in rows])
    return out


def markdown(report: Mapping[str, Any]) -> str:
    rows = report["results"]
    s = report["settings"]
    out = ["# Latency: panseg backends against PyTorch eager", ""]
    for note in report["notes"]:
        out += [f"> **{note}**" if "RANDOM" in note else f"> {note}", ""]
    for warning in report["warnings"]:
        out += [f"> WARNING: {warning}", ""]
    out += [f"Command: `{report['command']}`", "",
            f"Images: {', '.join(i['name'] + ' ' + i['size'] for i in s['images'])}; resize shorter side {s['size']}, "
            f"longer at most {s['max_size']}; threshold {s['threshold']}; {s['threads']} threads (torch and ONNX "
            f"Runtime intra-op); {s['warmup']} warmup + {s['iterations']} timed iterations over every batch, "
            f"backends interleaved round-robin with rotating order.", ""]
    out += ["## End-to-end latency (image file -> panoptic result), ms per call", ""]
    out += table(["backend", "precision", "batch", "mean", "p50", "p90", "p95", "p99", "min", "max", "images/s",
                   "speedup vs eager", "vs fp32", "CV same input"],
                  [[r["backend"], r["precision"], r["batch"], *(_ms(r["latency_ms"][k]) for k in
                                                              ("mean", "p50", "p90", "p95", "p99", "min", "max")),
                    f"{r['throughput_images_per_s']:.2f}",
                    _ratio(r["speedup_vs_eager"]), _ratio(r["speedup_vs_fp32"]),
                    f"{r['cv_same_input']:.1%}" + (" (unstable)" if r["unstable"] else "")] for r in rows])
    out += ["## Stages, mean ms per call", ""]
    out += table(["backend", "batch", *STAGES, "sum of stages", "mean total", "H2D/D2H"],
                  [[r["backend"], r["batch"], *(_ms(r["stages_ms"][k]) for k in STAGES), _ms(r["stage_sum_ms"]),
                    _ms(r["latency_ms"]["mean"]), report["backends"][r["backend"]]["copies"]] for r in rows])
    peak = report["peak"]
    out += _postprocess_section(report)
    out += ["## Compute: FLOPs and share of this machine's fp32 peak", "",
            f"Measured peak: {_flops(peak['flops_per_second'])}FLOP/s ({peak['method']}, {peak['threads']} threads)."
            " FLOPs: torch.utils.flop_counter on the eager modules at each batch's shape (matmuls and convolutions);"
            " eager and detr's single graph are credited with every query's mask, a query-sparse backend with the"
            " detector plus the masks of the queries it kept in this run.", ""]
    out += table(["backend", "batch", "FLOPs per call", "counted as", "engine ms", "achieved FLOP/s", "share of peak"],
                  [[r["backend"], r["batch"], _flops(r["flops_per_call"]), report["backends"][r["backend"]]["flops"],
                    _ms(r["stages_ms"]["engine"]), _flops(r["achieved_flops_per_second"]),
                    f"{r['share_of_peak']:.1%}"] for r in rows])
    out += ["### FLOPs per stage, per call (mean over the image batches)", "",
            "- kept: queries above the threshold in this backend's own run, summed over the batch",
            "- masks: query masks computed (full: batch x queries; query-sparse: the kept ones)"]
    out += [f"- {STAGE_TITLES[k]}: {v}" for k, v in report["flops"]["stages"].items()] + [""]
    out += table(["backend", "batch", "kept", "masks", *(STAGE_TITLES[k] for k in FLOP_STAGES), "total"],
                  [[r["backend"], r["batch"], f"{np.mean(r['kept_queries']):g}", f"{r['masks_per_call']:g}",
                    *(_flops(r["flops_stages"][k]) for k in FLOP_STAGES), _flops(r["flops_stages"]["total"])]
                   for r in rows])
    out += ["## Agreement with eager (eager's output as ground truth)", ""]
    compared = [r for r in rows if r["agreement"] is not None]
    if not compared:
        out += ["Not measured: eager did not run.", ""]
    else:
        out += table(["backend", "precision", "batch", "pixel agreement", "same segments", "PQ vs eager",
                      "segments (eager / backend)"],
                     [[r["backend"], r["precision"], r["batch"], f"{r['agreement']['pixel_agreement']:.4f}",
                       f"{r['agreement']['same_segments']:.2f}", f"{r['agreement']['pq']:.4f}",
                       f"{r['agreement']['segments_reference']} / {r['agreement']['segments_backend']}"]
                      for r in compared])
    memory = report["memory"]
    out += ["## Memory", "",
            f"Process peak RSS (all backends in one process): {memory['process_peak_rss_mb']:.0f} MB. "
            f"GPU memory: {memory['gpu']}.", ""]
    out += table(["backend", "batch", "peak RSS during its calls (MB)",
                   "RSS added by loading it (MB; eager: the checkpoint)"],
                  [[r["backend"], r["batch"], "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}",
                    f"{report['backends'][r['backend']]['load_rss_mb']:.0f}"] for r in rows])
    out += ["## Backends", ""]
    out += table(["backend", "status", "what", "model", "precision"],
                  [[name, b["status"] + (f": {b['note']}" if b.get("note") else ""), b["description"],
                    b["model"] or "-", b["precision_detail"] or "-"]
                   for name, b in report["backends"].items()])
    out += [f"Plots: [{LATENCY_PLOT}]({LATENCY_PLOT}), [{STAGES_PLOT}]({STAGES_PLOT}).", "",
            "## Machine", ""]
    out += [f"- {k}: {v}" for k, v in report["machine"].items()]
    out += [f"- {k}: {v}" for k, v in report["versions"].items() if v is not None]
    out += ["", f"Percentiles: numpy method {PERCENTILE_METHOD!r}. Definitions: benchmarks/report.py.", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------ plots


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def write_plots(rows: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    """Latency distribution (box plot of every call) and stacked per-stage bars, per backend and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['backend']}\nbatch {r['batch']}" for r in rows]
    figure, axis = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    axis.boxplot([r["samples_ms"] for r in rows], whis=(0, 100))
    axis.set_xticks(range(1, len(rows) + 1), labels)
    for k, r in enumerate(rows, start=1):
        axis.scatter(np.full(len(r["samples_ms"]), k) + np.linspace(-0.15, 0.15, len(r["samples_ms"])),
                     r["samples_ms"], s=8, alpha=0.5)
    axis.set_ylabel("ms per call (file -> panoptic result)")
    axis.set_title("End-to-end latency per call (whiskers: min..max)")
    paths = [out / LATENCY_PLOT, out / STAGES_PLOT]
    atomic_write_bytes(paths[0], _png(figure))
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    bottom = np.zeros(len(rows))
    for stage in STAGES:
        values = np.array([r["stages_ms"][stage] for r in rows])
        axis.bar(range(len(rows)), values, bottom=bottom, label=stage)
        bottom += values
    axis.set_xticks(range(len(rows)), labels)
    axis.set_ylabel("mean ms per call")
    axis.set_title("Where the time goes")
    axis.legend()
    atomic_write_bytes(paths[1], _png(figure))
    plt.close(figure)
    return paths


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_plots(report["results"], out)
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", markdown(report).encode())

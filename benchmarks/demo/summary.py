"""The demo's summary: OUT/summary.json (every number) and OUT/summary.md (what a reader wants first), written
atomically from the artifacts the stages left (pq.json, pq_int8_cpu.json, precision_int8_cpu.json, bench/report.json,
export_report.json) -- never from memory, so a rerun that reuses every stage writes the same numbers.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.demo.stages import StageResult
from benchmarks.demo.training_curve import plot_curve, pq_curve
from benchmarks.markdown import table
from benchmarks.precision_variants import MAX_PQ_DROP
from runtime.atomic import atomic_write_bytes, atomic_write_json
from runtime.jsonfile import read_json
from runtime.pq import GROUPS

OVERLAYS_SHOWN = 4
# The full size's targets on the synthetic val set: PQ (fractions, like pq.json) within TRAINING_MINUTES_TARGET
# minutes of training, and the whole demo (this invocation, setup not included) within DEMO_MINUTES_TARGET.
PQ_TARGETS = {"full": {"All": 0.55, "Things": 0.25}}
TRAINING_MINUTES_TARGET = {"full": 12.0}
DEMO_MINUTES_TARGET = {"full": 20.0}
# What the demo's int8-cpu stage writes into OUT (benchmarks/demo/__main__.py plans it with these names).
INT8_CPU_FILES = {"model": "model_int8_cpu.onnx", "pq": "pq_int8_cpu.json", "report": "precision_int8_cpu.json"}


def pq_section(pq: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """PQ/SQ/RQ and category count per group as in pq.json, plus TP/FP/FN summed over the group's categories."""
    section = {}
    for group, isthing in GROUPS:
        classes = [m for m in pq["per_class"].values() if isthing is None or bool(m["isthing"]) == isthing]
        section[group] = {**{k: pq[group][k] for k in ("pq", "sq", "rq", "n")},
                          **{k: sum(int(m[k]) for m in classes) for k in ("tp", "fp", "fn")}}
    return section


def latency_section(report: Mapping[str, Any]) -> dict[str, Any]:
    rows = [{"backend": r["backend"], "batch": r["batch"],
             **{f"{k}_ms": r["latency_ms"][k] for k in ("mean", "p50", "p90", "min")},
             "images_per_s": r["throughput_images_per_s"], "speedup_vs_eager": r["speedup_vs_eager"],
             "unstable": r["unstable"]} for r in report["results"]]
    s = report["settings"]
    return {"rows": rows, "warnings": list(report["warnings"]), "notes": list(report["notes"]),
            "settings": {k: s[k] for k in ("size", "max_size", "threshold", "threads", "warmup", "iterations")},
            "images": [i["name"] for i in s["images"]]}


def _bench_row(report: Mapping[str, Any] | None, precision: str) -> dict[str, Any] | None:
    """The first ONNX Runtime (CPU) row of ``precision`` in the bench report (batch 1 first), or None."""
    rows = [r for r in (report or {}).get("results", []) if r.get("runner") == "onnxruntime"
            and r.get("precision") == precision]
    return min(rows, key=lambda r: r["batch"], default=None)


def precision_section(out: Path, latency: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """fp32 and the INT8 CPU variant side by side: PQ per group (pq.json, pq_int8_cpu.json), the variant's
    calibration and float blocks (precision_int8_cpu.json), and both models' rows of the one bench run; None when
    the variant's stage left no PQ file."""
    if not (out / INT8_CPU_FILES["pq"]).is_file():
        return None
    variant = read_json(out / INT8_CPU_FILES["report"])["int8"]
    models = []
    for name, precision, pq_file in (("model.onnx", "fp32", "pq.json"),
                                     (INT8_CPU_FILES["model"], "int8-cpu", INT8_CPU_FILES["pq"])):
        pq = read_json(out / pq_file)
        row = _bench_row(latency, precision)
        models.append({"model": name, "precision": precision, **{g: pq[g]["pq"] for g, _ in GROUPS},
                       "batch": None if row is None else row["batch"],
                       "mean_ms": None if row is None else row["latency_ms"]["mean"],
                       "speedup_vs_eager": None if row is None else row["speedup_vs_eager"],
                       "speedup_vs_fp32": None if row is None else row["speedup_vs_fp32"],
                       "pixel_agreement_with_eager": None if row is None or row["agreement"] is None
                       else row["agreement"]["pixel_agreement"]})
    drop = 100 * (models[0]["All"] - models[1]["All"])
    return {"models": models, "pq_drop_points": drop, "max_pq_drop_points": MAX_PQ_DROP["int8-cpu"],
            "target_met": drop <= MAX_PQ_DROP["int8-cpu"], "calibration_images": variant["images"],
            "calibration_method": variant["method"], "float_blocks": list(variant["float_blocks"])}


def export_section(report: Mapping[str, Any]) -> dict[str, Any]:
    return {"verdict": report["verdict"], "problems": list(report["problems"]), "runs": len(report["runs"]),
            "images": sum(len(r["images"]) for r in report["runs"])}


def build_summary(out: Path, size: str, results: Sequence[StageResult], total_seconds: float,
                  bench_ran: bool, nms_iou: float | None = None,
                  machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything summary.md shows; paths are relative to ``out``."""
    overlays = sorted((out / "infer" / "overlay").glob("*.jpg"))[:OVERLAYS_SHOWN]
    bench = out / "bench"
    curve = pq_curve(out / "stage1" / "log.jsonl", out / "stage2" / "log.jsonl")
    plot_curve(curve, out / "training_curve.png")
    has_nms = (out / "pq_nms.json").is_file()
    bench_report = read_json(bench / "report.json") if bench_ran else None
    precision = precision_section(out, bench_report)
    return {
        "size": size,
        "machine": dict(machine or {}),
        "pq": pq_section(read_json(out / "pq.json")),
        "pq_nms": pq_section(read_json(out / "pq_nms.json")) if has_nms else None,
        "nms_iou": nms_iou,
        "export": export_section(read_json(out / "export_report.json")),
        "latency": latency_section(bench_report) if bench_report is not None else None,
        "precision": precision,
        "training": {**curve, "plot": "training_curve.png"},
        "stages": [{"name": r.name, "status": r.status, "seconds": r.seconds, "reason": r.reason} for r in results],
        "total_seconds": total_seconds,
        "overlays": [p.relative_to(out).as_posix() for p in overlays],
        # The plots' names come from benchmarks/report.py; globbing keeps this driver free of its torch imports.
        "plots": [p.relative_to(out).as_posix() for p in sorted(bench.glob("*.png"))] if bench_ran else [],
        "reports": {"latency": "bench/report.md" if bench_ran else None, "pq": "pq.json",
                    "pq_nms": "pq_nms.json" if has_nms else None,
                    "pq_int8_cpu": INT8_CPU_FILES["pq"] if precision else None,
                    "precision_int8_cpu": INT8_CPU_FILES["report"] if precision else None,
                    "export": "export_report.json"},
        "commands": [line for r in results for line in r.commands],
    }


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _on_machine(summary: Mapping[str, Any]) -> str:
    m = summary.get("machine") or {}
    if not m.get("cpu"):
        return ""
    return f" Measured on {m['cpu']}, recipe {m.get('recipe', '?')}, training in {m['training_precision']}."


def _machine_note(machine: Mapping[str, Any]) -> str:
    """`` (features); recipe NAME: why`` as far as the summary recorded them."""
    features = f" ({machine['features']})" if machine.get("features") else ""
    recipe = f"recipe {machine['recipe']}: " if machine.get("recipe") else ""
    return f"{features}; {recipe}{machine['note']}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _seconds(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"


def render_markdown(summary: Mapping[str, Any], link: Callable[[str], str] = str) -> str:
    """summary.md; ``link`` maps an OUT-relative path to the link written (for copies under docs/)."""
    size = summary["size"]
    out = [f"# panseg demo ({size} size, synthetic data)", "",
           "Generated by `python -m benchmarks.demo" + (" --quick" if size == "quick" else "") + "`. "
           "Every number below is read from the files the stages wrote."
           + (f" CPU: {summary['machine']['cpu']}{_machine_note(summary['machine'])}."
              if summary.get("machine") else ""),
           "",
           "## Panoptic quality on the synthetic val set", ""]
    out += table(["", "PQ", "SQ", "RQ", "categories", "TP", "FP", "FN"],
                  [[g, _pct(m["pq"]), _pct(m["sq"]), _pct(m["rq"]), m["n"], m["tp"], m["fp"], m["fn"]]
                   for g, m in summary["pq"].items()])
    out += [f"From `{link(summary['reports']['pq'])}` (`panseg-rt eval`, panopticapi's rules; percent).", ""]
    targets = PQ_TARGETS.get(size, {})
    if targets:
        t = summary["training"]
        trained = t["stage1_minutes"] + t["stage2_minutes"]
        checks = [f"{g} PQ >= {_pct(v)} ({_met(summary['pq'][g]['pq'] >= v)})" for g, v in targets.items()]
        checks.append(f"training <= {TRAINING_MINUTES_TARGET[size]:.0f} min ({trained:.1f} min: "
                      f"{_met(trained <= TRAINING_MINUTES_TARGET[size])})")
        whole = summary["total_seconds"] / 60
        if all(s["status"] != "reused" for s in summary["stages"]):  # a rerun's time says nothing about the demo's
            checks.append(f"whole demo <= {DEMO_MINUTES_TARGET[size]:.0f} min ({whole:.1f} min: "
                          f"{_met(whole <= DEMO_MINUTES_TARGET[size])})")
        out += ["Targets: " + ", ".join(checks) + "." + _on_machine(summary), ""]
    if summary.get("pq_nms"):
        nms = summary["pq_nms"]
        out += [f"With the optional box NMS among things (`panseg-rt infer --nms-iou {summary['nms_iou']}`, off by "
                "default for parity with detr; same model, same threshold): "
                + ", ".join(f"{g} PQ {_pct(m['pq'])}" for g, m in nms.items())
                + f" (`{link(summary['reports']['pq_nms'])}`).", ""]
    t = summary["training"]
    out += ["## Training: PQ against minutes", "",
            f"Stage 1 (detection) {t['stage1_minutes']:.1f} min, stage 2 (mask head, frozen detector) "
            f"{t['stage2_minutes']:.1f} min: {t['stage1_minutes'] + t['stage2_minutes']:.1f} min of training "
            "(evaluation included), from the stages' `log.jsonl`.", ""]
    out += table(["training minutes", "stage-2 epoch", "PQ", "PQ things", "PQ stuff"],
                  [[f"{p['minutes']:.1f}", p["epoch"], f"{p['pq']:.1f}", f"{p['pq_th']:.1f}", f"{p['pq_st']:.1f}"]
                   for p in t["points"]])
    out += [f"![training curve]({link(t['plot'])})", ""]
    e = summary["export"]
    out += ["## Export verification", "",
            f"ONNX Runtime against PyTorch eager: **{e['verdict']}** ({e['runs']} runs, {e['images']} images)"
            + (": " + "; ".join(e["problems"]) if e["problems"] else "")
            + f". Details: `{link(summary['reports']['export'])}`.",
            ""]
    out += ["## Latency against PyTorch eager", ""]
    lat = summary["latency"]
    if lat is None:
        out += ["Not measured (`--skip-bench`).", ""]
    else:
        st = lat["settings"]
        out += [f"End to end (image file -> panoptic result), ms per call; images {', '.join(lat['images'])}, shorter "
                f"side {st['size']}, {st['threads']} threads, {st['warmup']} warmup + {st['iterations']} timed "
                "iterations, backends interleaved.", ""]
        out += table(["backend", "batch", "mean", "p50", "p90", "min", "images/s", "speedup vs eager"],
                      [[r["backend"], r["batch"], *(f"{r[k]:.1f}" for k in ("mean_ms", "p50_ms", "p90_ms", "min_ms")),
                        f"{r['images_per_s']:.2f}",
                        ("-" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x")
                        + (" (unstable)" if r["unstable"] else "")] for r in lat["rows"]])
        out += [f"> {w}" for w in lat["warnings"] + lat["notes"]]
        out += ([""] if lat["warnings"] or lat["notes"] else [])
        out += [f"Full report: [{link(summary['reports']['latency'])}]({link(summary['reports']['latency'])}). Plots:",
                "", *(f"![{Path(p).stem}]({link(p)})" for p in summary["plots"]), ""]
    out += _precision_markdown(summary, link)
    out += ["## Overlays (first val images)", ""]
    out += [" ".join(f"![{Path(p).stem}]({link(p)})" for p in summary["overlays"]) or "none written", ""]
    out += ["## Stages", ""]
    out += table(["stage", "status", "wall time"],
                  [[s["name"], s["status"], _seconds(s["seconds"])] for s in summary["stages"]])
    out += [f"This invocation: {_seconds(summary['total_seconds'])} (reused stages show the time of the run that made "
            "their outputs).", "", "## Commands", "", "From the repository root:", "", "```bash", *summary["commands"],
            "```", ""]
    return "\n".join(out)


def _optional(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _precision_markdown(summary: Mapping[str, Any], link: Callable[[str], str]) -> list[str]:
    """The INT8 CPU variant next to fp32: PQ on val, latency of the same bench run, and issue 15's PQ target."""
    p = summary.get("precision")
    if not p:
        return []
    reports = summary["reports"]
    out = ["## Reduced precision: the INT8 CPU model", "",
           f"`python -m export.precision model.onnx --precision int8 --int8-target cpu`: uint8 activations and int8 "
           f"weights (U8S8), {p['calibration_method']} calibration on the first {p['calibration_images']} *train* "
           f"images (never val); blocks kept in float, as the measured sensitivity sweep chose: "
           f"{', '.join(p['float_blocks']) or 'none'} (`{link(reports['precision_int8_cpu'])}`). Both models ran "
           f"`panseg-rt infer` + `panseg-rt eval` on the same val set (`{link(reports['pq'])}`, "
           f"`{link(reports['pq_int8_cpu'])}`) and were timed in the same bench run (ONNX Runtime, CPU).", ""]
    out += table(["model", "precision", "PQ", "PQ things", "PQ stuff", "PQ vs fp32", "mean ms", "speedup vs eager",
                  "speedup vs fp32", "pixel agreement with eager"],
                 [[m["model"], m["precision"], *(_pct(m[g]) for g, _ in GROUPS),
                   f"{100 * (m['All'] - p['models'][0]['All']):+.1f}", _optional(m["mean_ms"], ".1f"),
                   _optional(m["speedup_vs_eager"], ".2f") + ("x" if m["speedup_vs_eager"] is not None else ""),
                   _optional(m["speedup_vs_fp32"], ".2f") + ("x" if m["speedup_vs_fp32"] is not None else ""),
                   _optional(m["pixel_agreement_with_eager"], ".4f")] for m in p["models"]])
    out += [f"Target (issue 15): INT8 CPU PQ within {p['max_pq_drop_points']:.1f} point of fp32 "
            f"(fp32 minus INT8 CPU: {round(p['pq_drop_points'], 1) + 0.0:.1f} points: {_met(p['target_met'])})."
            + _on_machine(summary), ""]
    return out


def write_summary(summary: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    md, js = out / "summary.md", out / "summary.json"
    atomic_write_json(js, summary, indent=1)
    atomic_write_bytes(md, render_markdown(summary).encode())
    return md, js


def copy_to_docs(summary: Mapping[str, Any], out: Path, docs: Path) -> list[Path]:
    """Copy the overlays, the bench plots and a summary.md whose links point at those copies into ``docs``."""
    docs.mkdir(parents=True, exist_ok=True)
    copied: dict[str, str] = {}
    for rel in [*summary["overlays"], *summary["plots"], summary["training"]["plot"]]:
        name = f"overlay_{Path(rel).name}" if rel.startswith("infer/") else Path(rel).name
        shutil.copy2(out / rel, docs / name)
        copied[rel] = name
    for rel in summary["reports"].values():
        if rel is not None:
            name = "latency_report.md" if rel.endswith("report.md") else Path(rel).name
            shutil.copy2(out / rel, docs / name)
            copied[rel] = name
    atomic_write_bytes(docs / "summary.md", render_markdown(summary, lambda rel: copied.get(rel, rel)).encode())
    return [docs / "summary.md", *(docs / name for name in copied.values())]

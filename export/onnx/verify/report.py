"""The verification report: what was checked and compared, as dataclasses, JSON and the printed table.

The field names are the report's public format (``--json FILE.json``, docs/demo/export_report.json); the tests
and the demo summary read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from runtime.contract import PRED_BOXES, PRED_LOGITS, PRED_MASKS

OUTPUT_LABELS = {PRED_LOGITS: "logits", PRED_BOXES: "boxes", PRED_MASKS: "masks"}  # short names: table, tolerances


@dataclass
class OutputError:
    max_abs: float
    max_rel: float  # max_abs / max|reference|
    scale: float  # max|reference|
    passed: bool


@dataclass
class Run:
    """One batch through both engines."""

    case: str  # e.g. "96 b2"
    input_shape: list[int]
    images: list[str]
    errors: dict[str, OutputError]
    pixel_agreement: list[float] = field(default_factory=list)
    same_segments: list[bool] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)  # per image, in the eager result
    eager_ms: float = 0.0
    onnxruntime_ms: float = 0.0  # the deployed engine stage (PanopticModel.run)
    passed: bool = True
    kept: list[int] = field(default_factory=list)  # panoptic: per image, queries kept (eager's logits)
    same_kept: list[bool] = field(default_factory=list)  # panoptic: same kept queries in both engines


@dataclass
class Report:
    checks: dict[str, str] = field(default_factory=dict)  # name -> "ok" or the problem
    runs: list[Run] = field(default_factory=list)
    tolerances: dict[str, Any] = field(default_factory=dict)
    verdict: str = "FAILED"
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "PASSED"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (an infinite or NaN error becomes null: strict JSON has no Infinity)."""
        return _finite(asdict(self))

    def conclude(self) -> None:
        """Set the problems and the verdict from the checks and the runs."""
        self.problems = [f"{k}: {v}" for k, v in self.checks.items() if v != "ok"]
        failed = [r for r in self.runs if not r.passed]
        if failed:
            self.problems.append(f"{len(failed)} of {len(self.runs)} runs beyond tolerance (first: {failed[0].case} "
                                 f"{', '.join(failed[0].images)})")
        self.verdict = "PASSED" if not self.problems else "FAILED"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _fmt(x: float) -> str:
    return f"{x:.1e}" if np.isfinite(x) else "inf"


def format_table(report: Report) -> str:
    """One row per case (size and batch), the worst error over its runs, then one verdict line."""
    lines = [f"check {name}: {status}" for name, status in report.checks.items()]
    cases: dict[str, list[Run]] = {}
    for run in report.runs:
        cases.setdefault(run.case, []).append(run)
    outputs = list(report.runs[0].errors) if report.runs else []
    header = f"{'case':<14}{'runs':>5}  " + "".join(f"{OUTPUT_LABELS[o] + ' abs/rel':<20}" for o in outputs)
    if PRED_MASKS in outputs:
        header += f"{'pixels':>8}{'same segs':>11}{'segs':>6}"
    kept_columns = any(r.same_kept for r in report.runs)
    if kept_columns:
        header += f"{'kept':>6}{'same kept':>11}"
    header += f"{'eager ms':>10}{'ort ms':>9}  ok"
    lines.append(header)
    for case, runs in cases.items():
        row = f"{case:<14}{len(runs):>5}  "
        for o in outputs:
            worst_abs = max(r.errors[o].max_abs for r in runs)
            worst_rel = max(r.errors[o].max_rel for r in runs)
            row += f"{_fmt(worst_abs) + '/' + _fmt(worst_rel):<20}"
        if PRED_MASKS in outputs:
            pixels = min((p for r in runs for p in r.pixel_agreement), default=1.0)
            same = sum(s for r in runs for s in r.same_segments)
            total = sum(len(r.same_segments) for r in runs)
            segs = sum(s for r in runs for s in r.segments)
            row += f"{pixels:>8.4f}{f'{same}/{total}':>11}{segs:>6}"
        if kept_columns:
            kept = sum(k for r in runs for k in r.kept)
            same_kept = sum(s for r in runs for s in r.same_kept)
            row += f"{kept:>6}{f'{same_kept}/{sum(len(r.same_kept) for r in runs)}':>11}"
        eager = sum(r.eager_ms for r in runs) / len(runs)
        ort_ms = sum(r.onnxruntime_ms for r in runs) / len(runs)
        row += f"{eager:>10.1f}{ort_ms:>9.1f}  {'yes' if all(r.passed for r in runs) else 'NO'}"
        lines.append(row)
    lines.append(verdict_line(report))
    return "\n".join(lines)


def verdict_line(report: Report) -> str:
    n_images = sum(len(r.images) for r in report.runs)
    if report.passed:
        return f"verification PASSED ({len(report.runs)} runs, {n_images} images)"
    return f"verification FAILED: {'; '.join(report.problems)}"

"""ONNX Runtime's profiler output (``SessionOptions.enable_profiling``) -> time per operator type and per node, with
each node's FLOPs and FLOP/s.

What the profile holds: one ``model_run`` event (category ``Session``) per ``InferenceSession.run`` and, per node that
ran, a ``NAME_kernel_time`` event (category ``Node``) with its duration in microseconds, its operator type and the
shapes it saw. Node events are assigned to the run whose time window contains them; the first ``warmup`` runs are
dropped (first-call allocations and ORT's lazy weight packing would otherwise count) and the rest averaged.

FLOPs (2 per multiply-add, as benchmarks/flops.py counts) of Conv, MatMul and Gemm and of ORT's fused and NCHWc forms
of them, from the shapes the kernel ran at. ORT's NCHWc layout pads channels up to its block size (16 with AVX-512),
so the kernel may do more work than the model needs: a node's ``flops`` are the *useful* ones, taken from the
original graph's weight when the optimized node can be traced back to it (ORT names a converted convolution after the
original one's output: ``X`` -> ``X_nchwc``), and ``executed_flops`` what the padded kernel computed.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

CONV_OPS = ("Conv", "FusedConv", "NhwcConv")
MATMUL_OPS = ("MatMul", "FusedMatMul", "Gemm", "FusedGemm")
NCHWC_SUFFIX = "_nchwc"
KERNEL_SUFFIX = "_kernel_time"


def _shapes(entries: Sequence[Mapping[str, Sequence[int]]] | None) -> list[list[int]]:
    """The profiler's ``[{"float": [dims]}, ...]`` -> ``[[dims], ...]``."""
    return [list(next(iter(entry.values()))) for entry in entries or [] if entry]


@dataclass(frozen=True)
class NodeEvent:
    """One node's execution in one run."""

    node: str
    op_type: str
    run: int  # index among the profiled runs, warmup included
    microseconds: float
    inputs: list[list[int]]
    outputs: list[list[int]]


def node_events(events: Sequence[Mapping[str, Any]]) -> tuple[list[NodeEvent], list[tuple[float, float]]]:
    """(every node execution with its run index, every run's (start, duration) in microseconds) from a profile."""
    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    found = []
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith(KERNEL_SUFFIX):
            continue
        run = next((k for k, (start, duration) in enumerate(runs) if start <= e["ts"] <= start + duration), None)
        if run is None:
            continue
        args = e.get("args", {})
        found.append(NodeEvent(e["name"][:-len(KERNEL_SUFFIX)], args.get("op_name", "?"), run, float(e["dur"]),
                               _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))))
    return found, runs


def load_events(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def original_weights(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Output name of each Conv/MatMul/Gemm of the unoptimized graph -> its weight's (second input's) shape."""
    initializers = {t.name: list(t.dims) for t in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        if node.op_type in CONV_OPS + MATMUL_OPS and len(node.input) > 1 and node.input[1] in initializers:
            weights[node.output[0]] = initializers[node.input[1]]
    return weights


def executed_flops(op_type: str, inputs: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]) -> int:
    """FLOPs the kernel computed at the shapes it ran (0 for operators that do no multiply-adds)."""
    if not outputs or len(inputs) < 2:
        return 0
    out = math.prod(outputs[0])
    if op_type in CONV_OPS:
        return 2 * out * math.prod(inputs[1][1:])  # weight [Cout, Cin / groups, kh, kw]
    if op_type in MATMUL_OPS:
        return 2 * out * inputs[0][-1]  # A [..., M, K]: exporters leave Gemm's transA unset
    return 0


def useful_flops(event: NodeEvent, weights: Mapping[str, list[int]]) -> int:
    """FLOPs the model needs from this node: for an NCHWc convolution traced back to its original weight, the
    unpadded channels; otherwise what the kernel executed."""
    original = event.node.removesuffix(NCHWC_SUFFIX)
    if event.op_type not in CONV_OPS or original == event.node or original not in weights or not event.outputs:
        return executed_flops(event.op_type, event.inputs, event.outputs)
    weight = weights[original]
    out = list(event.outputs[0])
    out[1] = weight[0]  # padded output channels -> the real ones
    return 2 * math.prod(out) * math.prod(weight[1:])


@dataclass
class NodeRow:
    node: str
    op_type: str
    ms: float  # mean per profiled run
    share: float  # of the summed node time
    flops: int
    executed_flops: int
    output_shape: list[int]
    flop_per_s: float = 0.0
    share_of_peak: float | None = None


@dataclass
class OpRow:
    op_type: str
    nodes: int
    ms: float
    share: float
    flops: int
    flop_per_s: float = 0.0
    share_of_peak: float | None = None


@dataclass
class Profile:
    """A graph's profile, averaged over the runs after the warmup."""

    runs: int
    warmup: int
    node_ms: float  # summed node times per run
    run_ms: float  # mean model_run duration (node times + scheduling and allocation between them)
    ops: list[OpRow]
    nodes: list[NodeRow]
    flops: int
    peak_flop_per_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def aggregate(events: Sequence[Mapping[str, Any]], warmup: int, weights: Mapping[str, list[int]] | None = None,
              peak_flop_per_s: float | None = None) -> Profile:
    """Per-node and per-operator-type means over the runs after the first ``warmup`` (slowest first)."""
    found, runs = node_events(events)
    kept_runs = len(runs) - warmup
    if kept_runs < 1:
        raise ValueError(f"the profile holds {len(runs)} runs, none left after a warmup of {warmup}")
    per_node: dict[str, list[NodeEvent]] = defaultdict(list)
    for event in found:
        if event.run >= warmup:
            per_node[event.node].append(event)
    total_us = sum(e.microseconds for group in per_node.values() for e in group) / kept_runs
    rows = []
    for node, group in per_node.items():
        us = sum(e.microseconds for e in group) / kept_runs
        last = group[-1]
        rows.append(NodeRow(node, last.op_type, us / 1e3, us / total_us if total_us else 0.0,
                            useful_flops(last, weights or {}), executed_flops(last.op_type, last.inputs, last.outputs),
                            last.outputs[0] if last.outputs else []))
    by_op: dict[str, list[NodeRow]] = defaultdict(list)
    for row in rows:
        by_op[row.op_type].append(row)
    ops = [OpRow(op, len(group), sum(r.ms for r in group), sum(r.share for r in group), sum(r.flops for r in group))
           for op, group in by_op.items()]
    for row in [*rows, *ops]:
        row.flop_per_s = row.flops / (row.ms / 1e3) if row.ms > 0 else 0.0
        row.share_of_peak = row.flop_per_s / peak_flop_per_s if peak_flop_per_s and row.flops else None
    rows.sort(key=lambda r: -r.ms)
    ops.sort(key=lambda r: -r.ms)
    run_ms = sum(duration for _, duration in runs[warmup:]) / kept_runs / 1e3
    return Profile(kept_runs, warmup, total_us / 1e3, run_ms, ops, rows, sum(r.flops for r in rows), peak_flop_per_s)

"""PQ against training minutes, from the two stages' ``log.jsonl`` files (what the training issue asks to report).

Stage 1 trains detection only (no PQ); its minutes are the offset of every stage-2 point, so the x axis is the total
training time of the recipe. Each stage-2 epoch that was evaluated gives one point (All, Things, Stuff).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.errors import PansegError


def read_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a training log (one per epoch)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise PansegError(f"{path}: training log not found") from None
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except ValueError as exc:
        raise PansegError(f"{path}: not a JSON-lines training log ({exc})") from None


def pq_curve(stage1_log: Path, stage2_log: Path) -> dict[str, Any]:
    """{'stage1_minutes', 'stage2_minutes', 'points': [{'minutes', 'epoch', 'pq', 'pq_th', 'pq_st'}]} (PQ in %)."""
    stage1, stage2 = read_log(stage1_log), read_log(stage2_log)
    if not stage1 or not stage2:
        raise PansegError(f"{stage1_log if not stage1 else stage2_log}: empty training log")
    offset = float(stage1[-1]["minutes"])
    points = [{"minutes": round(offset + float(e["minutes"]), 3), "epoch": int(e["epoch"]),
               **{k: float(e[k]) for k in ("pq", "pq_th", "pq_st")}} for e in stage2 if "pq" in e]
    return {"stage1_minutes": offset, "stage2_minutes": float(stage2[-1]["minutes"]), "points": points}


def plot_curve(curve: dict[str, Any], path: Path) -> Path:
    """PNG of PQ (All/Things/Stuff) against total training minutes; the stage boundary is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime.atomic import atomic_write_with

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    xs = [0.0, curve["stage1_minutes"]] + [p["minutes"] for p in curve["points"]]
    for key, label in (("pq", "All"), ("pq_th", "Things"), ("pq_st", "Stuff")):
        ax.plot(xs, [0.0, 0.0] + [p[key] for p in curve["points"]], marker="o", label=label)
    ax.axvline(curve["stage1_minutes"], color="grey", linestyle=":", linewidth=1)
    ax.text(curve["stage1_minutes"], 2, " mask head starts", color="grey", fontsize=8)
    ax.set_xlabel("training minutes (stage 1 detection, then stage 2 masks)")
    ax.set_ylabel("PQ on val (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path

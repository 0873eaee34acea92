"""What training prints on the terminal: one readable line per epoch, and a short table for ``--eval``.

Every number of an epoch goes to ``OUTPUT_DIR/log.jsonl`` (and to stdout as JSON with ``--json``); the terminal
gets the few that tell whether training is going well, so a person can follow a run without parsing 600-character
JSON lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.timefmt import format_duration

MAIN_TERMS = ("ce", "bbox", "giou", "mask", "dice")  # detr's loss terms, without the auxiliary decoder layers'
PQ_GROUPS = (("All", ""), ("Things", "_th"), ("Stuff", "_st"))


def _losses(stats: Mapping[str, Any], prefix: str) -> str:
    """'loss 12.345 (ce 0.812, bbox 0.123, ...)' from the entries named PREFIXloss and PREFIXloss_TERM."""
    terms = [f"{term} {stats[f'{prefix}loss_{term}']:.3f}" for term in MAIN_TERMS if f"{prefix}loss_{term}" in stats]
    return f"loss {stats[f'{prefix}loss']:.3f}" + (f" ({', '.join(terms)})" if terms else "")


def _pq(stats: Mapping[str, Any]) -> str:
    return f"PQ {stats['pq']:.1f} (things {stats['pq_th']:.1f}, stuff {stats['pq_st']:.1f})"


def epoch_line(log: Mapping[str, Any], epochs: int, epoch_seconds: float, total_seconds: float) -> str:
    """'epoch 3/25 | 12.4 s (total 41.0 s) | loss ... | lr 1.00e-04 | val loss 9.1 | PQ ...' from an epoch's log."""
    parts = [f"epoch {log['epoch'] + 1}/{epochs}",
             f"{format_duration(epoch_seconds)} (total {format_duration(total_seconds)})",
             _losses(log, "train_"), f"lr {log['lr']:.2e}"]
    if "val_loss" in log:
        parts.append(f"val loss {log['val_loss']:.3f}")  # its terms are in log.jsonl: the line stays short
    if "pq" in log:
        parts.append(_pq(log))
    return " | ".join(parts)


def eval_summary(stats: Mapping[str, Any], epoch: int) -> str:
    """The validation loss and, for panoptic models, PQ/SQ/RQ of all classes, things and stuff, as a small table."""
    after = f" of the checkpoint from epoch {epoch + 1}" if epoch >= 0 else ""
    lines = [f"evaluation{after}: val {_losses(stats, 'val_')}"]
    if "pq" in stats:
        lines.append(f"{'':8}{'PQ':>7}{'SQ':>7}{'RQ':>7}")
        for group, suffix in PQ_GROUPS:
            lines.append(f"{group:8}" + "".join(f"{stats[f'{metric}{suffix}']:7.1f}" for metric in ("pq", "sq", "rq")))
    return "\n".join(lines)

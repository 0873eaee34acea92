"""Which blocks to keep in float: a measured per-block sensitivity sweep, not a guess.

Quantize everything, then everything but one block at a time (backbone stages, encoder, decoder, heads, mask head),
each time running the whole deployed model on the calibration images and comparing with fp32. Blocks are then kept
in float in the order of how much keeping each alone helped, one more at a time, until the target agreement is met or
the budget of float blocks is spent. Every measurement is a row of the table the export report shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from export.precision.agreement import Agreement

Measure = Callable[[Sequence[str]], Agreement]  # float blocks -> agreement of that variant with fp32


@dataclass
class SweepRow:
    step: str  # "all quantized", "one block in float", "chosen so far"
    float_blocks: tuple[str, ...]
    nodes: int
    agreement: Agreement

    def to_json(self) -> dict[str, object]:
        a = self.agreement
        return {"step": self.step, "float_blocks": list(self.float_blocks), "float_nodes": self.nodes,
                "category_agreement": a.category_agreement, "same_segment_rate": a.same_segment_rate,
                "max_logits_error": a.max_logits_error, "pq": a.pq}


def score(a: Agreement) -> tuple[float, float, float]:
    """Higher is better: category agreement, then same-segment rate, then the (negated) worst logits error."""
    return a.category_agreement, a.same_segment_rate, -a.max_logits_error


def sensitivity_sweep(blocks: Sequence[str], node_counts: dict[str, int], measure: Measure, target: float,
                      budget: int, progress: Callable[[str], None] = lambda _: None
                      ) -> tuple[list[str], list[SweepRow]]:
    """(blocks to keep in float, the table). ``target``: the category agreement to reach; ``budget``: at most this
    many float blocks."""

    def row(step: str, chosen: Sequence[str]) -> SweepRow:
        progress(f"sensitivity: {step}: {', '.join(chosen) or 'none in float'}")
        return SweepRow(step, tuple(chosen), sum(node_counts.get(b, 0) for b in chosen), measure(chosen))

    rows = [row("all quantized", [])]
    if rows[0].agreement.category_agreement >= target or budget == 0:
        return [], rows
    singles = [row("one block in float", [block]) for block in blocks]
    rows += singles
    ranked = [r.float_blocks[0] for r in sorted(singles, key=lambda r: score(r.agreement), reverse=True)
              if score(r.agreement) > score(rows[0].agreement)]
    chosen: list[str] = []
    tried = [rows[0]]
    for block in ranked[:budget]:
        chosen.append(block)
        if len(chosen) == 1:
            current = next(r for r in singles if r.float_blocks == (block,))
        else:
            current = row("chosen so far", chosen)
            rows.append(current)
        tried.append(current)
        if current.agreement.category_agreement >= target:
            break
    # the best variant measured within the budget (adding a block that helped alone may not help together)
    best = max(tried, key=lambda r: score(r.agreement))
    return list(best.float_blocks), rows


def format_sweep(rows: Sequence[SweepRow]) -> str:
    lines = ["| step | kept in float | float nodes | category agreement | same segments | max logits error | PQ |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        a = r.agreement
        lines.append(f"| {r.step} | {', '.join(r.float_blocks) or '-'} | {r.nodes} | {a.category_agreement:.4f} | "
                     f"{a.same_segment_rate:.2f} | {a.max_logits_error:.3g} | {a.pq:.1f} |")
    return "\n".join(lines)

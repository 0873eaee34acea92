"""`panseg-rt eval`: PQ/SQ/RQ of panoptic predictions against ground truth, with panopticapi's rules."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.atomic import atomic_write_json
from runtime.pq import GROUPS, default_workers, pq_compute
from runtime.subcommands import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt-json", required=True, help="ground-truth COCO panoptic JSON (also gives the categories)")
    parser.add_argument("--gt-folder", required=True, help="folder of ground-truth panoptic PNGs")
    parser.add_argument("--pred-json", required=True, help="predicted COCO panoptic JSON")
    parser.add_argument("--pred-folder", required=True, help="folder of predicted panoptic PNGs")
    parser.add_argument("--json", metavar="FILE", help="also write the results here as JSON (atomically)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"processes to use (default: every CPU, here {default_workers()})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def format_results(results: dict[str, Any]) -> str:
    """The All/Things/Stuff table (like panopticapi's printout, in percent) and a per-class table."""
    lines = [f"{'':10s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>5s}", "-" * 10 + "+" + "-" * 28]
    for name, _ in GROUPS:
        r = results[name]
        lines.append(f"{name:10s}| {100 * r['pq']:6.1f} {100 * r['sq']:6.1f} {100 * r['rq']:6.1f} {r['n']:5d}")
    lines += ["", f"{'id':>5s}  {'name':24s} {'kind':5s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} "
                  f"{'TP':>6s} {'FP':>6s} {'FN':>6s}"]
    for cat_id, m in results["per_class"].items():
        lines.append(f"{cat_id:>5}  {m['name'][:24]:24s} {'thing' if m['isthing'] else 'stuff':5s} "
                     f"{100 * m['pq']:6.1f} {100 * m['sq']:6.1f} {100 * m['rq']:6.1f} "
                     f"{m['tp']:6d} {m['fp']:6d} {m['fn']:6d}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    results = pq_compute(args.gt_json, args.gt_folder, args.pred_json, args.pred_folder,
                         workers=args.workers, progress=not args.no_progress)
    if args.json:
        atomic_write_json(args.json, results, indent=2)
    print(format_results(results))
    if args.json:
        print(f"wrote {args.json}")
    return 0

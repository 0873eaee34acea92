"""The end-to-end demo on the built-in synthetic data: it only chains the real commands, printing each one.

Stages that have not landed yet are skipped; see README "Status".
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"full": ["--train", "2000", "--val", "100"], "quick": ["--train", "64", "--val", "16", "--size", "96"]}


def run(cmd: list[str]) -> float:
    """Print the command so a user can copy it, run it, and return its wall time."""
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__)
    parser.add_argument("--out", default="demo", help="output folder (default: demo/)")
    parser.add_argument("--quick", action="store_true", help="the small size CI runs")
    parser.add_argument("--fresh", action="store_true", help="start over instead of reusing finished stages")
    args = parser.parse_args(argv)
    out = Path(args.out)
    data = out / "data"
    py = sys.executable
    timings = {}
    done = data / "annotations" / "panoptic_val2017.json"
    if args.fresh or not done.exists():
        timings["dataset"] = run([py, "-m", "train.prepare", "synthetic", "--out", str(data),
                                  *SIZES["quick" if args.quick else "full"]])
    for split in ("train", "val"):
        timings[f"validate {split}"] = run([py, "-m", "runtime", "validate", "--check-area",
                                            "--json", str(data / "annotations" / f"panoptic_{split}2017.json"),
                                            "--folder", str(data / f"panoptic_{split}2017")])
    print("\nstage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

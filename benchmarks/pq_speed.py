"""Time panseg's PQ evaluation against panopticapi's ``pq_compute`` on the same synthetic files, same run.

It writes a few hundred COCO-panoptic-like images (wavy stuff bands, overlapping thing instances, a few crowd
regions, one-pixel VOID borders) and predictions made by perturbing them the way a real model errs (shifted and
resized instances, missed ones, wrong classes, spurious ones), runs both evaluators, checks that every number
agrees to 1e-9, and writes report.md and report.json into the -o/--output folder.

    python -m benchmarks.pq_speed --images 300 --shape 480x640 -o bench/pq
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runtime.atomic import atomic_write_bytes, atomic_write_json
from runtime.panoptic_format import VOID, write_panoptic_png
from runtime.pq import default_workers, load_eval_inputs, pq_compute, pq_compute_stats
from runtime.subcommands import ArgumentParser, add_deprecated, non_negative_int, parse_hw, positive_int

THING_IDS = list(range(1, 21))
STUFF_IDS = list(range(101, 111))
CATEGORIES = [{"id": c, "name": f"thing{c}", "isthing": 1, "color": [c * 10 % 256, 40, 200]} for c in THING_IDS] + [
    {"id": c, "name": f"stuff{c}", "isthing": 0, "color": [90, c * 7 % 256, 30]} for c in STUFF_IDS
]


# ------------------------------------------------------------------------------------------- scene model


def random_scene(rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
    """Parameters of one image: stuff bands (boundary curves) and thing instances (ellipses or boxes)."""
    n_bands = int(rng.integers(2, 6))
    bands = [
        {
            "base": float(b),
            "amp": float(rng.uniform(0.02, 0.08) * h),
            "freq": float(rng.uniform(0.5, 3.0) * 2 * np.pi / w),
            "phase": float(rng.uniform(0, 2 * np.pi)),
        }
        for b in np.sort(rng.uniform(0.15, 0.9, n_bands - 1) * h)
    ]
    stuff_cats = rng.choice(STUFF_IDS, size=n_bands, replace=False).tolist()
    things = []
    for _ in range(int(rng.integers(4, 25))):
        r = float(rng.uniform(0.03, 0.2) * min(h, w))
        things.append({
            "cat": int(rng.choice(THING_IDS)),
            "box": bool(rng.random() < 0.4),
            "cy": float(rng.uniform(0, h)),
            "cx": float(rng.uniform(0, w)),
            "ry": r * float(rng.uniform(0.5, 1.5)),
            "rx": r * float(rng.uniform(0.5, 1.5)),
            "crowd": bool(rng.random() < 0.05),
        })
    return {"bands": bands, "stuff_cats": stuff_cats, "things": things}


def perturb_scene(scene: dict[str, Any], rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
    """A prediction of ``scene``: boundaries and instances moved a little, some missed, mislabelled or invented."""
    bands = [{**b, "base": b["base"] + rng.normal(0, 0.02 * h), "phase": b["phase"] + rng.normal(0, 0.3)}
             for b in scene["bands"]]
    stuff_cats = [int(rng.choice(STUFF_IDS)) if rng.random() < 0.05 else c for c in scene["stuff_cats"]]
    things = []
    for t in scene["things"]:
        if rng.random() < 0.1:  # missed
            continue
        r = (t["ry"] + t["rx"]) / 2
        things.append({
            **t,
            "cat": int(rng.choice(THING_IDS)) if rng.random() < 0.08 else t["cat"],
            "cy": t["cy"] + rng.normal(0, 0.12 * r),
            "cx": t["cx"] + rng.normal(0, 0.12 * r),
            "ry": t["ry"] * rng.uniform(0.8, 1.2),
            "rx": t["rx"] * rng.uniform(0.8, 1.2),
            "crowd": False,
        })
    extra = random_scene(rng, h, w)["things"][: int(rng.integers(0, 3))]
    things += [{**t, "crowd": False} for t in extra]
    return {"bands": bands, "stuff_cats": stuff_cats, "things": things}


def render_scene(
    scene: dict[str, Any], rng: np.random.Generator, h: int, w: int, void_borders: bool
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Id map and segments_info (random 24-bit ids, areas from the pixels) of a scene."""
    xs = np.arange(w)
    ys = np.arange(h)[:, None]
    band = np.zeros((h, w), dtype=np.int64)
    for b in scene["bands"]:
        band += ys >= b["base"] + b["amp"] * np.sin(b["freq"] * xs + b["phase"])
    labels = band  # 0..n_bands-1 are stuff, n_bands.. are things
    n_stuff = len(scene["stuff_cats"])
    for k, t in enumerate(scene["things"]):
        y0, y1 = int(max(0, t["cy"] - t["ry"])), int(min(h, t["cy"] + t["ry"] + 1))
        x0, x1 = int(max(0, t["cx"] - t["rx"])), int(min(w, t["cx"] + t["rx"] + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        window = labels[y0:y1, x0:x1]
        if t["box"]:
            window[...] = n_stuff + k
        else:
            dy = (np.arange(y0, y1)[:, None] - t["cy"]) / t["ry"]
            dx = (np.arange(x0, x1) - t["cx"]) / t["rx"]
            window[dy**2 + dx**2 <= 1] = n_stuff + k
    cats = scene["stuff_cats"] + [t["cat"] for t in scene["things"]]
    crowd = [False] * n_stuff + [t["crowd"] for t in scene["things"]]
    present, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    seg_ids = rng.choice((1 << 24) - 1, size=present.size, replace=False) + 1
    id_map = seg_ids[inverse.reshape(h, w)].astype(np.uint32)
    if void_borders:  # COCO leaves the pixels between segments unlabelled
        edge = np.zeros((h, w), dtype=bool)
        edge[1:] |= id_map[1:] != id_map[:-1]
        edge[:, 1:] |= id_map[:, 1:] != id_map[:, :-1]
        id_map[edge] = VOID
    areas = dict(zip(*np.unique(id_map, return_counts=True), strict=True))
    segments = [
        {"id": int(seg_ids[k]), "category_id": int(cats[label]), "area": int(areas[seg_ids[k]]),
         "iscrowd": int(crowd[label])}
        for k, label in enumerate(present.tolist())
        if seg_ids[k] in areas
    ]
    return id_map, segments


def _make_image(args: tuple[int, int, int, int, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Render and write the GT and prediction PNGs of image ``index``; return both annotations."""
    index, seed, h, w, root = args
    rng = np.random.default_rng([seed, index])
    scene = random_scene(rng, h, w)
    gt_map, gt_segs = render_scene(scene, rng, h, w, void_borders=True)
    pred_map, pred_segs = render_scene(perturb_scene(scene, rng, h, w), rng, h, w, void_borders=False)
    for seg in pred_segs:
        del seg["iscrowd"]
    name = f"{index:012d}.png"
    write_panoptic_png(Path(root) / "gt" / name, gt_map)
    write_panoptic_png(Path(root) / "pred" / name, pred_map)
    return ({"image_id": index, "file_name": name, "segments_info": gt_segs},
            {"image_id": index, "file_name": name, "segments_info": pred_segs})


def make_dataset(root: str | os.PathLike, n_images: int, h: int, w: int, seed: int = 0,
                 workers: int = 1, progress: bool = True) -> dict[str, Path]:
    """Write gt.json + gt/ and pred.json + pred/ under ``root``; returns their paths."""
    root = Path(root)
    jobs = [(i, seed, h, w, str(root)) for i in range(n_images)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_make_image, jobs, chunksize=8), total=n_images, desc="generate",
                                disable=not progress))
    else:
        results = [_make_image(j) for j in tqdm(jobs, desc="generate", disable=not progress)]
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w} for i in range(n_images)]
    paths = {"gt_json": root / "gt.json", "gt_folder": root / "gt", "pred_json": root / "pred.json",
             "pred_folder": root / "pred"}
    for key, k in (("gt_json", 0), ("pred_json", 1)):
        atomic_write_json(paths[key], {"images": images, "annotations": [r[k] for r in results],
                                       "categories": CATEGORIES})
    return paths


# ------------------------------------------------------------------------------------------- timing


def panopticapi_pq(paths: dict[str, Path]) -> dict[str, Any]:
    """panopticapi's pq_compute, its chatter silenced (forked workers inherit the redirected stdout)."""
    from panopticapi.evaluation import pq_compute as reference

    with contextlib.redirect_stdout(io.StringIO()):
        return reference(str(paths["gt_json"]), str(paths["pred_json"]), str(paths["gt_folder"]),
                         str(paths["pred_folder"]))


def single_process_cpu(paths: dict[str, Path]) -> dict[str, float]:
    """CPU seconds of each evaluator's per-image work in this one process: the per-image cost, robust to load
    from other processes on a shared machine (wall time with every core is measured separately)."""
    from panopticapi.evaluation import pq_compute_single_core

    pairs, categories = load_eval_inputs(paths["gt_json"], paths["gt_folder"], paths["pred_json"],
                                         paths["pred_folder"])
    start = time.process_time()
    pq_compute_stats(pairs, paths["gt_folder"], paths["pred_folder"], categories, workers=1, progress=False)
    ours = time.process_time() - start
    pairs, _ = load_eval_inputs(paths["gt_json"], paths["gt_folder"], paths["pred_json"], paths["pred_folder"])
    ref_categories = {c["id"]: c for c in json.loads(Path(paths["gt_json"]).read_text())["categories"]}
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        pq_compute_single_core(0, pairs, str(paths["gt_folder"]), str(paths["pred_folder"]), ref_categories)
    return {"panopticapi": time.process_time() - start, "panseg": ours}


def max_difference(ours: dict[str, Any], ref: dict[str, Any]) -> float:
    """Largest absolute difference over every pq/sq/rq (groups and classes); n must be equal."""
    diff = 0.0
    for group in ("All", "Things", "Stuff"):
        if ours[group]["n"] != ref[group]["n"]:
            raise AssertionError(f"{group}: n {ours[group]['n']} != panopticapi's {ref[group]['n']}")
        diff = max(diff, *(abs(ours[group][k] - ref[group][k]) for k in ("pq", "sq", "rq")))
    for cat_id, m in ref["per_class"].items():
        diff = max(diff, *(abs(ours["per_class"][cat_id][k] - m[k]) for k in ("pq", "sq", "rq")))
    return diff


def _width_x_height(text: str) -> tuple[int, int]:
    """The deprecated ``--size WIDTHxHEIGHT``, read with the shared parser and turned into (height, width)."""
    width, height = parse_hw(text)
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks.pq_speed", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=positive_int, default=300)
    parser.add_argument("--shape", type=parse_hw, default=(480, 640), metavar="HxW",
                        help="image height x width (default 480x640)")
    add_deprecated(parser, "--size", "--shape HxW (height first)", type=_width_x_height, dest="shape")
    parser.add_argument("-o", "--output", required=True, help="folder for report.md and report.json")
    add_deprecated(parser, "--out", "-o/--output")
    parser.add_argument("--repeat", type=positive_int, default=3,
                        help="timed runs of each evaluator, best kept (default 3)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--data", help="keep the generated dataset here instead of a temporary folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    h, w = args.shape
    cores = default_workers()

    with tempfile.TemporaryDirectory(prefix="pq_speed_") as tmp:
        root = Path(args.data) if args.data else Path(tmp)
        paths = make_dataset(root, args.images, h, w, seed=args.seed, workers=cores)
        wall: dict[str, list[float]] = {"panopticapi": [], "panseg": []}
        cpu: dict[str, list[float]] = {"panopticapi": [], "panseg": []}
        for _ in tqdm(range(args.repeat), desc="timing"):  # interleaved: load from other processes hits both
            start = time.perf_counter()
            ref = panopticapi_pq(paths)
            wall["panopticapi"].append(time.perf_counter() - start)
            start = time.perf_counter()
            ours = pq_compute(paths["gt_json"], paths["gt_folder"], paths["pred_json"], paths["pred_folder"],
                              progress=False)
            wall["panseg"].append(time.perf_counter() - start)
            for k, v in single_process_cpu(paths).items():
                cpu[k].append(v)
    diff = max_difference(ours, ref)
    if diff > 1e-9:
        raise AssertionError(f"panseg and panopticapi disagree by {diff:.3g}")
    best_wall = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    report = {
        "images": args.images, "shape": f"{h}x{w}", "cores": cores, "repeat": args.repeat,
        "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
        "wall_seconds_all_cores": wall, "cpu_seconds_one_process": cpu,
        "speedup_wall": best_wall["panopticapi"] / best_wall["panseg"],
        "speedup_cpu": best_cpu["panopticapi"] / best_cpu["panseg"],
        "max_abs_difference": diff,
        "results": {g: ours[g] for g in ("All", "Things", "Stuff")},
    }
    out = Path(args.output)
    atomic_write_json(out / "report.json", report, indent=2)
    ms = {k: 1000 * v / args.images for k, v in best_cpu.items()}
    lines = [
        "# PQ evaluation speed: panseg vs panopticapi",
        "",
        f"{args.images} synthetic images of {h}x{w} (height x width), {cores} cores, best of {args.repeat} interleaved "
        f"runs, Python {report['python']}, numpy {report['numpy']}.",
        "",
        "| evaluator | wall, all cores (s) | images/s | CPU, one process (s) | CPU ms/image |",
        "|---|---:|---:|---:|---:|",
        *(f"| {k} | {best_wall[k]:.2f} | {args.images / best_wall[k]:.0f} | {best_cpu[k]:.2f} | {ms[k]:.1f} |"
          for k in best_wall),
        "",
        f"Speed-up: **{report['speedup_wall']:.2f}x** wall with all cores, **{report['speedup_cpu']:.2f}x** "
        f"per-image CPU. Largest |difference| over all PQ/SQ/RQ numbers: {diff:.2g}.",
        "",
        "| | PQ | SQ | RQ | N |",
        "|---|---:|---:|---:|---:|",
        *(f"| {g} | {100 * m['pq']:.2f} | {100 * m['sq']:.2f} | {100 * m['rq']:.2f} | {m['n']} |"
          for g, m in report["results"].items()),
        "",
    ]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Panoptic Quality (PQ = SQ x RQ) with exactly panopticapi's ``pq_compute`` rules, vectorized and multi-process.

The rules, as panopticapi/evaluation.py applies them (numbers must agree with it to 1e-9):

* A GT segment and a predicted segment of the same category match when IoU > 0.5, where the union leaves out the
  predicted pixels lying on GT VOID (id 0): union = pred_area + gt_area - intersection - pred∩VOID.
* GT areas come from the GT JSON; predicted areas from the predicted PNG.
* Crowd GT segments (iscrowd == 1) are never matched and never false negatives.
* An unmatched prediction is not a false positive when more than half of it lies on VOID plus the crowd region of
  its own category (the last crowd segment of that category in segments_info, as panopticapi keeps only that one).
* A category without any tp/fp/fn is left out of the averages; ``n`` says how many were averaged. With n = 0 the
  averages are 0.0 (panopticapi divides by zero there).
* A predicted segment id 0 listed in the JSON is a real segment (DETR's post-processing numbers segments from 0);
  otherwise predicted id 0 is unlabelled. GT ids in the PNG but not in the GT JSON only count in predicted areas.

Invalid predictions are PanopticFormatError: an id in the PNG but not the JSON or the reverse, an unknown category,
a duplicate segment id (panopticapi silently keeps the last), an image without a prediction. Per-image work is one
``np.unique`` over ``gt_id * OFFSET + pred_id`` and array arithmetic on the (small) list of overlapping pairs;
images are spread over a process pool in chunks, and per-image statistics are summed in image order so the result
does not depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from runtime.categories import Category, categories_from_json
from runtime.errors import PanopticFormatError, PansegError
from runtime.panoptic_format import OFFSET, VOID, load_panoptic_json

_ID_BITS = 24  # OFFSET == 1 << 24
GROUPS = (("All", None), ("Things", True), ("Stuff", False))


@dataclass(slots=True)
class PQStatCat:
    """Running sums for one category: matched IoU total and tp/fp/fn counts."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: PQStatCat) -> PQStatCat:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    """Per-category PQ sums; one per image, added up in image order (``total += image_stat``)."""

    def __init__(self) -> None:
        self.per_cat: dict[int, PQStatCat] = {}

    def __getitem__(self, cat_id: int) -> PQStatCat:
        stat = self.per_cat.get(cat_id)
        if stat is None:
            stat = self.per_cat[cat_id] = PQStatCat()
        return stat

    def __iadd__(self, other: PQStat) -> PQStat:
        for cat_id, stat in other.per_cat.items():
            mine = self[cat_id]
            mine += stat  # PQStatCat adds in place
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PQStat) and self.per_cat == other.per_cat

    def __repr__(self) -> str:
        return f"PQStat({self.per_cat!r})"

    def class_metrics(self, cat_id: int) -> dict[str, float | int]:
        """pq/sq/rq and counts of one category (all 0 when it has no tp/fp/fn)."""
        s = self.per_cat.get(cat_id, PQStatCat())
        denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
        pq = s.iou / denom if denom else 0.0
        sq = s.iou / s.tp if s.tp else 0.0
        rq = s.tp / denom if denom else 0.0
        return {"pq": pq, "sq": sq, "rq": rq, "tp": s.tp, "fp": s.fp, "fn": s.fn}

    def average(self, categories: Mapping[int, Category], isthing: bool | None = None) -> dict[str, float | int]:
        """Mean pq/sq/rq over the categories (all, things or stuff) that have at least one tp, fp or fn."""
        pq = sq = rq = 0.0
        n = 0
        for cat_id, cat in categories.items():
            if isthing is not None and cat.isthing != isthing:
                continue
            m = self.class_metrics(cat_id)
            if m["tp"] + m["fp"] + m["fn"] == 0:
                continue
            n += 1
            pq += m["pq"]
            sq += m["sq"]
            rq += m["rq"]
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}

    def summary(self, categories: Mapping[int, Category]) -> dict[str, Any]:
        """panopticapi's result layout plus counts: All/Things/Stuff {pq, sq, rq, n} and per_class by category id."""
        results: dict[str, Any] = {name: self.average(categories, isthing) for name, isthing in GROUPS}
        results["per_class"] = {
            cat_id: {**self.class_metrics(cat_id), "name": cat.name, "isthing": cat.isthing}
            for cat_id, cat in categories.items()
        }
        return results


# ----------------------------------------------------------------------------------------------- one image


def _int_field(seg: Mapping[str, Any], key: str, where: str) -> int:
    value = seg.get(key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise PanopticFormatError(f"{where}: segment {seg.get('id')!r} has {key} {value!r}, expected an integer")
    return int(value)


def _lookup(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each value in the array of distinct ``ids`` (any order), or -1 where it is absent."""
    if ids.size == 0:
        return np.full(values.shape, -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, values), ids.size - 1)
    return np.where(sorted_ids[pos] == values, order[pos], -1)


def _check_id_map(id_map: np.ndarray, name: str, where: str) -> np.ndarray:
    id_map = np.asarray(id_map)
    if id_map.ndim != 2 or not np.issubdtype(id_map.dtype, np.integer):
        raise PanopticFormatError(f"{where}: {name} id map must be a 2-D integer array, got {id_map.dtype} "
                                  f"{id_map.shape}")
    if id_map.size and (int(id_map.min()) < 0 or int(id_map.max()) >= OFFSET):
        raise PanopticFormatError(f"{where}: {name} id map holds ids outside 0..{OFFSET - 1}")
    return id_map


def _check_same_size(gt_shape: tuple[int, ...], pred_shape: tuple[int, ...], where: str) -> None:
    if tuple(gt_shape) != tuple(pred_shape):
        raise PanopticFormatError(f"{where}: prediction is {pred_shape[1]}x{pred_shape[0]}, "
                                  f"ground truth is {gt_shape[1]}x{gt_shape[0]}")


def pair_counts(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct (gt id, pred id) pixel pair and its count: one sort of gt_id * OFFSET + pred_id.

    Returns (gt id, pred id, count) int64 arrays sorted by gt id then pred id. Ids must be in 0 .. OFFSET - 1.
    """
    # Built in two passes with no temporaries, and sorted in place (np.unique would copy it first).
    # (Any integer dtype: the ids were checked to be in 0 .. OFFSET - 1, so the unsafe cast is exact.)
    key = np.left_shift(gt_ids.ravel(), np.uint64(_ID_BITS), dtype=np.uint64, casting="unsafe")
    np.bitwise_or(key, pred_ids.ravel(), out=key, dtype=np.uint64, casting="unsafe")
    key.sort()
    first = np.empty(key.size, dtype=bool)
    first[:1] = True
    np.not_equal(key[1:], key[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    pairs = key[starts]
    counts = np.diff(starts, append=key.size)
    return (pairs >> np.uint64(_ID_BITS)).astype(np.int64), (pairs & np.uint64(OFFSET - 1)).astype(np.int64), counts


def pq_image_stats(
    gt_id_map: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_id_map: np.ndarray,
    pred_segments: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Any] | Iterable[int],
    where: str = "image",
) -> PQStat:
    """PQ statistics of one image from in-memory H x W id maps and segments_info lists (no PNG needed).

    ``categories``: the known category ids (a Mapping or any iterable); predicted categories must be among them.
    GT segments need id and category_id; area defaults to the pixel count, iscrowd to 0. ``where`` starts errors.
    """
    gt = _check_id_map(gt_id_map, "ground-truth", where)
    pred = _check_id_map(pred_id_map, "predicted", where)
    _check_same_size(gt.shape, pred.shape, where)
    return stats_from_pairs(*pair_counts(gt, pred), gt_segments, pred_segments, categories, where)


def stats_from_pairs(
    pair_gt: np.ndarray,
    pair_pred: np.ndarray,
    inter: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_segments: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Any] | Iterable[int],
    where: str = "image",
) -> PQStat:
    """Apply panopticapi's per-image rules to the pixel-pair counts of :func:`pair_counts`."""
    if not isinstance(categories, Mapping | set | frozenset):
        categories = set(categories)
    # GT segments keyed by id like panopticapi's dict: the first position, the last entry of a repeated id.
    gt_by_id: dict[int, Mapping[str, Any]] = {_int_field(s, "id", where): s for s in gt_segments}
    pred_by_id: dict[int, Mapping[str, Any]] = {}
    for seg in pred_segments:
        seg_id = _int_field(seg, "id", where)
        if seg_id in pred_by_id:
            raise PanopticFormatError(f"{where}: duplicate segment id {seg_id} in the prediction")
        pred_by_id[seg_id] = seg

    # Predicted areas from the PNG, and the prediction sanity checks.
    png_pred_ids, inverse = np.unique(pair_pred, return_inverse=True)
    png_pred_area = np.bincount(inverse, weights=inter, minlength=png_pred_ids.size)
    png_only = [i for i in png_pred_ids.tolist() if i != VOID and i not in pred_by_id]
    if png_only:
        raise PanopticFormatError(f"{where}: segment ids {png_only} are in the predicted PNG but not in the JSON")
    pred_ids = np.fromiter(pred_by_id, dtype=np.int64, count=len(pred_by_id))
    where_in_png = _lookup(png_pred_ids, pred_ids)
    json_only = pred_ids[where_in_png < 0].tolist()
    if json_only:
        raise PanopticFormatError(f"{where}: segment ids {json_only} are in the prediction JSON but not in the PNG")
    for seg_id, seg in pred_by_id.items():
        if seg.get("category_id") not in categories:
            raise PanopticFormatError(
                f"{where}: predicted segment {seg_id} has unknown category_id {seg.get('category_id')!r}"
            )
    pred_cat = np.array([int(s["category_id"]) for s in pred_by_id.values()], dtype=np.int64)
    pred_area = png_pred_area[where_in_png]

    gt_ids = np.fromiter(gt_by_id, dtype=np.int64, count=len(gt_by_id))
    gt_cat = np.array([_int_field(s, "category_id", where) for s in gt_by_id.values()], dtype=np.int64)
    gt_crowd = np.array([s.get("iscrowd", 0) == 1 for s in gt_by_id.values()], dtype=bool)
    gi = _lookup(gt_ids, pair_gt)  # -1: VOID or an id the GT JSON does not list
    pi = _lookup(pred_ids, pair_pred)  # -1: unlabelled predicted pixels
    gt_area = _gt_areas(gt_by_id, gi, inter, where)

    # Predicted pixels on GT VOID: panopticapi looks up the (VOID, pred) pair whether or not 0 is a GT segment.
    on_void = (pair_gt == VOID) & (pi >= 0)
    void_area = np.zeros(pred_ids.size, dtype=np.float64)
    void_area[pi[on_void]] = inter[on_void]

    # Matching: same category, GT not crowd, IoU > 0.5 with VOID taken out of the union.
    cand = (gi >= 0) & (pi >= 0)
    cand[cand] = ~gt_crowd[gi[cand]] & (gt_cat[gi[cand]] == pred_cat[pi[cand]])
    cg, cp, ci = gi[cand], pi[cand], inter[cand].astype(np.float64)
    union = pred_area[cp] + gt_area[cg] - ci - void_area[cp]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = ci / union
    match = iou > 0.5
    stat = PQStat()
    for g, value in zip(cg[match].tolist(), iou[match].tolist(), strict=True):
        s = stat[int(gt_cat[g])]
        s.tp += 1
        s.iou += value
    gt_matched = np.zeros(gt_ids.size, dtype=bool)
    gt_matched[cg[match]] = True
    pred_matched = np.zeros(pred_ids.size, dtype=bool)
    pred_matched[cp[match]] = True

    # False negatives; crowd regions by category (the last crowd segment of a category wins, as in panopticapi).
    crowd_of: dict[int, int] = {}
    for g, (cat, crowd, matched) in enumerate(zip(gt_cat.tolist(), gt_crowd.tolist(), gt_matched.tolist(),
                                                  strict=True)):
        if crowd:
            crowd_of[cat] = g
        elif not matched:
            stat[cat].fn += 1

    # False positives, unless more than half of the prediction lies on VOID plus its category's crowd region.
    ignored = void_area
    if crowd_of:
        crowd_gt = np.array([crowd_of.get(c, -1) for c in pred_cat.tolist()], dtype=np.int64)
        on_crowd = (pi >= 0) & (gi >= 0)
        on_crowd[on_crowd] = gi[on_crowd] == crowd_gt[pi[on_crowd]]
        ignored = void_area.copy()
        np.add.at(ignored, pi[on_crowd], inter[on_crowd])
    for p in np.flatnonzero(~pred_matched & ~(ignored / pred_area > 0.5)).tolist():
        stat[int(pred_cat[p])].fp += 1
    return stat


def _gt_areas(gt_by_id: Mapping[int, Mapping[str, Any]], gi: np.ndarray, inter: np.ndarray, where: str) -> np.ndarray:
    """GT areas from the JSON, as panopticapi uses them; the pixel count where the JSON has none."""
    png_area = None
    areas = np.empty(len(gt_by_id), dtype=np.float64)
    for k, (seg_id, seg) in enumerate(gt_by_id.items()):
        if "area" not in seg:
            if png_area is None:
                png_area = np.bincount(gi[gi >= 0], weights=inter[gi >= 0], minlength=len(gt_by_id))
            areas[k] = png_area[k]
            continue
        area = seg["area"]
        if isinstance(area, bool) or not isinstance(area, int | float | np.number):
            raise PanopticFormatError(f"{where}: ground-truth segment {seg_id} has area {area!r}, expected a number")
        areas[k] = area
    return areas


def read_ids(path: str | os.PathLike) -> np.ndarray:
    """A panoptic PNG as an H x W uint32 id map: ``read_panoptic_png``'s result and errors, in fewer passes.

    PIL hands out RGB pixels padded to four bytes, so the ids (R + 256 G + 65536 B) are one little-endian uint32
    view and a mask, instead of three channel conversions.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise PanopticFormatError(f"{path}: panoptic PNG must be RGB, got mode {im.mode}")
            raw = im.tobytes("raw", "RGBX")
            shape = (im.height, im.width)
    except FileNotFoundError as exc:
        raise PanopticFormatError(f"{path}: panoptic PNG missing") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise PanopticFormatError(f"{path}: not a readable PNG ({exc})") from exc
    return (np.frombuffer(raw, dtype="<u4") & np.uint32(OFFSET - 1)).reshape(shape)


# ----------------------------------------------------------------------------------------------- a dataset


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def match_annotations(
    gt_data: Mapping[str, Any], pred_data: Mapping[str, Any], pred_json: str | os.PathLike = "predictions"
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pair each GT annotation with the prediction for its image_id (the last one if repeated, like panopticapi)."""
    pred_by_image = {ann["image_id"]: ann for ann in pred_data["annotations"]}
    pairs = []
    for gt_ann in gt_data["annotations"]:
        pred_ann = pred_by_image.get(gt_ann["image_id"])
        if pred_ann is None:
            raise PanopticFormatError(
                f"{pred_json}: no prediction for image {gt_ann['image_id']!r} ({gt_ann['file_name']})"
            )
        pairs.append((gt_ann, pred_ann))
    return pairs


def _evaluate_chunk(
    chunk: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    gt_folder: str,
    pred_folder: str,
    category_ids: frozenset[int],
) -> list[PQStat]:
    """Worker task: the PQStat of each image of a chunk, in order."""
    stats = []
    for gt_ann, pred_ann in chunk:
        pred_png = Path(pred_folder) / pred_ann["file_name"]
        where = f"{pred_png} (image {gt_ann['image_id']!r})"
        gt_ids = read_ids(Path(gt_folder) / gt_ann["file_name"])
        pred_ids = read_ids(pred_png)
        _check_same_size(gt_ids.shape, pred_ids.shape, where)
        stats.append(stats_from_pairs(*pair_counts(gt_ids, pred_ids), gt_ann["segments_info"],
                                      pred_ann["segments_info"], category_ids, where))
    return stats


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def pq_compute_stats(
    pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    gt_folder: str | os.PathLike,
    pred_folder: str | os.PathLike,
    categories: Mapping[int, Category],
    workers: int | None = None,
    progress: bool = True,
) -> PQStat:
    """Sum the per-image PQStat of (gt, pred) annotation pairs, in image order, over ``workers`` processes."""
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise PansegError(f"workers must be at least 1, got {workers}")
    # Several chunks per worker keep the pool busy to the end and the progress bar moving; 64 images at most.
    chunk_size = max(1, min(64, -(-len(pairs) // (workers * 8))))
    chunks = list(_chunks(pairs, chunk_size))
    args = (str(gt_folder), str(pred_folder), frozenset(categories))
    if workers == 1 or len(chunks) <= 1:
        return _sum_in_order((_evaluate_chunk(c, *args) for c in chunks), len(pairs), progress)
    # The pool forks its workers on the first submits, before the progress bar starts its monitor thread.
    pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)))
    try:
        futures = [pool.submit(_evaluate_chunk, c, *args) for c in chunks]
        # Results are taken in submission order, so the sums do not depend on the worker count.
        return _sum_in_order((f.result() for f in futures), len(pairs), progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _sum_in_order(chunk_results: Iterable[list[PQStat]], n_images: int, progress: bool) -> PQStat:
    total = PQStat()
    with tqdm(total=n_images, desc="PQ", unit="img", disable=not progress) as bar:
        for image_stats in chunk_results:
            for stat in image_stats:
                total += stat
            bar.update(len(image_stats))
    return total


def load_eval_inputs(
    gt_json: str | os.PathLike,
    gt_folder: str | os.PathLike,
    pred_json: str | os.PathLike,
    pred_folder: str | os.PathLike,
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], dict[int, Category]]:
    """Read both JSONs, check the folders, and return the matched annotation pairs and the GT categories."""
    gt_data = load_panoptic_json(gt_json)
    pred_data = load_panoptic_json(pred_json)
    if not isinstance(gt_data.get("categories"), list):
        raise PanopticFormatError(f"{gt_json}: expected a 'categories' list (categories come from the ground truth)")
    categories = categories_from_json(gt_data["categories"], str(gt_json))
    for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not Path(folder).is_dir():
            raise PansegError(f"{folder}: {what} PNG folder does not exist")
    return match_annotations(gt_data, pred_data, pred_json), categories


def pq_compute(
    gt_json: str | os.PathLike,
    gt_folder: str | os.PathLike,
    pred_json: str | os.PathLike,
    pred_folder: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """PQ/SQ/RQ of a prediction set, equal to panopticapi's ``pq_compute`` on the same files.

    Returns {"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {cat_id: {pq, sq, rq, tp, fp, fn, name,
    isthing}}}; values are fractions (panopticapi's printout multiplies by 100).
    """
    pairs, categories = load_eval_inputs(gt_json, gt_folder, pred_json, pred_folder)
    stat = pq_compute_stats(pairs, gt_folder, pred_folder, categories, workers=workers, progress=progress)
    return stat.summary(categories)

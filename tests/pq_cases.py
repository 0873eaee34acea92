"""Small panoptic images that each exercise one rule of panopticapi's PQ, plus random ones, and a dataset writer.

Each hand-made case carries the tp/fp/fn its rule implies for some categories, worked out by hand from the rules
(not from any implementation), so a test can check them besides comparing with panopticapi.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import atomic_write_json
from runtime.panoptic_format import write_panoptic_png

PERSON, CAR, BIKE, SKY, GRASS, ROAD = 1, 2, 3, 10, 11, 12
CATEGORIES = [
    {"id": PERSON, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": CAR, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": BIKE, "name": "bike", "isthing": 1, "color": [119, 11, 32]},  # never in any GT
    {"id": SKY, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": GRASS, "name": "grass", "isthing": 0, "color": [152, 251, 152]},
    {"id": ROAD, "name": "road", "isthing": 0, "color": [128, 64, 128]},  # never anywhere
]
H, W = 12, 16


@dataclass
class Case:
    gt: np.ndarray
    gt_segments: list[dict[str, Any]]
    pred: np.ndarray
    pred_segments: list[dict[str, Any]]
    expect: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # category -> (tp, fp, fn)


def paint(rects: list[tuple[int, int, int, int, int]], background: int = 0) -> np.ndarray:
    """An H x W id map: each (id, y0, y1, x0, x1) rectangle (end-exclusive) painted over the previous ones."""
    ids = np.full((H, W), background, dtype=np.uint32)
    for seg_id, y0, y1, x0, x1 in rects:
        ids[y0:y1, x0:x1] = seg_id
    return ids


def segments(id_map: np.ndarray, cats: dict[int, int], crowd: tuple[int, ...] = (), gt: bool = True,
             area: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """segments_info for the listed ids (in that order), areas counted from the map unless overridden."""
    out = []
    for seg_id, cat in cats.items():
        seg = {"id": seg_id, "category_id": cat, "area": int((id_map == seg_id).sum())}
        if area and seg_id in area:
            seg["area"] = area[seg_id]
        if gt:
            seg["iscrowd"] = int(seg_id in crowd)
        out.append(seg)
    return out


# Base GT layout: sky on top, grass below, a person on the grass and a car in the sky.
BASE_GT = [(11, 0, 6, 0, 16), (12, 6, 12, 0, 16), (13, 7, 11, 2, 6), (14, 1, 4, 9, 14)]
BASE_GT_CATS = {11: SKY, 12: GRASS, 13: PERSON, 14: CAR}


def _base_gt() -> tuple[np.ndarray, list[dict[str, Any]]]:
    gt = paint(BASE_GT)
    return gt, segments(gt, BASE_GT_CATS)


def _pred(rects: list[tuple[int, int, int, int, int]], cats: dict[int, int], background: int = 0) -> tuple:
    pred = paint(rects, background)
    return pred, segments(pred, cats, gt=False)


def rule_cases() -> dict[str, Case]:
    cases = {}
    gt, gs = _base_gt()
    renumber = {11: 1, 12: 2, 13: 3, 14: 4}
    copy = [(renumber[i], *r) for i, *r in BASE_GT]
    cases["exact_copy"] = Case(gt, gs, *_pred(copy, {1: SKY, 2: GRASS, 3: PERSON, 4: CAR}),
                               {SKY: (1, 0, 0), GRASS: (1, 0, 0), PERSON: (1, 0, 0), CAR: (1, 0, 0)})
    # Person moved one column: IoU 12/20. Car moved three: IoU 6/21.
    cases["shifted"] = Case(gt, gs, *_pred([(1, 0, 6, 0, 16), (2, 6, 12, 0, 16), (3, 7, 11, 3, 7), (4, 1, 4, 12, 17)],
                                           {1: SKY, 2: GRASS, 3: PERSON, 4: CAR}),
                            {PERSON: (1, 0, 0), CAR: (0, 1, 1)})
    cases["wrong_class"] = Case(gt, gs, *_pred(copy, {1: SKY, 2: GRASS, 3: CAR, 4: CAR}),
                                {PERSON: (0, 0, 1), CAR: (1, 1, 0)})
    # No car (its pixels are sky); an invented bike on the grass: the bike category has no GT at all.
    cases["missing_and_extra"] = Case(gt, gs, *_pred([(1, 0, 6, 0, 16), (2, 6, 12, 0, 16), (3, 7, 11, 2, 6),
                                                      (5, 8, 11, 10, 14)], {1: SKY, 2: GRASS, 3: PERSON, 5: BIKE}),
                                      {CAR: (0, 0, 1), BIKE: (0, 1, 0), PERSON: (1, 0, 0)})
    # Predicted areas come from the PNG: a wrong area in the prediction JSON changes nothing.
    pred, ps = _pred(copy, {1: SKY, 2: GRASS, 3: PERSON, 4: CAR})
    cases["pred_area_from_png"] = Case(gt, gs, pred, [{**seg, "area": 10_000} for seg in ps],
                                       {SKY: (1, 0, 0), GRASS: (1, 0, 0), PERSON: (1, 0, 0), CAR: (1, 0, 0)})
    cases["empty_prediction"] = Case(gt, gs, np.zeros((H, W), np.uint32), [],
                                     {SKY: (0, 0, 1), GRASS: (0, 0, 1), PERSON: (0, 0, 1), CAR: (0, 0, 1)})
    # DETR numbers predicted segments from 0: listed in the JSON, id 0 is a segment, not VOID.
    cases["pred_id_zero"] = Case(gt, gs, *_pred([(i - 1, *r) for i, *r in copy], {0: SKY, 1: GRASS, 2: PERSON,
                                                                                  3: CAR}),
                                 {SKY: (1, 0, 0), GRASS: (1, 0, 0), PERSON: (1, 0, 0), CAR: (1, 0, 0)})
    # GT lists a car that is not in its PNG: a false negative.
    cases["gt_segment_not_in_png"] = Case(gt, gs + [{"id": 99, "category_id": CAR, "area": 10, "iscrowd": 0}],
                                          *_pred(copy, {1: SKY, 2: GRASS, 3: PERSON, 4: CAR}), {CAR: (1, 0, 1)})

    # IoU exactly 0.5 (4 / (6 + 6 - 4)) is not a match.
    gt = paint([(13, 0, 2, 0, 3)], background=11)
    gs = segments(gt, {11: SKY, 13: PERSON})
    cases["iou_exactly_half"] = Case(gt, gs, *_pred([(3, 0, 2, 1, 4)], {1: SKY, 3: PERSON}, background=1),
                                     {PERSON: (0, 1, 1)})
    # The same, but the prediction's extra column is GT VOID: the union drops to 6 and IoU is 4/6.
    gt = paint([(13, 0, 2, 0, 3), (0, 0, 2, 3, 4)], background=11)
    gs = segments(gt, {11: SKY, 13: PERSON})
    cases["void_shrinks_union"] = Case(gt, gs, *_pred([(3, 0, 2, 1, 4)], {1: SKY, 3: PERSON}, background=1),
                                       {PERSON: (1, 0, 0)})
    # GT JSON area (40) is used, not the 16 PNG pixels: IoU 16 / (20 + 40 - 16) < 0.5 instead of 0.8.
    gt = paint([(13, 0, 4, 0, 4)], background=11)
    gs = segments(gt, {11: SKY, 13: PERSON}, area={13: 40})
    cases["gt_area_from_json"] = Case(gt, gs, *_pred([(3, 0, 4, 0, 5)], {1: SKY, 3: PERSON}, background=1),
                                      {PERSON: (0, 1, 1)})
    # A GT id missing from the GT JSON is not VOID: it stays in the union, IoU = 16 / 32 is no match.
    gt = paint([(77, 0, 4, 0, 4), (13, 0, 4, 4, 8)], background=11)
    gs = segments(gt, {11: SKY, 13: PERSON})
    cases["gt_unlisted_id"] = Case(gt, gs, *_pred([(3, 0, 4, 0, 8)], {1: SKY, 3: PERSON}, background=1),
                                   {PERSON: (0, 1, 1)})

    # Unmatched predictions on VOID: 16 of 20 pixels (ignored) and exactly 8 of 16 (a false positive).
    gt = paint([(0, 8, 12, 0, 8), (0, 0, 2, 10, 14)], background=11)
    gs = segments(gt, {11: SKY})
    cases["pred_on_void"] = Case(gt, gs, *_pred([(3, 8, 12, 4, 9), (4, 0, 4, 10, 14)],
                                                {1: SKY, 3: PERSON, 4: PERSON}, background=1),
                                 {PERSON: (0, 1, 0), SKY: (1, 0, 0)})
    # Crowd: never matched nor missed; same-category predictions inside it are ignored, other categories are not.
    gt = paint([(20, 4, 12, 0, 10), (21, 0, 4, 10, 14)], background=11)
    gs = segments(gt, {11: SKY, 20: PERSON, 21: PERSON}, crowd=(20,))
    cases["crowd"] = Case(gt, gs, *_pred([(3, 4, 8, 0, 5), (4, 8, 12, 0, 5), (5, 4, 12, 5, 10), (6, 0, 4, 10, 14)],
                                         {1: SKY, 3: PERSON, 4: CAR, 5: PERSON, 6: PERSON}, background=1),
                          {PERSON: (1, 0, 0), CAR: (0, 1, 0)})
    # A prediction equal to a crowd region is not a match (crowd is never matched) and not a false positive.
    gt = paint([(20, 0, 6, 0, 8)], background=11)
    gs = segments(gt, {11: SKY, 20: PERSON}, crowd=(20,))
    cases["crowd_exact"] = Case(gt, gs, *_pred([(3, 0, 6, 0, 8)], {1: SKY, 3: PERSON}, background=1),
                                {PERSON: (0, 0, 0)})
    # Two crowd regions of one category: panopticapi keeps only the last listed, so a prediction on the first is a FP.
    gt = paint([(20, 0, 4, 0, 6), (21, 6, 10, 0, 6)], background=11)
    gs = segments(gt, {11: SKY, 20: PERSON, 21: PERSON}, crowd=(20, 21))
    cases["two_crowds_last_wins"] = Case(gt, gs, *_pred([(3, 0, 4, 0, 6)], {1: SKY, 3: PERSON}, background=1),
                                         {PERSON: (0, 1, 0)})
    gs = segments(gt, {11: SKY, 21: PERSON, 20: PERSON}, crowd=(20, 21))  # the same, listed the other way round
    cases["two_crowds_last_wins_swapped"] = Case(gt, gs, *_pred([(3, 0, 4, 0, 6)], {1: SKY, 3: PERSON},
                                                                background=1), {PERSON: (0, 0, 0)})
    # VOID and crowd add up: 8 crowd + 16 VOID of 32 pixels is ignored; 12 VOID of 32 is a false positive.
    gt = paint([(20, 0, 4, 0, 4), (0, 0, 4, 4, 8), (0, 6, 10, 0, 3)], background=11)
    gs = segments(gt, {11: SKY, 20: PERSON}, crowd=(20,))
    cases["void_plus_crowd"] = Case(gt, gs, *_pred([(3, 0, 4, 2, 10), (4, 6, 10, 0, 8)],
                                                   {1: SKY, 3: PERSON, 4: PERSON}, background=1),
                                    {PERSON: (0, 1, 0)})
    # Odd GT that lists id 0 as a segment: panopticapi still subtracts the (0, pred) pixels as VOID in the union
    # (here union = 128 + 96 - 96 - 96 and "IoU" = 3). Mirrored, not endorsed.
    gt = paint([(12, 6, 12, 0, 16)])
    gs = segments(gt, {0: SKY, 12: GRASS})
    cases["gt_lists_id_zero"] = Case(gt, gs, *_pred([(1, 0, 8, 0, 16), (2, 8, 12, 0, 16)], {1: SKY, 2: GRASS}),
                                     {SKY: (1, 0, 0), GRASS: (1, 0, 0)})
    return cases


def anchor_case() -> Case:
    """An exactly predicted sky and person, so a dataset always has things and stuff (panopticapi divides by n)."""
    gt = paint([(900, 6, 12, 0, 16), (901, 8, 11, 3, 7)], background=902)
    pred = paint([(2, 6, 12, 0, 16), (3, 8, 11, 3, 7)], background=1)
    return Case(gt, segments(gt, {902: SKY, 900: GRASS, 901: PERSON}), pred,
                segments(pred, {1: SKY, 2: GRASS, 3: PERSON}, gt=False))


# ------------------------------------------------------------------------------------------- random images


def _random_rects(rng: np.random.Generator, n: int, h: int, w: int) -> list[list[int]]:
    rects = []
    for _ in range(n):
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        rects.append([y0, int(rng.integers(y0 + 1, h + 1)), x0, int(rng.integers(x0 + 1, w + 1))])
    return rects


def _render(layers: list[tuple[int, list[int]]], rng: np.random.Generator, h: int, w: int,
            max_id: int) -> tuple[np.ndarray, dict[int, int]]:
    """Paint (category, rect) layers with fresh random ids; 0-category layers paint VOID. Returns ids and cats."""
    ids = np.zeros((h, w), dtype=np.uint32)
    new_ids = rng.choice(max_id, size=len(layers), replace=False) + 1
    cats = {}
    for (cat, (y0, y1, x0, x1)), seg_id in zip(layers, new_ids.tolist(), strict=True):
        ids[y0:y1, x0:x1] = 0 if cat == 0 else seg_id
        if cat:
            cats[seg_id] = cat
    present = set(np.unique(ids).tolist())
    return ids, {i: c for i, c in cats.items() if i in present}


def random_case(rng: np.random.Generator, h: int = 20, w: int = 24) -> Case:
    """A random GT (stuff bands, overlapping boxes, crowd, VOID) and a prediction that jitters, drops,
    relabels and invents boxes. Ids range over all 24 bits."""
    cat_ids = [c["id"] for c in CATEGORIES]
    split = int(rng.integers(1, h))
    gt_layers = [(SKY, [0, split, 0, w]), (GRASS, [split, h, 0, w])]
    gt_layers += [(int(rng.choice(cat_ids[:5])), r) for r in _random_rects(rng, int(rng.integers(1, 8)), h, w)]
    pred_layers = [(SKY, [0, split + int(rng.integers(-2, 3)), 0, w]), (GRASS, [split, h, 0, w])]
    for cat, (y0, y1, x0, x1) in gt_layers[2:]:
        if rng.random() < 0.15:
            continue
        dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
        new_cat = int(rng.choice(cat_ids)) if rng.random() < 0.15 else cat
        pred_layers.append((new_cat, [max(0, y0 + dy), max(1, y1 + dy), max(0, x0 + dx), max(1, x1 + dx)]))
    pred_layers += [(int(rng.choice(cat_ids)), r) for r in _random_rects(rng, int(rng.integers(0, 3)), h, w)]
    gt_layers += [(0, r) for r in _random_rects(rng, int(rng.integers(0, 3)), h, w)]  # VOID
    if rng.random() < 0.3:
        pred_layers += [(0, r) for r in _random_rects(rng, 1, h, w)]
    gt, gt_cats = _render(gt_layers, rng, h, w, (1 << 24) - 1)
    crowd = tuple(i for i, c in gt_cats.items() if c in (PERSON, CAR) and rng.random() < 0.2)
    pred, pred_cats = _render(pred_layers, rng, h, w, (1 << 24) - 1)
    return Case(gt, segments(gt, gt_cats, crowd), pred, segments(pred, pred_cats, gt=False))


# ------------------------------------------------------------------------------------------- files


def write_dataset(root: Path, cases: list[Case], categories: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write the cases as a COCO panoptic GT and prediction (JSON + PNG folder each); returns the four paths."""
    paths = {"gt_json": root / "gt.json", "gt_folder": root / "gt", "pred_json": root / "pred.json",
             "pred_folder": root / "pred"}
    paths["gt_folder"].mkdir(parents=True, exist_ok=True)
    paths["pred_folder"].mkdir(parents=True, exist_ok=True)
    gt_anns, pred_anns, images = [], [], []
    for i, case in enumerate(cases):
        name = f"{i:04d}.png"
        write_panoptic_png(paths["gt_folder"] / name, case.gt)
        write_panoptic_png(paths["pred_folder"] / name, case.pred)
        images.append({"id": i, "file_name": f"{i:04d}.jpg", "height": case.gt.shape[0], "width": case.gt.shape[1]})
        gt_anns.append({"image_id": i, "file_name": name, "segments_info": case.gt_segments})
        pred_anns.append({"image_id": i, "file_name": name, "segments_info": case.pred_segments})
    cats = CATEGORIES if categories is None else categories
    atomic_write_json(paths["gt_json"], {"images": images, "annotations": gt_anns, "categories": cats})
    atomic_write_json(paths["pred_json"], {"images": images, "annotations": pred_anns, "categories": cats})
    return paths

"""PQ evaluation: equal to panopticapi's pq_compute (run in-process on the same files), rule by rule and at random.

panopticapi-lite pins numpy<2 but runs unchanged on numpy 2 (no monkeypatching needed).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from panopticapi.evaluation import PQStat as RefPQStat
from panopticapi.evaluation import pq_compute as ref_pq_compute
from panopticapi.evaluation import pq_compute_single_core as ref_single_core
from PIL import Image
from pq_cases import CATEGORIES, PERSON, SKY, Case, anchor_case, paint, random_case, rule_cases, segments, write_dataset

from runtime.categories import categories_from_json
from runtime.cli import main as cli_main
from runtime.errors import PanopticFormatError, PansegError
from runtime.panoptic_format import read_panoptic_png, write_panoptic_png
from runtime.pq import PQStat, pq_compute, pq_image_stats, read_ids

TOL = 1e-9
CATS = categories_from_json(CATEGORIES)
RULE_CASES = rule_cases()


def quiet(fn, *args):
    """panopticapi prints progress; keep test output readable (forked workers inherit the redirect)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def reference(paths: dict[str, Path]) -> dict:
    return quiet(ref_pq_compute, str(paths["gt_json"]), str(paths["pred_json"]), str(paths["gt_folder"]),
                 str(paths["pred_folder"]))


def reference_stat(paths: dict[str, Path], categories: list[dict] = CATEGORIES) -> RefPQStat:
    """panopticapi's raw per-category sums (iou, tp, fp, fn), from its single-process worker."""
    gt = json.loads(paths["gt_json"].read_text())
    pred = {a["image_id"]: a for a in json.loads(paths["pred_json"].read_text())["annotations"]}
    pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"]]
    return quiet(ref_single_core, 0, pairs, str(paths["gt_folder"]), str(paths["pred_folder"]),
                 {c["id"]: c for c in categories})


def ours(paths: dict[str, Path], workers: int = 1) -> dict:
    return pq_compute(paths["gt_json"], paths["gt_folder"], paths["pred_json"], paths["pred_folder"],
                      workers=workers, progress=False)


def assert_same_results(mine: dict, ref: dict) -> None:
    for group in ("All", "Things", "Stuff"):
        assert mine[group]["n"] == ref[group]["n"], group
        for k in ("pq", "sq", "rq"):
            assert mine[group][k] == pytest.approx(ref[group][k], abs=TOL), (group, k)
    assert set(mine["per_class"]) == set(ref["per_class"])
    for cat_id, m in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert mine["per_class"][cat_id][k] == pytest.approx(m[k], abs=TOL), (cat_id, k)


def assert_same_stat(mine: PQStat, ref: RefPQStat) -> None:
    for cat_id in set(mine.per_cat) | set(ref.pq_per_cat):
        m, r = mine[cat_id], ref[cat_id]
        assert (m.tp, m.fp, m.fn) == (r.tp, r.fp, r.fn), cat_id
        assert m.iou == pytest.approx(r.iou, abs=TOL), cat_id


def image_stat(case: Case) -> PQStat:
    return pq_image_stats(case.gt, copy.deepcopy(case.gt_segments), case.pred, copy.deepcopy(case.pred_segments),
                          CATS)


# ------------------------------------------------------------------------------------------- rules


@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_rule_case_matches_panopticapi_and_hand_counts(name, tmp_path):
    case = RULE_CASES[name]
    stat = image_stat(case)
    for cat_id, counts in case.expect.items():
        s = stat[cat_id]
        assert (s.tp, s.fp, s.fn) == counts, f"category {cat_id}"
    # Per image, every category's sums equal panopticapi's ...
    assert_same_stat(stat, reference_stat(write_dataset(tmp_path / "alone", [case])))
    # ... and with an anchor image (panopticapi needs things and stuff), the full results do.
    paths = write_dataset(tmp_path / "ds", [anchor_case(), case])
    assert_same_results(ours(paths), reference(paths))


def test_all_rule_cases_together_and_unseen_categories(tmp_path):
    paths = write_dataset(tmp_path, [anchor_case(), *RULE_CASES.values()])
    mine, ref = ours(paths), reference(paths)
    assert_same_results(mine, ref)
    road = mine["per_class"][12]
    assert (road["tp"], road["fp"], road["fn"], road["pq"]) == (0, 0, 0, 0.0)
    with_samples = [c for c, m in mine["per_class"].items() if m["tp"] + m["fp"] + m["fn"] > 0]
    assert mine["All"]["n"] == len(with_samples) == len(CATEGORIES) - 1  # road is left out of the averages
    assert mine["per_class"][PERSON]["name"] == "person" and mine["per_class"][PERSON]["isthing"] is True


def test_sq_rq_pq_definitions_on_a_hand_example():
    # One perfect sky (IoU 1), a person matched at IoU 12/20 and a missed car, counted by hand.
    stat = image_stat(RULE_CASES["shifted"])
    m = stat.class_metrics(PERSON)
    assert m["sq"] == pytest.approx(0.6) and m["rq"] == 1.0 and m["pq"] == pytest.approx(0.6)
    car = stat.class_metrics(2)
    assert (car["pq"], car["sq"], car["rq"]) == (0.0, 0.0, 0.0)


# ------------------------------------------------------------------------------------------- random


@pytest.mark.parametrize("seed", range(12))
def test_random_datasets_match_panopticapi(seed, tmp_path):
    rng = np.random.default_rng(seed)
    cases = [anchor_case()] + [random_case(rng) for _ in range(12)]
    paths = write_dataset(tmp_path, cases)
    mine, ref = ours(paths), reference(paths)
    assert_same_results(mine, ref)
    total = PQStat()
    for case in cases:
        total += image_stat(case)
    assert_same_stat(total, reference_stat(paths))


def test_realistic_scenes_match_panopticapi_and_do_not_depend_on_workers(tmp_path):
    from benchmarks.pq_speed import make_dataset

    paths = make_dataset(tmp_path, 12, 48, 64, seed=3, progress=False)
    one, two = ours(paths, workers=1), ours(paths, workers=2)
    assert one == two  # bit-identical: per-image sums are added in image order whatever the worker count
    assert_same_results(one, reference(paths))
    assert one["Things"]["n"] > 0 and one["Stuff"]["n"] > 0 and 0 < one["All"]["pq"] < 1


def test_no_category_with_samples_gives_zero_not_a_crash(tmp_path):
    things_only = [c for c in CATEGORIES if c["isthing"]]
    gt = paint([(5, 0, 4, 0, 4)])
    pred = paint([(7, 0, 4, 0, 5)])
    case = Case(gt, segments(gt, {5: PERSON}), pred, segments(pred, {7: PERSON}, gt=False))
    paths = write_dataset(tmp_path, [case], things_only)
    mine = ours(paths)
    assert mine["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}  # panopticapi raises ZeroDivisionError here
    ref = reference_stat(paths, things_only).pq_average({c["id"]: c for c in things_only}, isthing=None)[0]
    assert mine["All"]["n"] == ref["n"] == 1 and mine["All"]["pq"] == pytest.approx(ref["pq"], abs=TOL)

    empty = Case(np.zeros_like(gt), [], np.zeros_like(gt), [])
    for images, workers in (([empty], 1), ([empty] * 3, 2), ([], 2)):
        nothing = ours(write_dataset(tmp_path / f"empty{len(images)}", images), workers=workers)
        for group in ("All", "Things", "Stuff"):
            assert nothing[group] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
        assert all(m["tp"] + m["fp"] + m["fn"] == 0 for m in nothing["per_class"].values())


# ------------------------------------------------------------------------------------------- invalid input


def _edit_pred(paths: dict[str, Path], edit) -> None:
    data = json.loads(paths["pred_json"].read_text())
    edit(data)
    paths["pred_json"].write_text(json.dumps(data))


INVALID = {
    # name: (edit of the prediction JSON, words expected in our message, panopticapi also refuses it)
    "png_id_not_in_json": (lambda d: d["annotations"][1]["segments_info"].pop(), "in the predicted PNG but not", True),
    "json_id_not_in_png": (lambda d: d["annotations"][1]["segments_info"].append(
        {"id": 4242, "category_id": PERSON}), "[4242] are in the prediction JSON but not in the PNG", True),
    "unknown_category": (lambda d: d["annotations"][1]["segments_info"][0].update(category_id=77),
                         "unknown category_id 77", True),
    "missing_prediction": (lambda d: d["annotations"].pop(1), "no prediction for image 1", True),
    "duplicate_segment_id": (lambda d: d["annotations"][1]["segments_info"].append(
        dict(d["annotations"][1]["segments_info"][0])), "duplicate segment id", False),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_prediction_is_a_one_line_error(name, tmp_path, capsys):
    edit, words, panopticapi_refuses = INVALID[name]
    paths = write_dataset(tmp_path, [anchor_case(), RULE_CASES["shifted"]])
    _edit_pred(paths, edit)
    with pytest.raises(PanopticFormatError, match="image 1") as err:
        ours(paths)
    assert words in str(err.value) and "\n" not in str(err.value)
    if panopticapi_refuses:  # the same input is an error for panopticapi too (same meaning)
        with pytest.raises(Exception):  # noqa: B017  (panopticapi raises bare Exception / KeyError)
            reference(paths)
    code = cli_main(["eval", "--gt-json", str(paths["gt_json"]), "--gt-folder", str(paths["gt_folder"]),
                     "--pred-json", str(paths["pred_json"]), "--pred-folder", str(paths["pred_folder"]),
                     "--workers", "2", "--no-progress"])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err_lines) == 1 and words in err_lines[0] and "pred" in err_lines[0]


def test_unreadable_files_are_clear_errors(tmp_path):
    paths = write_dataset(tmp_path, [anchor_case(), RULE_CASES["shifted"]])
    (paths["pred_folder"] / "0001.png").unlink()
    with pytest.raises(PanopticFormatError, match=r"0001\.png: panoptic PNG missing"):
        ours(paths)
    write_panoptic_png(paths["pred_folder"] / "0001.png", np.zeros((5, 5), np.uint32))
    with pytest.raises(PanopticFormatError, match="prediction is 5x5, ground truth is 16x12"):
        ours(paths)
    with pytest.raises(PansegError, match="folder does not exist"):
        pq_compute(paths["gt_json"], tmp_path / "nope", paths["pred_json"], paths["pred_folder"], progress=False)
    paths["gt_json"].write_text("{not json")
    with pytest.raises(PanopticFormatError, match="gt.json: not valid JSON"):
        ours(paths)


def test_in_memory_api_checks_its_inputs():
    case = RULE_CASES["exact_copy"]
    for bad in (case.gt.astype(np.int64) - 12, case.gt.astype(np.int64) + (1 << 24)):  # ids are 0 .. 2**24 - 1
        with pytest.raises(PanopticFormatError, match="outside"):
            pq_image_stats(bad, case.gt_segments, case.pred, case.pred_segments, CATS)
    with pytest.raises(PanopticFormatError, match="prediction is 16x11, ground truth is 16x12"):
        pq_image_stats(case.gt, case.gt_segments, case.pred[:-1], case.pred_segments, CATS)
    # GT areas default to the pixel count when the segments carry none (training builds them in memory).
    no_area = [{k: v for k, v in s.items() if k != "area"} for s in case.gt_segments]
    assert pq_image_stats(case.gt, no_area, case.pred, case.pred_segments, CATS) == image_stat(case)
    assert image_stat(case)[SKY].iou == 1.0
    # Any integer dtype works (training hands over int64 maps).
    shifted = RULE_CASES["shifted"]
    assert pq_image_stats(shifted.gt.astype(np.int64), shifted.gt_segments, shifted.pred.astype(np.int32),
                          shifted.pred_segments, CATS) == image_stat(shifted)


def test_fast_png_reader_equals_the_format_reader(tmp_path):
    ids = np.random.default_rng(5).integers(0, 1 << 24, size=(9, 13), dtype=np.uint32)
    write_panoptic_png(tmp_path / "a.png", ids)
    fast = read_ids(tmp_path / "a.png")
    assert fast.dtype == np.uint32 and np.array_equal(fast, ids) and np.array_equal(fast, read_panoptic_png(
        tmp_path / "a.png"))
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(tmp_path / "rgba.png")
    with pytest.raises(PanopticFormatError, match="rgba.png: panoptic PNG must be RGB"):
        read_ids(tmp_path / "rgba.png")


# ------------------------------------------------------------------------------------------- CLI


def test_cli_prints_and_writes_the_same_numbers(tmp_path, capsys):
    rng = np.random.default_rng(11)
    paths = write_dataset(tmp_path, [anchor_case()] + [random_case(rng) for _ in range(4)])
    out = tmp_path / "out" / "pq.json"
    code = cli_main(["eval", "--gt-json", str(paths["gt_json"]), "--gt-folder", str(paths["gt_folder"]),
                     "--pred-json", str(paths["pred_json"]), "--pred-folder", str(paths["pred_folder"]),
                     "--json", str(out), "--workers", "1", "--no-progress"])
    assert code == 0
    written = json.loads(out.read_text())
    ref = reference(paths)
    assert_same_results({**written, "per_class": {int(k): v for k, v in written["per_class"].items()}}, ref)
    printed = capsys.readouterr().out
    all_row = next(line for line in printed.splitlines() if line.startswith("All"))
    assert f"{100 * ref['All']['pq']:.1f}" in all_row and all_row.rstrip().endswith(str(ref["All"]["n"]))
    assert "person" in printed and not list(out.parent.glob(".*.tmp"))

"""Training's terminal lines: readable, short, and showing the numbers that the JSON log holds."""

from __future__ import annotations

import json
import re

from train.console import epoch_line, eval_summary

# One epoch of a stage-2 run as train.main logs it (log.jsonl), auxiliary-layer terms included.
LOG = {
    "epoch": 2, "train_loss": 12.34567, "train_loss_ce": 0.8123, "train_loss_bbox": 0.1234, "train_loss_giou": 0.4567,
    "train_loss_mask": 0.2104, "train_loss_dice": 0.3301, "train_loss_ce_0": 0.9, "train_loss_bbox_0": 0.2,
    "train_loss_giou_0": 0.5, "train_class_error": 40.0, "train_cardinality_error": 3.5, "lr": 1e-4,
    "val_loss": 9.98879, "val_loss_ce": 2.5258, "val_loss_mask": 0.1284, "val_class_error": 81.7,
    "pq": 57.312, "sq": 80.1, "rq": 70.2, "pq_th": 28.949, "sq_th": 75.0, "rq_th": 38.6,
    "pq_st": 91.456, "sq_st": 86.3, "rq_st": 100.0, "minutes": 38.273,
}


def test_epoch_line_has_the_main_numbers_only():
    line = epoch_line(LOG, epochs=25, epoch_seconds=4.24, total_seconds=2296.4)
    assert line == ("epoch 3/25 | 4.2 s (total 38 min 16 s) | loss 12.346 (ce 0.812, bbox 0.123, giou 0.457, "
                    "mask 0.210, dice 0.330) | lr 1.00e-04 | val loss 9.989 | PQ 57.3 (things 28.9, stuff 91.5)")
    assert len(line) < len(json.dumps(LOG)) / 3


def test_epoch_line_without_evaluation_or_masks():
    log = {k: v for k, v in LOG.items() if not k.startswith(("val_", "pq", "sq", "rq", "train_loss_mask",
                                                               "train_loss_dice"))}
    line = epoch_line(log, epochs=3, epoch_seconds=61, total_seconds=61)
    assert line == ("epoch 3/3 | 1 min 1 s (total 1 min 1 s) | loss 12.346 (ce 0.812, bbox 0.123, giou 0.457) "
                    "| lr 1.00e-04")


def test_eval_summary_is_a_pq_table_that_reads_back():
    text = eval_summary(LOG, epoch=24)
    first, header, *rows = text.splitlines()
    assert first.startswith("evaluation of the checkpoint from epoch 25: val loss 9.989 (ce 2.526, mask 0.128)")
    assert header.split() == ["PQ", "SQ", "RQ"]
    table = {row.split()[0]: [float(x) for x in row.split()[1:]] for row in rows}
    assert table == {"All": [57.3, 80.1, 70.2], "Things": [28.9, 75.0, 38.6], "Stuff": [91.5, 86.3, 100.0]}


def test_eval_summary_of_a_detector_and_of_fresh_weights():
    text = eval_summary({"val_loss": 3.0, "val_loss_ce": 1.0}, epoch=-1)
    assert text == "evaluation: val loss 3.000 (ce 1.000)"
    assert not re.search(r"-1|\{", text)

"""Command-line flags, named as in detr's main.py so its users feel at home, plus panseg's size and recipe flags."""

from __future__ import annotations

import argparse

DEFAULT_DATA = "data/synthetic"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train", description="Train DETR (detection, then masks on a frozen detector)."
    )
    # optimisation (detr's defaults)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr_backbone", type=float, default=1e-5)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr_drop", type=int, default=200)
    p.add_argument("--lr_schedule", choices=["step", "cosine"], default="step", help="step = detr's StepLR at lr_drop")
    p.add_argument("--warmup_epochs", type=int, default=0, help="linear warmup before the cosine schedule")
    p.add_argument("--clip_max_norm", type=float, default=0.1)
    p.add_argument("--scratch_backbone", action="store_true",
                   help="training without pretrained weights: real BatchNorm (folded into detr's frozen statistics "
                        "in the checkpoint) and every backbone layer trainable")
    p.add_argument("--token_loss_coef", type=float, default=0.0,
                   help="training-only dense loss: classify every encoder token (helps from-scratch trunks; "
                        "detection stage only; 0 = off)")
    p.add_argument("--mask_attention_gain", type=float, default=1.0,
                   help="training-only: scale the first mask conv's initial weights on the attention maps "
                        "(1 = detr's init; see train/mask_init.py)")
    p.add_argument("--frozen_weights", help="detection checkpoint to load and freeze; only the mask head trains")
    p.add_argument("--pretrained", metavar="PATH_OR_URL",
                   help="start from a DETR checkpoint (detr's releases, detection or panoptic, or ours; file or URL): "
                        "every tensor whose name and shape match is loaded, the class head (and the query embeddings) "
                        "start fresh when --num_classes (--num_queries) differ")
    p.add_argument("--backbone_weights", "--backbone-weights", dest="backbone_weights", metavar="PATH_OR_URL",
                   help="torchvision ImageNet ResNet weights (file or URL, e.g. resnet50-0676ba61.pth) for the "
                        "backbone, frozen BatchNorm statistics included; --pretrained, if given, loads after it")
    # model
    p.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--dilation", action="store_true", help="DC5: dilate the last backbone stage")
    p.add_argument("--position_embedding", default="sine", choices=["sine"])
    p.add_argument("--enc_layers", type=int, default=6)
    p.add_argument("--dec_layers", type=int, default=6)
    p.add_argument("--dim_feedforward", type=int, default=2048)
    p.add_argument("--hidden_dim", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--nheads", type=int, default=8)
    p.add_argument("--num_queries", type=int, default=100)
    p.add_argument("--pre_norm", action="store_true")
    p.add_argument("--num_classes", type=int, help="default: max category id of the dataset + 1 (detr's rule)")
    p.add_argument("--masks", action="store_true", help="train the panoptic mask head")
    p.add_argument("--no_aux_loss", dest="aux_loss", action="store_false")
    # matcher and loss weights
    p.add_argument("--set_cost_class", type=float, default=1)
    p.add_argument("--set_cost_bbox", type=float, default=5)
    p.add_argument("--set_cost_giou", type=float, default=2)
    p.add_argument("--mask_loss_coef", type=float, default=1)
    p.add_argument("--dice_loss_coef", type=float, default=1)
    p.add_argument("--bbox_loss_coef", type=float, default=5)
    p.add_argument("--giou_loss_coef", type=float, default=2)
    p.add_argument("--eos_coef", type=float, default=0.1)
    # data
    p.add_argument("--dataset_file", default="coco_panoptic", choices=["coco", "coco_panoptic"])
    p.add_argument("--coco_path", default=DEFAULT_DATA, help=f"default: the synthetic dataset in {DEFAULT_DATA}")
    p.add_argument("--coco_panoptic_path", help="default: --coco_path")
    p.add_argument("--image_size", type=int, default=800, help="eval shorter side; train scales are around it")
    p.add_argument("--max_size", type=int, default=1333)
    p.add_argument("--train_scales", help="comma-separated training shorter sides (default: detr's, scaled)")
    p.add_argument("--group_batches", action="store_true",
                   help="one orientation, aspect group and training scale per batch: far less padding than detr's "
                        "per-image scales (train/datasets/grouped.py)")
    p.add_argument("--precise_bn", type=int, default=0, metavar="N",
                   help="before each evaluation and the last checkpoint, recompute the backbone's BatchNorm "
                        "statistics over N training batches at the evaluation scale (train/precise_bn.py); 0: off")
    p.add_argument("--no_crop", dest="crop", action="store_false", help="skip detr's random-crop branch")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--cache_dataset", action="store_true",
                   help="keep decoded training images and targets in memory after their first epoch (augmentations "
                        "still run every time); for small datasets")
    # run
    p.add_argument("--output_dir", "-o", "--output", default="",
                   help="where checkpoints and log.jsonl go (empty: nowhere)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--channels_last", action="store_true",
                   help="channels-last memory format for the model and images (oneDNN's native layout on CPUs: no "
                        "reorders around each convolution; same weights and checkpoint)")
    p.add_argument("--amp", action="store_true", help="mixed precision: float16 with loss scaling on CUDA,"
                   " bfloat16 on CPUs with native bfloat16 (AVX512-BF16/AMX)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", help="checkpoint to continue from (model, optimizer, scheduler, epoch)")
    p.add_argument("--start_epoch", type=int, default=0)
    p.add_argument("--eval", action="store_true", help="only evaluate")
    p.add_argument("--eval_batch_size", type=int, default=1,
                   help="validation batch size; 1 (default) gives PQ as deployed, since padding a DETR batch changes "
                        "each image's result slightly (detr evaluates padded batches of --batch_size)")
    p.add_argument("--eval_every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    p.add_argument("--threshold", type=float, default=0.85, help="post-processing score threshold for PQ")
    p.add_argument("--nms_iou", type=float, default=None,
                   help="box NMS among things before the mask merge, for PQ (off by default, as in detr)")
    p.add_argument("--max_iters", type=int, default=0, help="stop each epoch after N iterations (smoke runs)")
    p.add_argument("--no_progress", "--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--json", action="store_true",
                   help="print the JSON records on stdout: each epoch's log (and --eval's results) as a JSON line "
                        "instead of a readable line; log.jsonl in --output_dir has the epochs' JSON either way")
    return p

"""Training driver mirroring detr's main.py: stage 1 trains detection, stage 2 (`--masks --frozen_weights`) the
mask head on the frozen detector. Logs one JSON line per epoch to OUTPUT_DIR/log.jsonl; the terminal gets one
readable line per epoch (train.console), or the JSON lines with --json."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from runtime.errors import PansegError
from runtime.subcommands import report_errors
from train import distributed as dist_utils
from train.amp import autocast_dtype
from train.args import DEFAULT_DATA, build_parser
from train.checkpoint import load_checkpoint, save_checkpoint
from train.console import epoch_line, eval_summary
from train.datasets import build_dataset, collate_fn, scaled_transform_options
from train.datasets.cache import CachedItems
from train.datasets.categories import annotation_file, check_same_categories, num_classes_for, read_categories
from train.datasets.grouped import BatchScaled, GroupedBatchSampler, image_sizes
from train.engine import train_one_epoch
from train.mask_init import amplify_attention_inputs
from train.models import DETRConfig, build_model
from train.models.criterion import build_criterion
from train.optim import build_lr_scheduler, build_optimizer
from train.precise_bn import recompute_batchnorm_statistics
from train.pretrained import load_backbone_weights, load_pretrained
from train.scratch_backbone import train_backbone_from_scratch
from train.token_loss import DETRWithTokenHead, loss_tokens


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Every epoch starts from a seed derived from (seed, epoch, rank), so --resume replays exactly what an
    uninterrupted run would have done without storing RNG states in the checkpoint."""
    return (seed * 1_000_003 + epoch * 7919 + rank) % 2**63


def resolve_device(name: str) -> str:
    if name in ("auto", "cuda") and not torch.cuda.is_available():
        if name == "cuda":
            print("train: CUDA is not available, using the CPU", file=sys.stderr)
        return "cpu"
    return name


def annotations_root(args: argparse.Namespace) -> str:
    return args.coco_panoptic_path if args.dataset_file == "coco_panoptic" else args.coco_path


def dataset_categories(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Categories of the training set's annotation file, which the val set's must match (detr: num_classes = max id
    + 1)."""
    train_path, val_path = (annotation_file(annotations_root(args), args.dataset_file, split)
                            for split in ("train", "val"))
    if not train_path.exists():
        hint = ""
        if args.coco_path == DEFAULT_DATA:
            hint = f" (generate it: python -m train.prepare synthetic -o {DEFAULT_DATA})"
        raise PansegError(f"{train_path}: annotation file not found{hint}")
    categories = read_categories(train_path, args.dataset_file)
    if val_path.exists():  # a missing val file is reported by build_dataset, with the others it needs
        check_same_categories(categories, read_categories(val_path, args.dataset_file), train_path, val_path)
    return categories


def transform_options(args: argparse.Namespace) -> dict[str, Any]:
    """detr's sizes at --image_size 800; below that detr's sizes scaled down (explicit flags still win)."""
    options = scaled_transform_options(args.image_size)
    if args.image_size == 800 or args.max_size != 1333:
        options["max_size"] = args.max_size
    if args.train_scales:
        options["scales"] = [int(s) for s in args.train_scales.split(",")]
    if not args.crop:
        options["crop"] = None
    return options


def strip_detr_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A panoptic checkpoint's detector weights ('detr.*') or a detection checkpoint's, as DETR's own keys."""
    if any(k.startswith("detr.") for k in state_dict):
        return {k[5:]: v for k, v in state_dict.items() if k.startswith("detr.")}
    return dict(state_dict)


def build_loaders(args: argparse.Namespace, info: dist_utils.DistInfo) -> tuple[DataLoader, DataLoader, Any]:
    options = transform_options(args)
    panoptic_path = args.coco_panoptic_path
    train_set = build_dataset("train", args.dataset_file, args.coco_path, panoptic_path, masks=args.masks, **options)
    if args.cache_dataset:
        train_set = CachedItems(train_set)
    val_set = build_dataset("val", args.dataset_file, args.coco_path, panoptic_path, masks=args.masks, **options)
    persistent = args.cache_dataset and args.num_workers > 0
    if args.group_batches:
        sampler = GroupedBatchSampler(image_sizes(train_set), args.batch_size, options["scales"], args.seed,
                                      info.rank if info.enabled else 0, info.world_size if info.enabled else 1)
        train_loader = DataLoader(BatchScaled(train_set), batch_sampler=sampler, collate_fn=collate_fn,
                                  num_workers=args.num_workers, persistent_workers=persistent)
    else:
        if info.enabled:
            sampler = DistributedSampler(train_set, info.world_size, info.rank, shuffle=True, seed=args.seed)
        else:
            sampler = RandomSampler(train_set)
        train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                                  collate_fn=collate_fn, num_workers=args.num_workers, persistent_workers=persistent)
    val_loader = DataLoader(val_set, batch_size=args.eval_batch_size, sampler=SequentialSampler(val_set),
                            collate_fn=collate_fn, num_workers=args.num_workers)
    return train_loader, val_loader, sampler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return report_errors("python -m train", lambda: run(args))
    finally:
        dist_utils.cleanup()


@dataclass
class Training:
    """Everything one training run needs besides the data, built from the command-line flags."""

    model: torch.nn.Module  # what the optimizer steps: the DETR (maybe with its token head), DDP-wrapped if enabled
    model_without_ddp: torch.nn.Module  # the detr-compatible model whose state dict is the checkpoint's 'model'
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: DETRConfig
    categories: list[dict[str, Any]]
    device: str
    info: dist_utils.DistInfo
    token_head: torch.nn.Module | None = None
    frozen_modules: list[torch.nn.Module] = field(default_factory=list)
    scaler: torch.amp.GradScaler | None = None
    amp_dtype: torch.dtype | None = None


def build_training(args: argparse.Namespace) -> Training:
    """Model, criterion, optimizer and schedule as detr's main.py sets them up (plus our training-only helpers)."""
    args.coco_panoptic_path = args.coco_panoptic_path or args.coco_path
    if args.frozen_weights and not args.masks:
        raise PansegError("--frozen_weights is for training the mask head: add --masks")
    device = resolve_device(args.device)
    info = dist_utils.init_distributed(device)
    seed_everything(args.seed + info.rank)

    categories = dataset_categories(args)
    num_classes = num_classes_for(categories, args.num_classes, annotation_file(annotations_root(args),
                                                                                args.dataset_file, "train"))
    config = DETRConfig.from_args(args, num_classes=num_classes, masks=args.masks)
    model = build_model(config, freeze_detr=bool(args.frozen_weights)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.masks and args.mask_attention_gain != 1:
        amplify_attention_inputs(model.mask_head, config.hidden_dim, args.mask_attention_gain)
    # Released weights first (before the scratch-backbone swap, which copies the frozen BatchNorm statistics).
    if args.backbone_weights:
        load_backbone_weights(model, args.backbone_weights, report=info.is_main)
    if args.pretrained:
        load_pretrained(model, args.pretrained, report=info.is_main)
    if args.scratch_backbone and not args.frozen_weights:
        detector = model.detr if config.masks else model
        train_backbone_from_scratch(detector.backbone)
    if args.frozen_weights:
        frozen = load_checkpoint(args.frozen_weights)
        model.detr.load_state_dict(strip_detr_prefix(frozen["model"]))
    model_without_ddp = model
    token_head = None
    if args.token_loss_coef > 0 and not args.masks:
        model = DETRWithTokenHead(model, num_classes).to(device)
        token_head = model.token_head
    if info.enabled:
        device_ids = [info.local_rank] if device != "cpu" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    frozen_modules = [model_without_ddp.detr] if args.frozen_weights else []

    criterion, _ = build_criterion(
        num_classes, masks=args.masks, aux_loss=args.aux_loss, dec_layers=args.dec_layers,
        bbox_loss_coef=args.bbox_loss_coef, giou_loss_coef=args.giou_loss_coef, mask_loss_coef=args.mask_loss_coef,
        dice_loss_coef=args.dice_loss_coef, eos_coef=args.eos_coef, set_cost_class=args.set_cost_class,
        set_cost_bbox=args.set_cost_bbox, set_cost_giou=args.set_cost_giou,
    )
    if token_head is not None:
        criterion.add_loss("tokens", loss_tokens, {"loss_tokens": args.token_loss_coef})
    criterion.to(device)
    trained = model.module if info.enabled else model  # the DETR, or the DETR plus its training-only token head
    optimizer = build_optimizer(trained, args.lr, args.lr_backbone, args.weight_decay)
    scheduler = build_lr_scheduler(optimizer, args.lr_schedule, args.epochs, args.lr_drop, args.warmup_epochs)
    amp_dtype = autocast_dtype(device, args.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return Training(model, model_without_ddp, criterion, optimizer, scheduler, config, categories, device, info,
                    token_head, frozen_modules, scaler, amp_dtype)


def run(args: argparse.Namespace) -> int:
    t = build_training(args)
    model, model_without_ddp, criterion, optimizer, scheduler = (
        t.model, t.model_without_ddp, t.criterion, t.optimizer, t.scheduler)
    config, categories, device, info, token_head = t.config, t.categories, t.device, t.info, t.token_head
    frozen_modules, scaler = t.frozen_modules, t.scaler
    scratch_batchnorm = args.scratch_backbone and not args.frozen_weights
    if args.group_batches and scratch_batchnorm and not args.precise_bn and info.is_main:
        print("python -m train: note: --group_batches with a from-scratch backbone needs --precise_bn N (e.g. 60) so "
              "that inference gets the BatchNorm statistics training normalized with (train/precise_bn.py)",
              file=sys.stderr)

    train_loader, val_loader, sampler = build_loaders(args, info)
    statistics = statistics_loader(train_loader, args) if args.precise_bn else None

    start_epoch = args.start_epoch
    evaluated_epoch = start_epoch - 1  # what --eval reports: the resumed checkpoint's epoch when it has one
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        evaluated_epoch = int(ckpt.get("epoch", evaluated_epoch))
        model_without_ddp.load_state_dict(ckpt["model"])
        if token_head is not None and "token_head" in ckpt:
            token_head.load_state_dict(ckpt["token_head"])
        if not args.eval and "optimizer" in ckpt and "lr_scheduler" in ckpt and "epoch" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["lr_scheduler"])
            start_epoch = int(ckpt["epoch"]) + 1

    from train.evaluate import evaluate  # imported late: evaluation pulls in post-processing and PQ

    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir and info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if args.eval:
        if info.is_main:
            stats = evaluate(model_without_ddp, criterion, val_loader, device, args, output_dir)
            summary = eval_summary(stats, evaluated_epoch)
            print(json.dumps({"epoch": evaluated_epoch, **stats}) if args.json else summary)
        return 0

    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        epoch_started = time.perf_counter()
        seed_everything(epoch_seed(args.seed, epoch, info.rank))
        if isinstance(sampler, DistributedSampler | GroupedBatchSampler):
            sampler.set_epoch(epoch)
        loader = islice(train_loader, args.max_iters) if args.max_iters else train_loader
        train_stats = train_one_epoch(
            model, criterion, loader, optimizer, device, epoch, args.clip_max_norm,
            scaler=scaler, amp_dtype=t.amp_dtype, frozen=frozen_modules, show_progress=args.progress and info.is_main,
            channels_last=args.channels_last,
        )
        scheduler.step()
        last = epoch == args.epochs - 1
        evaluate_now = args.eval_every > 0 and ((epoch + 1) % args.eval_every == 0 or last)
        if args.precise_bn and (last or evaluate_now):
            forward = partial(forward_images, device=device, channels_last=args.channels_last)
            recompute_batchnorm_statistics(model_without_ddp, statistics_batches(statistics, args), forward,
                                           show_progress=args.progress and info.is_main)
        log: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()},
                               "lr": optimizer.param_groups[0]["lr"]}
        checksums = dist_utils.all_gather_object(parameter_checksum(model_without_ddp))
        if info.enabled:
            log["replica_checksums"] = checksums
        if info.is_main and output_dir:
            ckpt = {
                "model": contiguous(model_without_ddp.state_dict()), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "args": plain_args(args),
                "config": config.to_dict(), "categories": categories,
            }
            if token_head is not None:  # training-only, kept apart from the detr-compatible 'model'
                ckpt["token_head"] = token_head.state_dict()
            save_checkpoint(output_dir / "checkpoint.pth", ckpt)
        if info.is_main and evaluate_now:
            log.update(evaluate(model_without_ddp, criterion, val_loader, device, args, output_dir))
        now = time.perf_counter()
        log["minutes"] = round((now - started) / 60, 3)
        if info.is_main:
            line = json.dumps(log)
            print(line if args.json else epoch_line(log, args.epochs, now - epoch_started, now - started), flush=True)
            if output_dir:
                with open(output_dir / "log.jsonl", "a") as f:
                    f.write(line + "\n")
        dist_utils.barrier()
    return 0


def statistics_loader(train_loader: DataLoader, args: argparse.Namespace) -> DataLoader:
    """``--precise_bn``'s training images at the evaluation scale, one orientation per batch (no padding, as
    inference sees images); built once, since grouping reads every image's size."""
    dataset = train_loader.dataset
    dataset = dataset.dataset if isinstance(dataset, BatchScaled) else dataset
    sampler = GroupedBatchSampler(image_sizes(dataset), args.batch_size, [args.image_size], seed=args.seed)
    return DataLoader(BatchScaled(dataset), batch_sampler=sampler, collate_fn=collate_fn)


def statistics_batches(loader: DataLoader, args: argparse.Namespace) -> Iterator[Any]:
    """The first ``--precise_bn`` batches of ``loader`` under their own seed: the same batches on every rank and in
    every run, and the training's random state untouched."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        try:
            yield from islice(loader, args.precise_bn)
        finally:
            random.setstate(state)


def forward_images(model: torch.nn.Module, batch: tuple, device: str, channels_last: bool) -> None:
    """The model on one collated batch, in float32 as evaluation and the export run it."""
    images, padding_mask, _ = batch
    images = images.to(device)
    model(images.contiguous(memory_format=torch.channels_last) if channels_last else images, padding_mask.to(device))


def contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain row-major tensors whatever the training layout (--channels_last): detr's checkpoints hold those."""
    return {k: v.contiguous() for k, v in state_dict.items()}


def parameter_checksum(model: torch.nn.Module) -> float:
    """A cheap fingerprint of all weights, to show that data-parallel replicas stay identical."""
    with torch.no_grad():
        return float(sum(p.double().sum() + (p.double() ** 2).sum() for p in model.state_dict().values()
                         if p.is_floating_point()))


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as a plain dict (nothing but plain types gets pickled into checkpoints)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | type(None) | list)}

"""Size-grouped batches (train/datasets/grouped.py): one orientation, aspect group and scale per batch."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from train.datasets import build_dataset, collate_fn, scaled_transform_options
from train.datasets.cache import CachedItems
from train.datasets.grouped import BatchScaled, GroupedBatchSampler, group_key, image_sizes
from train.datasets.transforms import batch_scale, build_transforms

SCALES = [77, 82, 86, 91, 96, 102, 106, 112, 118, 122, 128]


def demo_like_sizes(n: int = 400, seed: int = 0) -> list[tuple[int, int]]:
    """A quarter portrait, aspect 1.0-1.5, short side 128: the shape mix of the synthetic data."""
    rng = random.Random(seed)
    sizes = []
    for _ in range(n):
        long_side = rng.randint(128, 192)
        sizes.append((128, long_side) if rng.random() < 0.25 else (long_side, 128))
    return sizes


def resized(size: tuple[int, int], short: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``short`` (no max_size cap at these shapes)."""
    w, h = size
    return (round(w * short / h), short) if w >= h else (short, round(h * short / w))


def padded_fraction(batches: list[list[tuple[int, int]]], sizes: list[tuple[int, int]]) -> float:
    """Brute force: the share of the batch tensors' pixels that are padding."""
    padded = real = 0
    for batch in batches:
        shapes = [resized(sizes[i], s) for i, s in batch]
        padded += len(shapes) * max(w for w, _ in shapes) * max(h for _, h in shapes)
        real += sum(w * h for w, h in shapes)
    return 1 - real / padded


def test_each_batch_has_one_group_and_one_scale_and_no_index_twice():
    sizes = demo_like_sizes()
    sampler = GroupedBatchSampler(sizes, 16, SCALES, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    seen = [i for batch in batches for i, _ in batch]
    assert len(seen) == len(set(seen))
    for batch in batches:
        assert len(batch) == 16
        assert len({group_key(*sizes[i]) for i, _ in batch}) == 1
        assert len({s for _, s in batch}) == 1 and batch[0][1] in SCALES


def test_padding_is_far_below_per_image_scales():
    sizes = demo_like_sizes()
    rng = random.Random(0)
    order = list(range(len(sizes)))
    rng.shuffle(order)
    detr_batches = [[(i, rng.choice(SCALES)) for i in order[k:k + 16]] for k in range(0, len(order) - 15, 16)]
    grouped = list(GroupedBatchSampler(sizes, 16, SCALES, seed=0))
    detr, ours = padded_fraction(detr_batches, sizes), padded_fraction(grouped, sizes)
    assert detr > 0.3 and ours < 0.15, (detr, ours)


def test_deterministic_per_epoch_and_different_across_epochs():
    sizes = demo_like_sizes()
    a, b = GroupedBatchSampler(sizes, 8, SCALES, seed=5), GroupedBatchSampler(sizes, 8, SCALES, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    scales = Counter(batch[0][1] for epoch in range(20) for batch in (a.set_epoch(epoch), list(a))[1])
    assert set(scales) == set(SCALES)


def test_ranks_get_disjoint_equal_shares():
    sizes = demo_like_sizes()
    shares = [list(GroupedBatchSampler(sizes, 8, SCALES, seed=2, rank=r, world_size=3)) for r in range(3)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(GroupedBatchSampler(sizes, 8, SCALES, 2, 0, 3))
    indices = [i for share in shares for batch in share for i, _ in batch]
    assert len(indices) == len(set(indices))


def test_loader_resizes_every_image_of_a_batch_to_its_scale(tiny_dataset):
    options = scaled_transform_options(64)
    from PIL import Image

    source = build_dataset("train", "coco_panoptic", tiny_dataset, tiny_dataset, masks=True, **options)
    dataset = CachedItems(source)
    sizes = image_sizes(dataset)
    assert sizes == [Image.open(source.image_path(ann)).size for ann in source.annotations]
    sampler = GroupedBatchSampler(sizes, 1, options["scales"], seed=0)
    loader = DataLoader(BatchScaled(dataset), batch_sampler=sampler, collate_fn=collate_fn)
    for (index, scale), (images, mask, targets) in zip((b[0] for b in sampler), loader, strict=True):
        h, w = (int(v) for v in targets[0]["size"])
        assert min(h, w) == scale or max(h, w) == options["max_size"], (index, scale, h, w)
        assert images.shape[-2:] == (h, w) and not mask.any()


def test_crop_branch_only_forces_the_final_resize():
    from PIL import Image

    transforms = build_transforms("train", scales=[50], max_size=1000, crop=(20, 30), crop_resize=[40])
    image = Image.new("RGB", (90, 60))
    for _ in range(20):
        with batch_scale(33):
            out, _ = transforms(image, None)
        assert min(out.shape[1:]) == 33


@pytest.mark.parametrize("bad", [0, -1])
def test_rejects_empty_batches(bad):
    with pytest.raises(ValueError):
        GroupedBatchSampler([(10, 10)], bad, SCALES)


def test_only_batch_scaled_resizes_follow_the_batch_scale():
    from PIL import Image

    from train.datasets.transforms import RandomResize

    image = Image.new("RGB", (90, 60))
    with batch_scale(33):
        assert min(RandomResize([40])(image)[0].size) == 40
        assert min(RandomResize([40], batch_scaled=True)(image)[0].size) == 33
    assert min(RandomResize([40], batch_scaled=True)(image)[0].size) == 40


def test_channels_last_and_grouped_training_writes_a_plain_detr_checkpoint(tiny_dataset, tmp_path):
    """The speed flags of demo-fp32 change neither the checkpoint's names, shapes nor its row-major layout."""
    from conftest import run_train

    plain = run_train(tiny_dataset, tmp_path / "plain", "--epochs", "1", "--max_iters", "1", "--scratch_backbone")
    fast = run_train(tiny_dataset, tmp_path / "fast", "--epochs", "1", "--max_iters", "1", "--channels_last",
                     "--group_batches", "--scratch_backbone")
    assert {k: v.shape for k, v in fast["model"].items()} == {k: v.shape for k, v in plain["model"].items()}
    assert all(v.is_contiguous() for v in fast["model"].values())
    conv = next(k for k, v in fast["model"].items() if v.ndim == 4 and v.shape[-1] > 1)  # 1x1: strides moot
    assert fast["model"][conv].stride() == plain["model"][conv].stride()

"""Size-grouped batches: every batch holds images of one orientation and similar aspect, all resized to one
training scale drawn for the batch.

detr draws a scale per image and pads each batch to its largest height and largest width. On the demo's data
(a quarter portrait, aspect 1.0-1.5, scales 77..128) that padding is about 40% of the pixels the backbone
convolves, forward and backward. Grouping by orientation and aspect, and drawing the scale once per batch (as
torchvision's detection references and YOLO-style multi-scale training do), keeps the same distribution of scales
per image while the batch carries little padding. The model and the checkpoint are unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import Dataset, Sampler

from train.datasets.transforms import batch_scale

ASPECT_SPLIT = 1.25  # long side / short side: the demo's images span 1.0-1.5, so two aspect groups per orientation


def group_key(width: int, height: int) -> tuple[bool, bool]:
    """(portrait, elongated): images sharing a key pad little when batched together."""
    long_side, short_side = max(width, height), max(1, min(width, height))
    return height > width, long_side / short_side >= ASPECT_SPLIT


class GroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches of ``(index, scale)``: one group key and one scale per batch, full batches only.

    Deterministic in (seed, epoch); every rank builds the same batch list and takes every ``world_size``-th batch,
    so data-parallel replicas see disjoint batches of equal count.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int, scales: Sequence[int], seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or not scales:
            raise ValueError("GroupedBatchSampler needs batch_size >= 1 and at least one scale")
        self.groups: dict[tuple[bool, bool], list[int]] = {}
        for index, (width, height) in enumerate(sizes):
            self.groups.setdefault(group_key(width, height), []).append(index)
        self.batch_size, self.scales = batch_size, list(scales)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's batches of indices, before the rank's share is taken."""
        rng = random.Random(self.seed * 100_003 + self.epoch)
        batches = []
        for key in sorted(self.groups):
            members = list(self.groups[key])
            rng.shuffle(members)
            full = len(members) // self.batch_size * self.batch_size
            batches += [members[i:i + self.batch_size] for i in range(0, full, self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = random.Random(self.seed * 100_003 + self.epoch + 1)
        batches = self.batches()
        scales = [rng.choice(self.scales) for _ in batches]
        usable = len(batches) // self.world_size * self.world_size  # equal counts on every rank
        for batch, scale in list(zip(batches, scales, strict=True))[:usable][self.rank::self.world_size]:
            yield [(index, scale) for index in batch]

    def __len__(self) -> int:
        return sum(len(members) // self.batch_size for members in self.groups.values()) // self.world_size


class BatchScaled(Dataset):
    """``dataset`` indexed by ``(index, scale)``: its multi-scale resize uses the batch's scale."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, scale = key
        with batch_scale(scale):
            return self.dataset[index]


def image_sizes(dataset: Any) -> list[tuple[int, int]]:
    """(width, height) of every item, read from the annotations (CachedItems forwards to its dataset)."""
    source = getattr(dataset, "dataset", dataset)
    return [source.image_size(i) for i in range(len(source))]

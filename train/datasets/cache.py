"""Keep a dataset's decoded items in memory so later epochs skip JPEG/PNG decoding and target building.

Training-only speedup for small datasets on a busy CPU (the demo's 2000 synthetic 128-px images: ~130 MB of
pixels). The random augmentations still run on every access, after the cache, so each epoch sees fresh ones.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


class CachedItems(Dataset):
    """``dataset`` with its ``transforms`` applied after a per-index cache of the untransformed (image, target).

    Transforms must not modify their inputs in place (ours copy the target dict and build new tensors and images).
    With DataLoader workers every worker keeps its own cache: use persistent workers, or none.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.transforms = dataset.transforms
        dataset.transforms = None
        self._items: dict[int, tuple[Any, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int):
        if idx not in self._items:
            self._items[idx] = self.dataset[idx]
        image, target = self._items[idx]
        target = dict(target)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

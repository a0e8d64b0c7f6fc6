"""Items -> model-ready tensors and targets, reading each frame lazily from its stack."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .items import Item
from .preprocess import Preprocessing, preprocess, training_augmentation
from .stack import TimelapseStack, open_stack
from .tiles import crop


class ItemDataset(Dataset):
    """One preprocessed crop per item, with its class and time target.

    ``augment``: False, True (SPEC 5's flips and rotation) or an augmentation's name.

    Stacks are opened on first use (in the item's channel) and kept open; the last frame
    read is kept so the tiles of one frame cost one read.
    """

    def __init__(
        self,
        items: Sequence[Item],
        prep: Preprocessing,
        augment: bool | str = False,
        stacks: dict[tuple[str, int | None], TimelapseStack] | None = None,
    ):
        self.items = list(items)
        self.prep = prep
        # True is SPEC 5's augmentation; a name picks one (preprocess.training_augmentation).
        kind = {True: "spec", False: "none"}.get(augment, augment)
        self.augment = training_augmentation(kind)
        self._stacks: dict[tuple[str, int | None], TimelapseStack] = dict(stacks or {})
        self._last: tuple[str, int | None, int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices) -> ItemDataset:
        """The items at ``indices``, with this dataset's preprocessing, augmentation and open
        stacks (a process's share of the items under torchrun)."""
        part = ItemDataset([self.items[i] for i in indices], self.prep, stacks=self._stacks)
        part.augment = self.augment
        return part

    def stack(self, path: str, channel: int | None = None) -> TimelapseStack:
        if (path, channel) not in self._stacks:
            self._stacks[path, channel] = open_stack(path, channel=channel)
        return self._stacks[path, channel]

    def raw_crop(self, index: int) -> np.ndarray:
        """The item's pixels as stored: (h, w) or (h, w, 3)."""
        item = self.items[index]
        key = (item.stack, item.channel, item.frame)
        if self._last is None or self._last[:3] != key:
            self._last = (*key, self.stack(item.stack, item.channel).frame(item.frame))
        frame = self._last[3]
        return frame if item.box is None else crop(frame, item.box)

    def __getitem__(self, index: int):
        item = self.items[index]
        x = preprocess(torch.from_numpy(self.raw_crop(index))[None], self.prep, self.augment)[0]
        return (
            x,
            torch.tensor(item.label, dtype=torch.long),
            torch.tensor(item.time_target, dtype=torch.float32),
        )

    def targets(self) -> tuple[np.ndarray, np.ndarray]:
        """All classes and time targets, without reading pixels."""
        labels = np.array([it.label for it in self.items], dtype=np.int64)
        times = np.array([it.time_target for it in self.items], dtype=np.float64)
        return labels, times

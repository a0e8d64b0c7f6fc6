"""A validation split for hand-labelled data that never leaks through neighbouring frames.

Labels made in the viewer often cover one or two stacks only, so the well-level split of
:func:`.items.split_by_group` has too few groups. Then whole blocks of consecutive frames
go to validation, and a guard band of frames on either side of each validation block is
left out of training: neighbouring frames, nearly identical, are never on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .items import Item, split_by_group
from .targets import INFECTED, UNINFECTED

SPLIT_MODES = ("auto", "wells", "frame blocks")


@dataclass
class BlockSplit:
    """Train and validation items, the items left out as guard band, and how it was cut."""

    train: list[Item]
    val: list[Item]
    guard: list[Item] = field(default_factory=list)
    how: str = ""

    def summary(self) -> str:
        def count(items):
            n_inf = sum(i.label == INFECTED for i in items)
            return f"{len(items)} ({n_inf} infected, {len(items) - n_inf} uninfected)"

        return f"train {count(self.train)}, validation {count(self.val)}; {self.how}"


def _groups_per_class(items) -> dict[int, set[str]]:
    out = {INFECTED: set(), UNINFECTED: set()}
    for it in items:
        out[it.label].add(it.group)
    return out


def split_for_training(items, val_fraction: float = 0.2, mode: str = "auto",
                       block_frames: int = 8, gap_frames: int = 1, seed: int = 0) -> BlockSplit:
    """Split by wells when each class has at least two, else by blocks of frames.

    ``val_fraction`` 0 gives no validation. ``mode`` forces one way or the other.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}")
    if not items:
        raise ValueError("no labelled items: label some frames or crops first")
    if val_fraction <= 0:
        return BlockSplit(list(items), [], how="no validation")
    per_class = _groups_per_class(items)
    enough = all(len(g) >= 2 for g in per_class.values())
    if mode == "wells" or (mode == "auto" and enough):
        train, val, _ = split_by_group(items, val_fraction, 0.0, seed)
        return BlockSplit(train, val, how=f"by well: {len({i.group for i in val})} well(s) "
                                          "held out for validation")
    return split_frame_blocks(items, val_fraction, block_frames, gap_frames, seed)


def split_frame_blocks(items, val_fraction: float = 0.2, block_frames: int = 8,
                       gap_frames: int = 1, seed: int = 0) -> BlockSplit:
    """Whole blocks of ``block_frames`` consecutive frames of a stack go to validation,
    about ``val_fraction`` of each class's blocks (at least one where a class has two);
    items within ``gap_frames`` of a validation block are left out of training."""
    if block_frames < 1 or gap_frames < 0:
        raise ValueError("block_frames must be >= 1 and gap_frames >= 0")
    blocks: dict[tuple[str, int], list[int]] = {}
    for i, it in enumerate(items):
        blocks.setdefault((it.stack, it.frame // block_frames), []).append(i)
    by_class: dict[int, list[tuple[str, int]]] = {INFECTED: [], UNINFECTED: []}
    for key, members in blocks.items():
        share = np.mean([items[i].label for i in members])
        by_class[INFECTED if share >= 0.5 else UNINFECTED].append(key)
    rng = np.random.default_rng(seed)
    val_blocks: set[tuple[str, int]] = set()
    for keys in by_class.values():
        keys = sorted(keys)
        n = int(np.floor(val_fraction * len(keys) + 0.5))
        if len(keys) >= 2:
            n = min(max(n, 1), len(keys) - 1)
        else:
            n = 0
        val_blocks.update(keys[k] for k in rng.permutation(len(keys))[:n])
    val_frames: dict[str, set[int]] = {}
    for stack, b in val_blocks:
        val_frames.setdefault(stack, set()).update(range(b * block_frames, (b + 1) * block_frames))
    train, val, guard = [], [], []
    for it in items:
        frames = val_frames.get(it.stack, set())
        if it.frame in frames:
            val.append(it)
        elif any(f in frames for f in range(it.frame - gap_frames, it.frame + gap_frames + 1)):
            guard.append(it)
        else:
            train.append(it)
    if not val_blocks:
        how = ("no validation: each class needs at least two blocks of "
               f"{block_frames} labelled frames")
    else:
        how = (f"by frame blocks: {len(val_blocks)} block(s) of {block_frames} frames held out, "
               f"{len(guard)} neighbouring item(s) left out as a {gap_frames}-frame guard band")
    return BlockSplit(train, val, guard, how)

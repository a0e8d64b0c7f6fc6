"""Training and evaluation items (one frame, or one box of a frame, with its targets) and
splits by well.

Items come from the research folder layout or from a label table. Splits and folds are by
group (the well position, else the stack) and never by frame: frames of one stack are
nearly identical, so a frame-level split leaks (SPEC 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from .labels import BOX_COLUMNS, normalize_labels
from .stack import open_stack, parse_position
from .targets import (
    CLASS_NAMES,
    DEFAULT_CLAMP,
    DEFAULT_FRAME_INTERVAL_H,
    DEFAULT_ONSET_H,
    INFECTED,
    UNINFECTED,
    TimePolicy,
    time_target,
)
from .tiles import TileSpec, tile_boxes

TIFF_SUFFIXES = (".tif", ".tiff")
#: Tolerance for "frame hours inside the window", so 0.5 h steps hit window edges exactly.
_EPS_H = 1e-9


@dataclass(frozen=True)
class Item:
    """One training/evaluation sample: a frame (``box=None``) or a box of it."""

    stack: str
    frame: int
    box: tuple[int, int, int, int] | None
    label: int
    hours: float
    time_target: float
    group: str


@dataclass(frozen=True)
class FramePolicy:
    """SPEC 6 frame policy: which frames of research stacks become items, and their times."""

    frames_per_hour: float = 1.0 / DEFAULT_FRAME_INTERVAL_H
    infected_window_h: tuple[float, float] = (DEFAULT_ONSET_H, DEFAULT_CLAMP[1])
    uninfected_window_h: tuple[float, float] = DEFAULT_CLAMP
    infected_stride: int = 1
    uninfected_stride: int = 1
    onset_h: float = DEFAULT_ONSET_H
    clamp: tuple[float, float] = DEFAULT_CLAMP
    #: One rule everywhere (items, prediction): a stack's own frame interval (ImageJ/OME
    #: metadata) wins; ``frames_per_hour`` is for stacks without one. Switch off to force
    #: ``frames_per_hour`` as the research runs did.
    use_metadata_interval: bool = True

    def __post_init__(self):
        if not self.frames_per_hour > 0:
            raise ValueError(f"frames_per_hour must be positive, got {self.frames_per_hour!r}")
        for name in ("infected_window_h", "uninfected_window_h", "clamp"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got ({lo}, {hi})")
        for name in ("infected_stride", "uninfected_stride"):
            stride = getattr(self, name)
            if not (isinstance(stride, (int, np.integer)) and stride >= 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {stride!r}")

    @property
    def frame_interval_h(self) -> float:
        return 1.0 / self.frames_per_hour

    def time_policy(self) -> TimePolicy:
        """Frame interval, onset and clamp as the :class:`TimePolicy` checkpoints store."""
        return TimePolicy(self.frame_interval_h, self.onset_h, self.clamp)

    def window(self, label: int) -> tuple[float, float]:
        return self.infected_window_h if label == INFECTED else self.uninfected_window_h

    def stride(self, label: int) -> int:
        return self.infected_stride if label == INFECTED else self.uninfected_stride


def _position_group(path) -> str | None:
    """The well position as a group name ("p7"), or None when the name carries none."""
    position = parse_position(path)
    return f"p{position}" if position is not None else None


def _boxes(frame_shape, tiles: TileSpec | None) -> list[tuple[int, int, int, int] | None]:
    if tiles is None or tiles.whole_frame:
        return [None]
    boxes, _ = tile_boxes(*frame_shape, tiles)
    return [tuple(int(v) for v in b) for b in boxes]


def _tiff_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)


def research_items(
    root, policy: FramePolicy = FramePolicy(), tiles: TileSpec = TileSpec()
) -> list[Item]:
    """Items from ``ROOT/infected/*.tif[f]`` and ``ROOT/uninfected/*.tif[f]`` (SPEC 2).

    Frames whose hours lie inside the class's window (inclusive) are taken, every
    ``stride``-th one from the first; with tiles, each frame gives one item per tile. The
    group is the well position ``p<N>`` from the file name, else the file stem. Only the
    files' headers are read, never pixels.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(
            f"data folder {root} does not exist; choose the folder that holds infected/ "
            "and uninfected/"
        )
    classes = ((INFECTED, "infected"), (UNINFECTED, "uninfected"))
    for _, sub in classes:
        if not (root / sub).is_dir():
            raise ValueError(
                f"{root} has no {sub}/ folder; the research layout is ROOT/infected/*.tif "
                "and ROOT/uninfected/*.tif"
            )
    items: list[Item] = []
    for label, sub in classes:
        folder = root / sub
        files = _tiff_files(folder)
        if not files:
            raise ValueError(f"{folder} holds no .tif/.tiff files; put the {sub} stacks there")
        lo, hi = policy.window(label)
        n_before = len(items)
        for path in files:
            interval = None if policy.use_metadata_interval else policy.frame_interval_h
            with open_stack(path, frame_interval_h=interval) as stack:
                n_frames, shape = stack.n_frames, stack.frame_shape
                if stack.frame_interval_source == "default":
                    interval = policy.frame_interval_h
                else:
                    interval = stack.frame_interval_h
            if n_frames == 0:
                raise ValueError(f"{path} has no frames; remove it or replace it")
            frames = np.arange(n_frames)
            hours = frames * interval
            inside = (hours >= lo - _EPS_H) & (hours <= hi + _EPS_H)
            chosen = frames[inside][:: policy.stride(label)]
            targets = time_target(hours[chosen], label == INFECTED, policy.onset_h, policy.clamp)
            group = _position_group(path) or path.stem
            boxes = _boxes(shape, tiles)
            items.extend(
                Item(str(path), int(f), box, label, float(hours[f]), float(t), group)
                for f, t in zip(chosen, targets)
                for box in boxes
            )
        if len(items) == n_before:
            raise ValueError(
                f"no frame of the {sub} stacks lies in the {sub} window {lo}-{hi} h "
                f"(frame interval {interval} h); widen the window or check frames_per_hour"
            )
    return items


def label_table_items(
    df: pd.DataFrame,
    tiles: TileSpec | None = None,
    default_frame_interval_h: float = DEFAULT_FRAME_INTERVAL_H,
    clamp: tuple[float, float] = DEFAULT_CLAMP,
) -> list[Item]:
    """Items from a label table (see :mod:`.labels`).

    Boxed rows give that box; whole-frame rows give the whole frame, or one item per tile
    when ``tiles`` is given. An empty frame interval is taken from the stack's metadata,
    else ``default_frame_interval_h``. The group is the well position when the file name
    has one, else the stack path.
    """
    df = normalize_labels(df)
    stacks: dict[str, tuple[int, tuple[int, int], float | None]] = {}
    items: list[Item] = []
    for i, row in enumerate(df.itertuples(index=False)):
        where = f"row {i + 1} (CSV line {i + 2})"
        if row.stack not in stacks:
            with open_stack(row.stack) as stack:
                from_file = stack.frame_interval_source == "metadata"
                meta = stack.frame_interval_h if from_file else None
                stacks[row.stack] = (stack.n_frames, stack.frame_shape, meta)
        n_frames, (height, width), meta_interval = stacks[row.stack]
        if row.frame >= n_frames:
            raise ValueError(
                f"{where}: frame {row.frame} does not exist in {row.stack}, which has "
                f"{n_frames} frames (0..{n_frames - 1}); fix the frame number"
            )
        if pd.notna(row.y0):
            box = tuple(int(getattr(row, c)) for c in BOX_COLUMNS)
            if box[0] >= height or box[1] >= width:
                raise ValueError(
                    f"{where}: box {box} starts outside the {height} x {width} frame of "
                    f"{row.stack}; fix the box"
                )
            boxes = [box]
        else:
            boxes = _boxes((height, width), tiles)
        interval = row.frame_interval_h
        if np.isnan(interval):
            interval = meta_interval or default_frame_interval_h
        label = INFECTED if row.label == CLASS_NAMES[INFECTED] else UNINFECTED
        hours = row.frame * interval
        onset = row.onset_h if label == INFECTED else 0.0
        target = float(time_target(hours, label == INFECTED, onset, clamp))
        group = _position_group(row.stack) or row.stack
        items.extend(
            Item(row.stack, int(row.frame), box, label, float(hours), target, group)
            for box in boxes
        )
    return items


def items_frame(items) -> pd.DataFrame:
    """A table of items (one row each), for reports and for checking what will be trained."""
    boxes = [it.box or (pd.NA,) * 4 for it in items]
    return pd.DataFrame(
        {
            "stack": [it.stack for it in items],
            "frame": np.array([it.frame for it in items], dtype=np.int64),
            **{
                c: pd.array([b[k] for b in boxes], dtype="Int64")
                for k, c in enumerate(BOX_COLUMNS)
            },
            "label": np.array([it.label for it in items], dtype=np.int64),
            "label_name": [CLASS_NAMES[it.label] for it in items],
            "hours": np.array([it.hours for it in items], dtype=np.float64),
            "time_target": np.array([it.time_target for it in items], dtype=np.float64),
            "group": [it.group for it in items],
        }
    )


def _group_classes(items) -> dict[str, int]:
    """Each group's class: the class of most of its items (ties count as infected)."""
    if not items:
        raise ValueError("no items to split; load some stacks or labels first")
    labels = pd.Series([it.label for it in items]).groupby([it.group for it in items]).mean()
    return {str(g): INFECTED if m >= 0.5 else UNINFECTED for g, m in labels.items()}


def _describe(classes: dict[str, int]) -> str:
    n_inf = sum(c == INFECTED for c in classes.values())
    return f"{len(classes)} group(s): {n_inf} infected, {len(classes) - n_inf} uninfected"


def _share(fraction: float, n: int, n_needed: int) -> int:
    """Groups of one class for a split: rounded share, at least one when the class has
    enough groups to give every split one."""
    k = int(np.floor(fraction * n + 0.5))
    return max(k, 1) if fraction > 0 and n >= n_needed else k


def split_by_group(
    items, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Item], list[Item], list[Item]]:
    """Train, validation and test items, split by group and stratified by class.

    Each class's groups are shuffled (by ``seed``) and shared out by the fractions; every
    split gets both classes when each class has a group for every split (3 groups per
    class for train/val/test). A fraction of 0 gives an empty split.
    """
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 "
            "and sum to less than 1, leaving items to train on"
        )
    classes = _group_classes(items)
    wanted = {"test": test_fraction, "val": val_fraction}
    n_needed = 1 + sum(f > 0 for f in wanted.values())
    if len(classes) < n_needed:
        raise ValueError(
            f"too few groups to split by well: {_describe(classes)}, but train/val/test with "
            f"val_fraction={val_fraction}, test_fraction={test_fraction} needs at least "
            f"{n_needed}; add stacks from more wells or set a fraction to 0"
        )
    rng = np.random.default_rng(seed)
    alloc = {s: {INFECTED: [], UNINFECTED: []} for s in ("train", "val", "test")}
    for c in (INFECTED, UNINFECTED):
        groups = [g for g, k in classes.items() if k == c]
        groups = [groups[i] for i in rng.permutation(len(groups))]
        n = len(groups)
        n_test = _share(test_fraction, n, n_needed)
        n_val = _share(val_fraction, n, n_needed)
        while n_test + n_val > max(n - 1, 0):  # keep a group of the class for training
            if n_val:
                n_val -= 1
            else:
                n_test -= 1
        alloc["test"][c] = groups[:n_test]
        alloc["val"][c] = groups[n_test : n_test + n_val]
        alloc["train"][c] = groups[n_test + n_val :]
    for split, fraction in wanted.items():  # small data: give an empty split one group
        if fraction > 0 and not any(alloc[split].values()):
            # Only a class with a training group to spare may give one.
            donors = [c for c in (INFECTED, UNINFECTED) if len(alloc["train"][c]) > 1]
            if not donors:
                raise ValueError(
                    f"too few groups to split by well: {_describe(classes)}; the {split} split "
                    "would take the last training group of a class. Add stacks from more "
                    f"wells or set the {split} fraction to 0"
                )
            donor = max(donors, key=lambda c: len(alloc["train"][c]))
            alloc[split][donor].append(alloc["train"][donor].pop())
    split_of = {g: s for s, by_class in alloc.items() for gs in by_class.values() for g in gs}
    out = {"train": [], "val": [], "test": []}
    for it in items:
        out[split_of[it.group]].append(it)
    return out["train"], out["val"], out["test"]


def kfold_by_group(items, k: int = 5, seed: int = 0) -> list[tuple[list[Item], list[Item]]]:
    """``k`` (train, val) folds over groups; a group is never in both halves of a fold.

    Stratified by class (scikit-learn's StratifiedGroupKFold) when both classes occur.
    """
    classes = _group_classes(items)
    if not (isinstance(k, (int, np.integer)) and k >= 2):
        raise ValueError(f"k must be a whole number of folds >= 2, got {k!r}")
    if len(classes) < k:
        raise ValueError(
            f"{k}-fold cross-validation by well needs at least {k} groups; there are "
            f"{_describe(classes)}. Use fewer folds or add stacks from more wells"
        )
    labels = np.array([it.label for it in items])
    groups = np.array([it.group for it in items])
    if len(set(labels.tolist())) > 1:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [
        ([items[i] for i in train], [items[i] for i in val])
        for train, val in splitter.split(np.zeros(len(items)), labels, groups)
    ]

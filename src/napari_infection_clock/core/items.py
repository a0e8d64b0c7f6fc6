"""Training and evaluation items (one frame, or one box of a frame, with its targets) and
splits by well.

Items come from the research folder layout or from a label table. Splits and folds are by
group (the well position, else the stack) and never by frame: frames of one stack are
nearly identical, so a frame-level split leaks (SPEC 6).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .labels import BOX_COLUMNS, LabelTableError, normalize_labels
from .stack import StackError, open_stack, parse_position
from .targets import (
    CLASS_NAMES,
    DEFAULT_CLAMP,
    DEFAULT_FRAME_INTERVAL_H,
    DEFAULT_ONSET_H,
    INFECTED,
    UNINFECTED,
    FramePolicy,
    TimePolicy,
    time_target,
)
from .tiles import TileSpec, tile_boxes

TIFF_SUFFIXES = (".tif", ".tiff")
#: Tolerance for "frame hours inside the window", so 0.5 h steps hit window edges exactly.
_EPS_H = 1e-9


@dataclass(frozen=True)
class Item:
    """One training/evaluation sample: a frame (``box=None``) or a box of it.

    It keeps what its stack was read as (channel, frame interval, onset), so checkpoints
    and split tables can record it.
    """

    stack: str
    frame: int
    box: tuple[int, int, int, int] | None
    label: int
    hours: float
    time_target: float
    group: str
    channel: int | None = None
    channel_desc: str = "single channel"
    frame_interval_h: float = DEFAULT_FRAME_INTERVAL_H
    onset_h: float | None = None


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
    root, policy: FramePolicy = FramePolicy(), tiles: TileSpec = TileSpec(),
    channel: int | str | None = None,
) -> list[Item]:
    """Items from ``ROOT/infected/*.tif[f]`` and ``ROOT/uninfected/*.tif[f]`` (SPEC 2).

    Frames whose hours lie inside the class's window (inclusive) are taken, every
    ``stride``-th one from the first; with tiles, each frame gives one item per tile. The
    group is the well position ``p<N>`` from the file name, else the file stem. Only the
    files' headers are read, never pixels. Multichannel files need ``channel`` (index, or
    a name when files differ in channel order).
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
            with open_stack(path, channel=channel, frame_interval_h=interval) as stack:
                n_frames, shape = stack.n_frames, stack.frame_shape
                read_as = (stack.channel, stack.channel_desc)
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
            onset = policy.onset_h if label == INFECTED else None
            items.extend(
                Item(str(path), int(f), box, label, float(hours[f]), float(t), group,
                     *read_as, float(interval), onset)
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
    channel: int | str | None = None,
) -> list[Item]:
    """Items from a label table (see :mod:`.labels`).

    Boxed rows give that box; whole-frame rows give the whole frame, or one item per tile
    when ``tiles`` is given. An empty frame interval is taken from the stack's metadata,
    else ``default_frame_interval_h``. A row's ``channel`` (index or name) picks the
    channel of a multichannel stack, else ``channel`` (the run's choice) does; with
    neither, such a stack is refused with its channels listed. The group is the well
    position when the file name has one, else the stack path.
    """
    folder = df.attrs.get("table_folder")
    df = normalize_labels(df)
    stacks: dict[tuple, tuple] = {}
    items: list[Item] = []
    for i, row in enumerate(df.itertuples(index=False)):
        where = f"row {i + 1} (CSV line {i + 2})"
        choice = channel if row.channel is None else row.channel
        if (row.stack, choice) not in stacks and not Path(row.stack).is_file():
            raise StackError(
                f"{where}: stack {row.stack} does not exist; relative stack paths in a label "
                "table are resolved against the table's folder"
                + (f" ({folder})" if folder else "") + ", not the current folder: fix the path"
            )
        if (row.stack, choice) not in stacks:
            try:
                stack = open_stack(row.stack, channel=choice)
            except StackError as exc:
                raise StackError(f"{where}: {exc}") from exc
            with stack:
                from_file = stack.frame_interval_source == "metadata"
                meta = stack.frame_interval_h if from_file else None
                read_as = (stack.channel, stack.channel_desc)
                stacks[row.stack, choice] = (stack.n_frames, stack.frame_shape, meta, read_as)
        n_frames, (height, width), meta_interval, read_as = stacks[row.stack, choice]
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
            Item(row.stack, int(row.frame), box, label, float(hours), target, group,
                 *read_as, float(interval), float(onset) if label == INFECTED else None)
            for box in boxes
        )
    return items


def on_tiles(items, tiles: TileSpec) -> list[Item]:
    """Whole-frame items as one item per tile (each with the frame's label and time), as a
    model trained on native tiles sees labelled frames; boxed items (crops) stay as they
    are. Only the stacks' headers are read."""
    shapes: dict[tuple, tuple[int, int]] = {}
    out: list[Item] = []
    for item in items:
        if item.box is not None:
            out.append(item)
            continue
        key = (item.stack, item.channel)
        if key not in shapes:
            with open_stack(item.stack, channel=item.channel) as stack:
                shapes[key] = stack.frame_shape
        out.extend(replace(item, box=box) for box in _boxes(shapes[key], tiles))
    return out


def stack_records(items) -> list[dict]:
    """One record per stack (and channel) the items come from: what it was read as.

    Checkpoints keep these, so a later prediction can say when it reads another channel.
    """
    records: dict[tuple, dict] = {}
    for it in items:
        record = records.setdefault((it.stack, it.channel), {
            "stack": it.stack, "channel": it.channel, "channel_desc": it.channel_desc,
            "frame_interval_h": it.frame_interval_h, "onset_h": None,
        })
        if it.onset_h is not None:
            record["onset_h"] = it.onset_h
    return list(records.values())


def items_time_policy(
    items, clamp: tuple[float, float] = DEFAULT_CLAMP, onset_h: float | None = None,
    frame_interval_h: float | None = None,
) -> TimePolicy:
    """The one frame interval and onset a checkpoint stores, as the items' stacks give them.

    A stack whose rows disagree is refused (one stack has one clock); stacks that differ
    from each other need the value given (``onset_h``, ``frame_interval_h``), since one
    checkpoint holds one; each stack's own is kept in :func:`stack_records` anyway.
    """
    per_stack: dict[str, tuple[set, set]] = {}
    for it in items:
        intervals, onsets = per_stack.setdefault(it.stack, (set(), set()))
        intervals.add(round(it.frame_interval_h, 9))
        if it.onset_h is not None:
            onsets.add(round(it.onset_h, 9))
    for stack, (intervals, onsets) in per_stack.items():
        for what, values in (("frame intervals", intervals), ("infection onsets", onsets)):
            if len(values) > 1:
                raise LabelTableError(
                    f"the rows of {stack} give different {what} "
                    f"({', '.join(f'{v:g} h' for v in sorted(values))}); one stack has one "
                    "clock: make its rows agree"
                )

    def one(values_of, given, what, option):
        if given is not None:
            return float(given)
        found = {s: v for s, vals in per_stack.items() for v in values_of(vals)}
        if len(set(found.values())) > 1:
            shown = "; ".join(f"{Path(s).name}: {v:g} h" for s, v in sorted(found.items()))
            raise LabelTableError(
                f"the stacks have different {what} ({shown}); a checkpoint holds one "
                f"(each stack's own is recorded in it too): give it explicitly ({option})"
            )
        return next(iter(found.values()), None)

    interval = one(lambda v: v[0], frame_interval_h, "frame intervals", "CLI: --frames-per-hour")
    onset = one(lambda v: v[1], onset_h, "infection onsets", "CLI: --onset")
    return TimePolicy(
        frame_interval_h=DEFAULT_FRAME_INTERVAL_H if interval is None else interval,
        onset_h=DEFAULT_ONSET_H if onset is None else onset,
        clamp=tuple(clamp),
    )


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
            "channel": pd.array([it.channel for it in items], dtype="Int64"),
            "channel_desc": [it.channel_desc for it in items],
            "frame_interval_h": np.array([it.frame_interval_h for it in items], dtype=np.float64),
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
    # Imported here: prediction, which imports this module, needs no scikit-learn.
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

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

"""The per-image annotation store: what a user labelled on one time-lapse stack.

One store holds the stack's condition (infected with an onset, or mock; frame interval),
per-frame labels and per-crop labels. It converts to and from the core label table
(:mod:`.labels`), checks labels against the condition and each other, and saves itself
atomically to a sidecar JSON file tied to the image, so reopening the image brings the
labels back. Qt-free: the annotation widget drives it, tests use it directly.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_text_atomic
from .labels import BOX_COLUMNS, LABEL_COLUMNS, LABEL_VALUES, empty_label_table, normalize_labels
from .targets import DEFAULT_CLAMP, DEFAULT_FRAME_INTERVAL_H, DEFAULT_ONSET_H, time_target

SIDECAR_SUFFIX = ".infection-clock.json"
SIDECAR_FORMAT = "napari-infection-clock/annotations/1"
#: Stack conditions: unknown until the user says, then infected (with an onset) or mock.
CONDITIONS = ("unknown", "infected", "mock")

Box = tuple[int, int, int, int]
#: How many changes a store can undo.
UNDO_DEPTH = 100


class AnnotationError(ValueError):
    """An annotation the store refuses (the message says what to change)."""


@dataclass(frozen=True)
class Issue:
    """One consistency flag: which frame (and box) and what is wrong."""

    frame: int
    box: Box | None
    message: str

    def __str__(self) -> str:
        where = f"frame {self.frame}" + (f" box {self.box}" if self.box else "")
        return f"{where}: {self.message}"


def _undoable(method):
    """Remember the labels and condition before ``method`` changes them, so that
    :meth:`AnnotationStore.undo` can bring them back. A call that fails changes nothing
    (the store is put back as it was); one that changes nothing leaves no undo step.
    Nested calls make one step."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self._undo_depth:
            return method(self, *args, **kwargs)
        before = self._state()
        self._undo_depth += 1
        try:
            result = method(self, *args, **kwargs)
        except Exception:
            self._restore(before)
            raise
        finally:
            self._undo_depth -= 1
        if self._state() != before:
            self._history.append(before)
            del self._history[:-UNDO_DEPTH]
        return result

    return wrapper


@dataclass
class AnnotationStore:
    """Labels of one stack. ``stack`` is the image file's absolute path; ``channel`` the
    channel of a multichannel file the labels train on (the layer they were made on)."""

    stack: str
    n_frames: int
    frame_shape: tuple[int, int] | None = None
    channel: int | None = None
    condition: str = "unknown"
    onset_h: float = DEFAULT_ONSET_H
    frame_interval_h: float = DEFAULT_FRAME_INTERVAL_H
    frames: dict[int, str] = field(default_factory=dict)
    crops: dict[tuple[int, Box], str] = field(default_factory=dict)
    _history: list[tuple] = field(default_factory=list, init=False, repr=False, compare=False)
    _undo_depth: int = field(default=0, init=False, repr=False, compare=False)

    def snapshot(self) -> AnnotationStore:
        """A copy of the labels and condition (no undo history), for a run to read on
        another thread while the user goes on labelling."""
        return replace(self, frames=dict(self.frames), crops=dict(self.crops))

    # --- undo ------------------------------------------------------------------------
    def _state(self) -> tuple:
        return (self.condition, self.onset_h, self.frame_interval_h, dict(self.frames),
                dict(self.crops))

    @property
    def can_undo(self) -> bool:
        return bool(self._history)

    def undo(self) -> bool:
        """Take back the last change of labels or condition; False when there is none."""
        if not self._history:
            return False
        self._restore(self._history.pop())
        return True

    def _restore(self, state: tuple) -> None:
        condition, onset, interval, frames, crops = state
        self.condition, self.onset_h, self.frame_interval_h = condition, onset, interval
        self.frames, self.crops = dict(frames), dict(crops)

    def forget_history(self) -> None:
        """Start the undo history afresh (a store just read from its file)."""
        self._history.clear()

    # --- condition -------------------------------------------------------------------
    def relabelled_by(self, condition: str, onset_h: float | None = None,
                      frame_interval_h: float | None = None) -> int:
        """How many labels would change meaning under a new condition: their time target
        changes, or they start or stop contradicting it. 0 for an unlabelled stack."""
        trial = copy.deepcopy(self)
        trial.set_condition(condition, onset_h, frame_interval_h)

        def meaning(store):
            flagged = {(i.frame, i.box) for i in store.issues()}
            rows = [(f, None, lab) for f, lab in store.frames.items()]
            rows += [(f, box, lab) for (f, box), lab in store.crops.items()]
            return {(f, box): (store.target(f, lab), (f, box) in flagged) for f, box, lab in rows}

        before, after = meaning(self), meaning(trial)
        return sum(before[key] != after[key] for key in before)

    @_undoable
    def set_condition(self, condition: str, onset_h: float | None = None,
                      frame_interval_h: float | None = None) -> None:
        """Set the stack's condition; an onset must lie inside the stack's time span."""
        if condition not in CONDITIONS:
            raise AnnotationError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        interval = self.frame_interval_h if frame_interval_h is None else float(frame_interval_h)
        if not (np.isfinite(interval) and interval > 0):
            raise AnnotationError(f"frame interval must be a positive number of hours, got {interval}")
        onset = self.onset_h if onset_h is None else float(onset_h)
        last_h = (self.n_frames - 1) * interval
        if condition == "infected" and not (np.isfinite(onset) and 0 <= onset <= last_h):
            raise AnnotationError(
                f"onset {onset:g} h lies outside the stack: its {self.n_frames} frames span "
                f"0-{last_h:g} h at {interval:g} h per frame; give an onset inside that range"
            )
        self.condition, self.onset_h, self.frame_interval_h = condition, onset, interval

    def hours(self, frame) -> np.ndarray | float:
        hours = np.asarray(frame, dtype=np.float64) * self.frame_interval_h
        return float(hours) if hours.ndim == 0 else hours

    def target(self, frame: int, label: str) -> float:
        """The SPEC 3 time target a label gives this frame (shown next to the label)."""
        infected = label == "infected"
        onset = self.onset_h if infected else 0.0
        return float(time_target(self.hours(frame), infected, onset, DEFAULT_CLAMP))

    # --- labels ----------------------------------------------------------------------
    def _check_frame(self, frame: int) -> int:
        frame = int(frame)
        if not 0 <= frame < self.n_frames:
            raise AnnotationError(
                f"frame {frame} is outside the stack (frames 0..{self.n_frames - 1})"
            )
        return frame

    @staticmethod
    def _check_label(label: str | None) -> str | None:
        if label is not None and label not in LABEL_VALUES:
            raise AnnotationError(f"label must be one of {LABEL_VALUES} or None, got {label!r}")
        return label

    @_undoable
    def label_frames(self, frames, label: str | None) -> None:
        """Label frames ("infected"/"uninfected"), or clear them with ``None``."""
        label = self._check_label(label)
        checked = [self._check_frame(f) for f in np.atleast_1d(frames)]
        for f in checked:
            if label is None:
                self.frames.pop(f, None)
            else:
                self.frames[f] = label

    @_undoable
    def set_frame_crops(self, frame: int, crops: dict[Box, str]) -> None:
        """Replace the crop labels of one frame (what the Shapes layer shows for it)."""
        frame = self._check_frame(frame)
        for box, label in crops.items():
            self._check_label(label)
            y0, x0, y1, x1 = box
            if not (y1 > y0 and x1 > x0 and y0 >= 0 and x0 >= 0):
                raise AnnotationError(f"crop {box} is empty or starts outside the frame")
        self.crops = {k: v for k, v in self.crops.items() if k[0] != frame}
        self.crops.update({(frame, tuple(int(v) for v in box)): lab for box, lab in crops.items()})

    @_undoable
    def set_all_crops(self, crops: dict[tuple[int, Box], str]) -> None:
        self.crops = {}
        by_frame: dict[int, dict[Box, str]] = {}
        for (frame, box), label in crops.items():
            by_frame.setdefault(int(frame), {})[tuple(box)] = label
        for frame, boxes in by_frame.items():
            self.set_frame_crops(frame, boxes)

    def counts(self) -> dict[str, dict[str, int]]:
        """Labels per class, for frames and for crops."""
        return {
            kind: {lab: sum(v == lab for v in values.values()) for lab in LABEL_VALUES}
            for kind, values in (("frames", self.frames), ("crops", self.crops))
        }

    @property
    def empty(self) -> bool:
        return not self.frames and not self.crops

    # --- consistency -----------------------------------------------------------------
    def issues(self) -> list[Issue]:
        """Labels that contradict the condition or each other."""
        out: list[Issue] = []
        labelled = [(f, None, lab) for f, lab in self.frames.items()]
        labelled += [(f, box, lab) for (f, box), lab in self.crops.items()]
        for frame, box, label in sorted(labelled, key=lambda r: (r[0], r[1] or ())):
            if label == "infected" and self.condition == "mock":
                out.append(Issue(frame, box, "labelled infected in a mock stack"))
            elif label == "infected" and self.condition == "infected" and (
                self.hours(frame) < self.onset_h
            ):
                out.append(Issue(frame, box, f"labelled infected at {self.hours(frame):g} h, "
                                             f"before the onset at {self.onset_h:g} h"))
            elif label == "infected" and self.condition == "unknown":
                out.append(Issue(frame, box, "labelled infected, but the stack's condition "
                                             "(and so its onset) is not set"))
        infected = sorted(f for f, lab in self.frames.items() if lab == "infected")
        if self.condition != "mock" and infected:
            for frame in sorted(f for f, lab in self.frames.items() if lab == "uninfected"):
                if frame > infected[0]:
                    out.append(Issue(frame, None, f"labelled uninfected after frame "
                                                  f"{infected[0]} was labelled infected"))
        return out

    # --- label table -----------------------------------------------------------------
    def to_label_table(self) -> pd.DataFrame:
        """The labels as rows of the core label table (infected rows carry the onset)."""
        rows = []
        for frame, label in sorted(self.frames.items()):
            rows.append(self._row(frame, None, label))
        for (frame, box), label in sorted(self.crops.items()):
            rows.append(self._row(frame, box, label))
        if not rows:
            return empty_label_table()
        return normalize_labels(pd.DataFrame(rows, columns=LABEL_COLUMNS))

    def _row(self, frame: int, box: Box | None, label: str) -> list:
        onset = self.onset_h if self.condition == "infected" or label == "infected" else np.nan
        return [self.stack, frame, *(box or (pd.NA,) * 4), label, onset, self.frame_interval_h,
                self.channel]

    @_undoable
    def merge_label_table(self, df: pd.DataFrame) -> int:
        """Take this stack's rows of a label table (import); returns how many were taken.

        The onset and frame interval of its infected rows set the condition when the
        store has none yet.
        """
        df = normalize_labels(df)
        mine = df[[_same_file(s, self.stack) for s in df["stack"]]]
        for row in mine.itertuples(index=False):
            self._check_frame(row.frame)
        chosen = {c for c in mine["channel"] if isinstance(c, int)}
        if self.channel is None and len(chosen) == 1:
            self.channel = chosen.pop()
        for row in mine.itertuples(index=False):
            if pd.notna(row.y0):
                box = tuple(int(getattr(row, c)) for c in BOX_COLUMNS)
                self.crops[(int(row.frame), box)] = row.label
            else:
                self.frames[int(row.frame)] = row.label
        infected = mine[mine["label"] == "infected"]
        if self.condition == "unknown" and len(infected):
            interval = infected["frame_interval_h"].dropna()
            self.set_condition("infected", float(infected["onset_h"].iloc[0]),
                               float(interval.iloc[0]) if len(interval) else None)
        return len(mine)

    # --- sidecar ---------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "format": SIDECAR_FORMAT,
            "stack": self.stack,
            "n_frames": self.n_frames,
            "frame_shape": list(self.frame_shape) if self.frame_shape else None,
            "channel": self.channel,
            "condition": self.condition,
            "onset_h": self.onset_h,
            "frame_interval_h": self.frame_interval_h,
            "frames": [{"frame": f, "label": lab} for f, lab in sorted(self.frames.items())],
            "crops": [{"frame": f, "box": list(b), "label": lab}
                      for (f, b), lab in sorted(self.crops.items())],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str, stack: str | None = None) -> AnnotationStore:
        d = json.loads(text)
        if d.get("format") != SIDECAR_FORMAT:
            raise AnnotationError(f"not an infection-clock annotation file (format {d.get('format')!r})")
        store = cls(stack=stack or d["stack"], n_frames=int(d["n_frames"]),
                    frame_shape=tuple(d["frame_shape"]) if d.get("frame_shape") else None,
                    channel=d.get("channel"))
        store.set_condition(d["condition"], d["onset_h"], d["frame_interval_h"])
        for row in d["frames"]:
            store.label_frames(row["frame"], row["label"])
        store.set_all_crops({(r["frame"], tuple(r["box"])): r["label"] for r in d["crops"]})
        store.forget_history()
        return store

    def save(self, path) -> Path:
        """Write the sidecar atomically; the previous file survives any failure."""
        return write_text_atomic(path, self.to_json())


def sidecar_path(stack, project_dir=None) -> Path:
    """``<image>.infection-clock.json`` next to the image, or in ``project_dir`` with a
    short hash of the image's full path, so two images of the same name never collide."""
    stack = Path(stack).resolve()
    if project_dir is None:
        return stack.with_name(stack.name + SIDECAR_SUFFIX)
    digest = hashlib.sha1(str(stack).encode()).hexdigest()[:8]
    return Path(project_dir) / f"{stack.name}.{digest}{SIDECAR_SUFFIX}"


def open_annotations(stack, n_frames: int, frame_shape=None, project_dir=None,
                     frame_interval_h: float | None = None) -> tuple[AnnotationStore, Path]:
    """The stack's saved annotations when its sidecar exists, else a new store.

    A sidecar written for a stack with another frame count is refused rather than applied
    to the wrong frames.
    """
    stack = str(Path(stack).resolve())
    path = sidecar_path(stack, project_dir)
    if path.is_file():
        try:
            store = AnnotationStore.from_json(path.read_text(encoding="utf-8"), stack=stack)
        except (ValueError, KeyError, TypeError) as exc:
            raise AnnotationError(f"cannot read the annotations in {path}: {exc}. Move the "
                                  "file away to start over; it is left untouched") from exc
        if store.n_frames != n_frames:
            raise AnnotationError(
                f"{path} was written for a stack of {store.n_frames} frames, but this image "
                f"has {n_frames}; it is left untouched (choose another project folder)"
            )
        return store, path
    store = AnnotationStore(stack=stack, n_frames=int(n_frames),
                            frame_shape=tuple(frame_shape) if frame_shape else None)
    if frame_interval_h:
        store.set_condition("unknown", frame_interval_h=frame_interval_h)
        store.forget_history()
    return store, path


def labelled_stores(stores) -> list[AnnotationStore]:
    """The stores a training or a label export reads: those with labels and a file (labels
    of an image with no file stay in memory: :func:`labels_left_out`)."""
    return [s for s in stores if not s.empty and not s.stack.startswith("memory:")]


def labels_left_out(stores) -> str:
    """What :func:`.retrain.labels_of` leaves out, said for the user ("" when nothing): labels of
    images with no file, kept in memory until a project folder is chosen."""
    n = sum(len(s.frames) + len(s.crops) for s in stores if s.stack.startswith("memory:"))
    if not n:
        return ""
    return (f"{n} label{'s' * (n != 1)} of images with no file left out: choose a project "
            "folder in the annotation dock to save them")


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()

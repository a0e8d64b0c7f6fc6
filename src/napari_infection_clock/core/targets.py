"""The class-conditional time target (SPEC section 3) and the frame policy (SPEC 6) that
gives frames their targets, defined once for the whole package.

numpy only: the command line's options take their defaults from here before any command runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # both import this module
    from .checkpoint import CheckpointMeta
    from .stack import TimelapseStack

INFECTED = 1
UNINFECTED = 0
CLASS_NAMES = ("uninfected", "infected")

#: What the regression output means, by predicted (or true) class.
TIME_MEANING = {INFECTED: "infection_duration", UNINFECTED: "experiment_time"}

DEFAULT_FRAME_INTERVAL_H = 0.5
DEFAULT_ONSET_H = 1.0
DEFAULT_CLAMP = (0.0, 48.0)


@dataclass(frozen=True)
class TimePolicy:
    """How frame indices become hours and hours become time targets."""

    frame_interval_h: float = DEFAULT_FRAME_INTERVAL_H
    onset_h: float = DEFAULT_ONSET_H
    clamp: tuple[float, float] = DEFAULT_CLAMP
    start_offset_h: float = 0.0

    def __post_init__(self):
        if not self.frame_interval_h > 0:
            raise ValueError(
                f"frame interval must be positive hours, got {self.frame_interval_h!r}"
            )
        lo, hi = self.clamp
        if not hi > lo:
            raise ValueError(f"clamp range must be (low, high) with high > low, got {self.clamp!r}")

    def hours(self, frame):
        """Hours since experiment start for frame index (scalar or array)."""
        return np.asarray(frame, dtype=np.float64) * self.frame_interval_h + self.start_offset_h

    def time_target(self, frame, infected):
        """Infection duration for infected items, experiment time for mock ones, clamped."""
        return time_target(self.hours(frame), infected, self.onset_h, self.clamp)


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


def time_target(hours, infected, onset_h: float, clamp=DEFAULT_CLAMP):
    """SPEC 3: infected -> max(t - onset, 0); uninfected -> t; both clamped to ``clamp``."""
    hours = np.asarray(hours, dtype=np.float64)
    infected = np.asarray(infected).astype(bool)
    target = np.where(infected, np.maximum(hours - onset_h, 0.0), hours)
    return np.clip(target, clamp[0], clamp[1])


def onset_estimate(hours, duration):
    """For items classified infected: the onset the prediction implies, ``t - duration``."""
    return np.asarray(hours, dtype=np.float64) - np.asarray(duration, dtype=np.float64)


def frame_time_policy(stack: TimelapseStack, meta: CheckpointMeta) -> TimePolicy:
    """The stack's own frame interval when it has one (metadata or user), else the checkpoint's."""
    interval = (
        stack.frame_interval_h
        if stack.frame_interval_source in ("metadata", "user")
        else meta.time.frame_interval_h
    )
    return TimePolicy(
        frame_interval_h=interval,
        onset_h=meta.time.onset_h,
        clamp=meta.time.clamp,
        start_offset_h=getattr(stack, "start_offset_h", 0.0),
    )

"""The class-conditional time target (SPEC section 3), defined once for the whole package."""

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

"""Session state shared by the dock widgets of one viewer, with change signals.

The prediction widget, the training widget and the plot dock each hold a reference to
the same :class:`Session`; they observe its signals instead of calling each other, and
tests drive the state directly.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from psygnal import Signal

from ..core.checkpoint import CheckpointMeta
from ..core.model import MultitaskResNet


@dataclass
class SessionModel:
    """The model predictions use: a loaded checkpoint or one trained in this session."""

    model: MultitaskResNet
    meta: CheckpointMeta
    path: Path | None = None
    origin: str = "checkpoint"  # or "trained in this session"

    @property
    def description(self) -> str:
        where = self.path.name if self.path else "not saved"
        return f"{self.meta.model.arch} ({self.origin}: {where})"


class Session:
    """What one viewer's widgets share."""

    model_changed = Signal(object)  # SessionModel | None
    results_changed = Signal(str)  # name of the image layer whose prediction table changed

    def __init__(self):
        self.model: SessionModel | None = None
        self.results: dict[str, pd.DataFrame] = {}

    def set_model(self, model: SessionModel | None) -> None:
        self.model = model
        self.model_changed.emit(model)

    def set_results(self, image_name: str, table: pd.DataFrame) -> None:
        self.results[image_name] = table
        self.results_changed.emit(image_name)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer) -> Session:
    """The one :class:`Session` of ``viewer`` (created on first use)."""
    if viewer not in _SESSIONS:
        _SESSIONS[viewer] = Session()
    return _SESSIONS[viewer]

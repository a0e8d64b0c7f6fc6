"""Session state shared by the dock widgets of one viewer, with change signals.

The docks each hold a reference to the same :class:`Session`; they observe its signals
instead of calling each other. The session follows the viewer's layer list and says which
image the user is looking at (:attr:`Session.image`, :attr:`Session.image_changed`), so
every dock serves that image, not the first one it saw. Images are known by their id
(:func:`.layer_roles.image_id`), never by name: the user may rename one in the layer list,
and the layers made for it follow the new name. When an image is removed, the layers the
plugin made for it go too (its labels stay).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from psygnal import Signal
from qtpy.QtCore import QTimer

from ..core.annotations import AnnotationStore
from ..core.calibration import ClockInterval
from .activity_indicator import stopped_when_idle
from .colorbars import show_for_image_in_view
from .gc_freeze import thaw
from .gl_context import make_canvas_context_current
from .layer_roles import (
    IMAGE_ID,
    OUTPUT_OF,
    annotation_key,
    image_id,
    image_in_view,
    input_images,
    is_input_image,
    is_output_of,
    renew_image_id,
)

if TYPE_CHECKING:  # torch's side, loaded on a thread when the first dock opens (torch_ahead)
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


@dataclass(frozen=True)
class PredictionRun:
    """How an image's prediction table was made: what the plot and exports need to put
    its frames on the time axis and to say what its items are."""

    n_frames: int
    frame_interval_h: float = 1.0
    onset_h: float | None = None
    start_offset_h: float = 0.0
    mode: str = ""
    #: The id of the Shapes layer whose rectangles were predicted (regions mode), else
    #: None: the same id an image has (:func:`.layer_roles.image_id`), which a new name
    #: leaves as it is.
    regions_id: str | None = None
    #: The level of the model's calibrated intervals, None when it has none.
    interval_level: float | None = None
    #: What the model's consistent-clock intervals are (core.calibration.clock_interval);
    #: None: not said (the plot then draws them as they are).
    clock_interval: ClockInterval | None = None

    @property
    def regions(self) -> bool:
        return self.regions_id is not None or self.mode.startswith("regions")

    def hours_of(self, frame):
        return frame * self.frame_interval_h + self.start_offset_h


class Session:
    """What one viewer's widgets share."""

    model_changed = Signal(object)  # SessionModel | None
    results_changed = Signal(str)  # id of the image whose prediction table changed
    prediction_requested = Signal()  # "predict again with the session model" (after training)
    labels_changed = Signal(str)  # stack path whose annotations changed or were read back
    image_changed = Signal(object)  # the image layer the user looks at now, or None
    image_renamed = Signal(object)  # an image layer the user gave a new name

    def __init__(self, viewer=None):
        self.model: SessionModel | None = None
        #: Per image id (:func:`.layer_roles.image_id`): its prediction table.
        self.results: dict[str, pd.DataFrame] = {}
        #: Per image id: how its table was made.
        self.runs: dict[str, PredictionRun] = {}
        #: Per image id: the image's name, as last seen (also once it is removed).
        self.names: dict[str, str] = {}
        #: Per stack path (or ``memory:ID``): its labels; training reads all of them.
        self.annotations: dict[str, AnnotationStore] = {}
        #: The validation items of the last training run, for the evaluation dock.
        self.validation_items: list = []
        #: The image the user looks at (see :func:`.layer_roles.image_in_view`), or None
        #: with :attr:`image_reason` saying why.
        self.image = None
        self.image_reason = "no viewer"
        self._viewer = weakref.ref(viewer) if viewer is not None else None
        self._removed_images: set[str] = set()
        if viewer is not None:
            self._follow(viewer)

    # --- the image in view -------------------------------------------------------------
    def _follow(self, viewer) -> None:
        layers = viewer.layers
        layers.selection.events.active.connect(self._update_image)
        layers.events.inserted.connect(self._layer_inserted)
        # before napari's own removal handler deletes the layer's GL objects
        layers.events.removing.connect(self._canvas_context_current)
        layers.events.removed.connect(self._layer_removed)
        layers.events.renamed.connect(self._layer_renamed)
        for layer in layers:
            self._know(layer, layers)
        self._update_image()

    def _layer_inserted(self, event) -> None:
        self._know(event.value, event.source)
        self._update_image()

    def _know(self, layer, layers) -> None:
        layer.events.visible.connect(self._update_image)
        if not is_input_image(layer):
            return
        key = layer.metadata.get(IMAGE_ID)
        if key and any(other is not layer and other.metadata.get(IMAGE_ID) == key
                       for other in layers):
            renew_image_id(layer)  # napari's "duplicate layer" copies the metadata
        self.names[image_id(layer)] = layer.name

    def _layer_renamed(self, event) -> None:
        """An image was renamed (in the layer list): the layers made for it that still
        carry its old name in theirs take the new one; a name the user chose stays."""
        viewer = self._viewer() if self._viewer is not None else None
        layer = viewer.layers[event.index] if viewer is not None else None
        if not is_input_image(layer):
            return
        key = image_id(layer)
        old, new = self.names.get(key), layer.name
        self.names[key] = new
        if old is None or old == new:
            return
        for output in [ly for ly in viewer.layers if is_output_of(ly, layer)]:
            if output.name.startswith(f"{old} "):
                output.name = new + output.name[len(old):]
        self.image_renamed.emit(layer)

    def _canvas_context_current(self, event=None) -> None:
        viewer = self._viewer() if self._viewer is not None else None
        if viewer is not None:
            make_canvas_context_current(viewer)

    def _layer_removed(self, event) -> None:
        thaw()  # the layer (and its data) may be frozen: let the collector have it
        if is_input_image(event.value):
            self._removed_images.add(image_id(event.value))
            # in the next turn: the trash button removes the selection in a loop
            QTimer.singleShot(0, self._remove_orphans)
        self._update_image()

    def _remove_orphans(self) -> None:
        """The layers made for a removed image (crops, labelled-frame outlines, prediction
        outputs, "label next" markers) go too. Its labels stay (on disk, and in
        :attr:`annotations`), so opening the image again brings them back; its prediction
        table stays in :attr:`results`. Run after napari's removal is over: the trash
        button removes the selection in a loop, which may hold some of these layers."""
        viewer = self._viewer() if self._viewer is not None else None
        gone, self._removed_images = self._removed_images, set()
        if viewer is None:
            return
        gone -= {image_id(layer) for layer in input_images(viewer)}  # put back meanwhile
        for layer in [ly for ly in viewer.layers if ly.metadata.get(OUTPUT_OF) in gone]:
            viewer.layers.remove(layer)

    def _update_image(self, event=None) -> None:
        viewer = self._viewer() if self._viewer is not None else None
        if viewer is None:
            return
        image, reason = image_in_view(viewer)
        self.image_reason = reason
        if image is not self.image:
            self.image = image
            show_for_image_in_view(viewer)
            self.image_changed.emit(image)

    def set_model(self, model: SessionModel | None) -> None:
        self.model = model
        self.model_changed.emit(model)

    def labels_of(self, image) -> AnnotationStore | None:
        """The labels of ``image`` (a layer) read so far; None without an image or labels."""
        return self.annotations.get(annotation_key(image)) if image is not None else None

    def name_of(self, key: str) -> str:
        """The name the image of id ``key`` had when last seen (the id if never seen)."""
        return self.names.get(key, key)

    def set_results(self, image, table: pd.DataFrame, run: PredictionRun | None = None) -> None:
        """``image``'s (a layer's) prediction table, and how it was made."""
        key = image_id(image)
        self.names[key] = image.name
        self.results[key] = table
        if run is not None:
            self.runs[key] = run
        self.results_changed.emit(key)

    def request_prediction(self) -> bool:
        """Ask the prediction widget to run again with :attr:`model`; False if none listens."""
        if len(self.prediction_requested) == 0:
            return False
        self.prediction_requested.emit()
        return True


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer) -> Session:
    """The one :class:`Session` of ``viewer`` (created on first use).

    napari hands dock widgets a proxy of the viewer, a new one per widget; the session is
    keyed by the viewer behind it so that all widgets of one viewer share it.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    if viewer not in _SESSIONS:
        _SESSIONS[viewer] = Session(viewer)
        stopped_when_idle(viewer)  # napari's GIF would repaint the window for ever
    return _SESSIONS[viewer]

"""A readout on the canvas: the current time in hours, and the tile under the cursor.

napari's slider counts frames and its status bar shows only the active layer's raw value;
the readout (napari's text overlay, bottom left, just above the slider) says in hours where
the slider is, and for the tile under the mouse its p(infected), class, duration and onset
(the tile's fitted onset once the run's clocks are in, as the onset map says), or that it
had no information (core.information).
"""

from __future__ import annotations

import math

import numpy as np

from ..core.information import NO_INFORMATION, NO_INFORMATION_LABEL
from ..core.targets import INFECTED
from .overlays import CLASS_LABEL, CLASS_NAME, PredictionLayers, frame_in_view


def text_overlay(viewer):
    """napari's text overlay on the canvas: ``viewer.canvas.overlays.text`` (napari 0.9,
    which deprecated ``viewer.text_overlay``), else ``viewer.text_overlay``."""
    overlay = getattr(getattr(getattr(viewer, "canvas", None), "overlays", None), "text", None)
    return overlay if overlay is not None else viewer.text_overlay


def show_text_overlay(viewer) -> None:
    """napari's text overlay where and as the readout shows it, visible (napari makes its
    visual the first time it is visible, some 70 ms of the GUI thread, and vispy builds its
    shaders at its first draw, 130 ms: both done ahead by ``ui.glyphs``, with a blank text)."""
    overlay = text_overlay(viewer)
    overlay.position = "bottom_left"
    overlay.font_size = 10
    overlay.visible = True


class Readout:
    """Keeps napari's text overlay (:func:`text_overlay`) up to date for one run's output
    layers."""

    def __init__(self, viewer, layers: PredictionLayers, frame_interval_h: float,
                 start_offset_h: float = 0.0):
        self.viewer = viewer
        self.layers = layers
        self.interval = float(frame_interval_h)
        self.offset = float(start_offset_h)
        self._cursor = None
        show_text_overlay(viewer)
        viewer.dims.events.current_step.connect(self.update)
        viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self.update()

    def close(self) -> None:
        """Stop updating (a new run, or the dock went away); the text stays as it was."""
        self.viewer.dims.events.current_step.disconnect(self.update)
        if self._on_mouse_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_mouse_move)

    def _on_mouse_move(self, viewer, event) -> None:
        self._cursor = tuple(event.position)
        self.update()

    def frame(self) -> int:
        return frame_in_view(self.viewer, self.layers.image)

    def hours(self, frame: int) -> float:
        return frame * self.interval + self.offset

    def text(self) -> str:
        frame = self.frame()
        lines = [f"t = {self.hours(frame):.2f} h  (frame {frame} of {self.layers.n_frames})"]
        tile = self.tile_text()
        if tile:
            lines.append(tile)
        return "\n".join(lines)

    def tile_text(self) -> str:
        """p(infected), class, duration and onset of the cell under the cursor ('' if none)."""
        layers = self.layers
        if self._cursor is None or not layers.ready:
            return ""
        ndim = layers.probability.ndim
        position = np.asarray(self._cursor[-ndim:], float)
        cell = np.round(layers.probability.world_to_data(position)).astype(int)
        frame, row, col = int(cell[0]), int(cell[-2]), int(cell[-1])
        shape = layers.probability.data.shape
        if not (0 <= frame < shape[0] and 0 <= row < shape[1] and 0 <= col < shape[2]):
            return ""
        p = float(layers.probability.data[frame, row, col])
        label = int(layers.classes.data[frame, row, col])
        if label == CLASS_LABEL[NO_INFORMATION]:
            return f"{NO_INFORMATION_LABEL}: a flat or too small crop, not answered"
        if math.isnan(p):
            return ""
        text = f"p(infected) {p:.2f} · {CLASS_NAME.get(label, 'not predicted')}"
        infected = label == CLASS_LABEL[INFECTED]
        if infected:
            duration = float(layers.duration.data[frame, row, col])
            text += f" · infected for {duration:.1f} h"
        if layers.clocks_in:  # the tile's fitted onset, as the onset map, table and plot say
            onset = float(layers.onset.data[row, col])
            text += f" · onset {onset:.1f} h" if math.isfinite(onset) else " · no onset"
        elif infected:  # the run is not over: this frame's own estimate
            text += f" · onset {self.hours(frame) - duration:.1f} h (this frame)"
        return text

    def update(self, *_) -> None:
        text_overlay(self.viewer).text = self.text()

"""The canvas font's glyphs, rendered one per timer tick before an overlay needs them, and
the readout's text overlay made ahead.

napari draws every text on the canvas (colorbar ticks, the readout) from one font atlas
per canvas and renders a glyph the first time a text shows it: a 256-point Qt rendering
and a signed-distance transform per character, 5-40 ms each on a 2-core machine. The
first colorbar and the readout's first paint rendered some thirty of them in one paint
(184 ms on an idle machine, over 500 ms under load). The prediction dock renders them
ahead, one per tick of a timer while the viewer idles: no paint then waits on more than
the glyph of a character outside :data:`CHARACTERS`.

The atlas is reached through napari's private Qt viewer (``window._qt_viewer``); where that
is missing (another napari), nothing is rendered ahead and the first paints do it as before.
"""

from __future__ import annotations

import contextlib

from qtpy.QtCore import QObject, QTimer

from .gl_context import napari_canvas
from .readout import show_text_overlay, text_overlay

#: What the readout (ui.readout) and the colorbars' tick labels show.
CHARACTERS = "0123456789.-+=()·:,% abcdefghijklmnopqrstuvwxyz"
#: Milliseconds between two glyphs (each is one short turn of the GUI thread).
STEP_MS = 40


def canvas_font(viewer):
    """The font napari's canvas texts are drawn with (its glyph atlas), or None."""
    canvas = napari_canvas(viewer)
    with contextlib.suppress(AttributeError, TypeError, RuntimeError):
        info = canvas.font_info()
        return info.font_manager.get_font(info.face)
    return None


class GlyphsAhead(QObject):
    """Renders :data:`CHARACTERS` into ``viewer``'s canvas font, one per timer tick, then
    has napari make the readout's text overlay (``readout.show_text_overlay``, while it
    shows nothing: an overlay the user or another plugin shows is left alone); a child of
    ``parent`` (the dock), so it stops if the dock goes first."""

    def __init__(self, viewer, parent: QObject):
        super().__init__(parent)
        self._viewer = viewer
        self._font = canvas_font(viewer)
        self._left = list(CHARACTERS) if self._font is not None else []
        self._timer = QTimer(self)
        self._timer.setInterval(STEP_MS)
        self._timer.timeout.connect(self._next)
        if self._left:
            self._timer.start()

    def _next(self) -> None:
        """Render the next glyph (the font keeps it: a later text finds it there)."""
        try:
            self._font[self._left.pop(0)]
        except (RuntimeError, ValueError):  # the atlas is full, the canvas is gone
            self._left = []
        if not self._left:
            self._timer.stop()
            overlay = text_overlay(self._viewer)
            if not (overlay.visible or overlay.text):
                show_text_overlay(self._viewer)
                overlay.text = " "  # drawn once, blank: its shaders built (130 ms) ahead too

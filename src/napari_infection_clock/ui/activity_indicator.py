"""napari's activity indicator (the "in progress" GIF in its status bar) stopped once no
progress is left.

napari starts the GIF when a progress bar appears (File > Open shows one, "Opening Files")
and stops it from the bar's ``destroyed`` signal, which PyQt6 does not deliver to it
(napari 0.9.2): the GIF then plays for the rest of the session, 33 frames a second, and
each frame repaints the window, on Mesa's software OpenGL most of a core of the GUI
thread. The check napari meant to run is run whenever a progress ends, here, for a viewer
with a dock of the plugin open.
"""

from __future__ import annotations

import contextlib
import weakref

from napari.utils import progress


def stopped_when_idle(viewer) -> None:
    """Stop ``viewer``'s activity indicator now if nothing is in progress, and whenever a
    progress ends (through napari's private activity dialog; nothing where it is missing)."""
    try:
        dialog = weakref.ref(viewer.window._qt_window._activity_dialog)
    except (AttributeError, RuntimeError):
        return
    instances = progress._all_instances

    def check(event=None) -> None:
        if event is not None and not event.removed:
            return
        shown = dialog()
        with contextlib.suppress(AttributeError, RuntimeError):  # closed: nothing to stop
            shown.maybe_hide_progress_indicator()
            return
        instances.events.changed.disconnect(check)

    instances.events.changed.connect(check)
    check()

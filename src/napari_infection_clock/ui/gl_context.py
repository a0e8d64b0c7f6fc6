"""The viewer canvas's GL widget: its context made current before a layer is removed, and
its repaint held to a later event-loop turn while hidden layers are made.

napari (0.9) flushes vispy's GL command queue as soon as a layer has been removed
(``VispyCanvas._clean_and_update_scenegraph``: ``gc.collect()`` then ``context.finish()``),
outside of any paint, so the ``glDelete*`` calls for the removed layer's buffers, textures
and programs run in whatever GL context happens to be current. After the window has been
composed that is Qt's compositor context, which shares the objects with the canvas's
context but not its bindings. On Mesa (llvmpipe) the canvas's next draws then used
objects freed behind its back: napari died with SIGSEGV in ``glDrawArrays`` when an
image was trashed and the layers made for it were removed before the canvas had redrawn
(issue 9). With the canvas's own context current the deletes happen where the objects are
bound, and nothing is left dangling.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from functools import partial

from qtpy.QtCore import QTimer

#: Milliseconds after making hidden layers that the canvas repaints (a turn of its own).
PAINT_AFTER_MS = 30
#: Seconds :func:`repaint_pending` waits at most for a repaint given back to be shown.
REPAINT_WAIT_S = 0.5

_given_back: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # canvas widget -> when
_watched: weakref.WeakSet = weakref.WeakSet()  # canvas widgets whose frames are followed


def napari_canvas(viewer):
    """``viewer``'s canvas (napari's VispyCanvas), or None for a viewer without a window or
    where napari's private Qt viewer is missing: the canvas is reached only through it."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # a dock gets a proxy of the viewer
    with contextlib.suppress(AttributeError, RuntimeError):
        return viewer.window._qt_viewer.canvas
    return None


def canvas_widget(viewer):
    """``viewer``'s canvas widget (vispy's QOpenGLWidget), or None (:func:`napari_canvas`)."""
    canvas = napari_canvas(viewer)
    with contextlib.suppress(AttributeError, RuntimeError):
        return canvas.native if canvas is not None else None
    return None


def make_canvas_context_current(viewer) -> None:
    """Make ``viewer``'s canvas GL context current (nothing for a viewer without a window,
    or while its canvas is not (or no longer) shown)."""
    widget = canvas_widget(viewer)
    with contextlib.suppress(AttributeError, RuntimeError):
        if widget is not None and widget.isValid():
            widget.makeCurrent()


@contextlib.contextmanager
def painted_later(viewer):
    """Make hidden layers without repainting the canvas in the same turn: napari asks for a
    repaint when a layer is added (50-130 ms on software OpenGL, nothing new to show), and
    with making the layer (100-200 ms) that was one long turn of the GUI thread. Updates of
    the canvas widget are held (Qt's ``setUpdatesEnabled``) and given back, with a repaint,
    :data:`PAINT_AFTER_MS` later."""
    widget = canvas_widget(viewer)
    if widget is None or not widget.updatesEnabled():
        yield
        return
    widget.setUpdatesEnabled(False)
    try:
        yield
    finally:
        QTimer.singleShot(PAINT_AFTER_MS, lambda: _paint_again(widget))


def _paint_again(widget) -> None:
    with contextlib.suppress(RuntimeError):  # the canvas went with its viewer
        widget.setUpdatesEnabled(True)
        widget.update()
        if widget not in _watched:  # forgotten again once the window shows the frame
            widget.frameSwapped.connect(partial(_shown, weakref.ref(widget)))
            _watched.add(widget)
        _given_back[widget] = time.monotonic()


def _shown(widget_ref) -> None:
    _given_back.pop(widget_ref(), None)


def repaint_pending(viewer) -> bool:
    """Whether ``viewer``'s canvas has a repaint held or given back but not yet shown
    (:func:`painted_later`; one given back is waited for :data:`REPAINT_WAIT_S` at most,
    and not at all while the canvas is not on screen: a hidden or minimised window shows
    none). A step that waits for it is not painted together with the one before it."""
    widget = canvas_widget(viewer)
    with contextlib.suppress(RuntimeError):
        if widget is None:
            return False
        if not widget.updatesEnabled():
            return True
        asked = _given_back.get(widget)
        return (asked is not None and time.monotonic() - asked < REPAINT_WAIT_S
                and _on_screen(widget))
    return False


def _on_screen(widget) -> bool:
    window = widget.window().windowHandle()
    return widget.isVisible() and window is not None and window.isExposed()

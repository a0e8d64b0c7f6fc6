"""Make the viewer canvas's GL context current before a layer is removed.

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


def make_canvas_context_current(viewer) -> None:
    """Make ``viewer``'s canvas GL context current (nothing for a viewer without a window,
    or while its canvas is not (or no longer) shown)."""
    window = getattr(viewer, "window", None)
    # private napari attribute: the canvas widget is reached only through the Qt viewer
    with contextlib.suppress(AttributeError, RuntimeError):
        widget = window._qt_viewer.canvas.native  # vispy's QOpenGLWidget
        if widget.isValid():
            widget.makeCurrent()

"""Run a dock's cleanup when the dock goes away.

napari's dock close button only un-parents the widget (no ``closeEvent``), and a magicgui
Container's Qt widget is made by magicgui, so an event filter on the Qt widget is the one
way that hears both a close and an un-parenting, for every kind of dock.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject


class _DockClosed(QObject):
    def __init__(self, widget, callback: Callable[[], None]):
        super().__init__(widget)
        self._callback = callback
        self._done = False
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        closed = event.type() == QEvent.Type.Close
        unparented = event.type() == QEvent.Type.ParentChange and obj.parent() is None
        if (closed or unparented) and not self._done:
            self._done = True
            self._callback()
        return False


def on_dock_closed(widget, callback: Callable[[], None]) -> None:
    """Call ``callback`` once, when ``widget`` (a QWidget) is closed or leaves its dock."""
    _DockClosed(widget, callback)

"""Python's full garbage collections, kept short while the docks are open.

With napari, Qt and torch loaded, Python's cyclic collector tracks some 600 000 objects; a
full collection scans them all with the GIL held (0.3-0.6 s on a 2-core machine) and comes
whenever the long-lived objects grew by a quarter, which making a run's output layers does:
the viewer froze in the middle of the first prediction. So when the plugin's views are first
imported (:func:`freeze_alive`), and again when the first dock is docked, everything alive
is frozen (:func:`gc.freeze`): later collections scan only what came after, the full ones
that the first dock's own imports set off (0.2 s) among them. Nothing is collected first:
that scan held the first dock's opening 0.2-0.4 s and found 7 unreachable objects, which
stay until the next thaw.

A frozen object is never collected, so the freeze is undone (:func:`thaw`) as soon as
something frozen may have become garbage that matters: a layer is removed (its data), or
one of the docks is closed (the viewer closing closes them). While a dock is open, what
survives a full collection is frozen too: the next one scans only what came after it.
"""

from __future__ import annotations

import contextlib
import gc
import weakref

from qtpy.QtCore import QEvent, QObject, QTimer

_docked: weakref.WeakSet = weakref.WeakSet()  # the plugin's docked widgets
_frozen = False


def freeze_alive() -> None:
    """Freeze what is alive now: later collections scan only what comes after it."""
    global _frozen
    gc.freeze()
    _frozen = True


def thaw(*_) -> None:
    """Give every frozen object back to the collector (safe to call any time)."""
    global _frozen
    if _frozen:
        gc.unfreeze()
        _frozen = False


def _after_collection(phase: str, info: dict) -> None:
    """Freeze what a full collection left, while a dock is open (on any thread): the next
    one scans only what came after it."""
    if phase == "stop" and info["generation"] == 2 and len(_docked):
        freeze_alive()


class _WhileDocked(QObject):
    def __init__(self, widget):
        super().__init__(widget)
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        closed = event.type() == QEvent.Type.Close
        if event.type() == QEvent.Type.ParentChange or closed:
            if obj.parent() is not None and not closed:
                if not len(_docked) and not _frozen:
                    freeze_alive()
                _docked.add(obj)
            elif obj in _docked:
                _docked.discard(obj)
                thaw()
        return False


def freeze_while_docked(widget) -> None:
    """Freeze what is alive once ``widget`` (a dock's Qt widget) is docked; thaw when it
    is closed or leaves its dock."""
    _WhileDocked(widget)


gc.callbacks.append(_after_collection)


@contextlib.contextmanager
def collected_after():
    """No automatic collection inside this block (a step that makes or shows a layer, which
    allocates enough to set off a full one, 50-80 ms, in its middle); one full collection in
    an event-loop turn of its own right after, which scans only what came since the last
    (what survives it is frozen, above)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:  # a timer, not a posted call: what fell due during the block goes first
        QTimer.singleShot(1, _collect)


def _collect() -> None:
    gc.enable()
    gc.collect()

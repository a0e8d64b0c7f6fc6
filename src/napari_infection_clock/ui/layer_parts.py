"""napari's Qt parts of a new layer: its canvas visual made in a later event-loop turn than
the layer itself, its controls only when napari shows them, and its visuals first drawn
one per turn.

Adding a layer makes, in the same turn, its canvas visual (vispy: 60-90 ms of the GUI
thread on a 2-core machine with software OpenGL) and its layer controls (Qt widgets: an
image's 70-90 ms, and as much again for the window's layout and repaint that follow),
through napari's callbacks on ``layers.events.inserted``. A run's output layers are added
with those two callbacks held back; :class:`LayerParts` makes the visual later, one per
call. Meanwhile napari's canvas leaves its scene as it is (it waits for every layer's
visual), and a selection or removal in the layer list makes the visuals first, since
napari expects them there. Visuals nobody asks for (the dock closed mid-run) are made
anyway, one a second. The controls are made when napari first looks them up to show
them, when the user picks the layer (:class:`ControlsWhenAsked`; a layer removed before
gets an empty widget to delete): a run no longer pays for controls nobody looks at.

A new layer's (or overlay's) first paint builds vispy's shaders for each visual it is
drawn with (15-100 ms a visual on software OpenGL: a Shapes layer has five, a colorbar
four); :func:`drawn_in_turns` shows them one per step instead of all in one paint, and
:func:`text_drawn_when_there_is_some` leaves a Shapes layer's text visual undrawn while
the layer has no text (napari draws it with an empty string: a text visual's first draw
is the costliest, and every paint draws it again).

Through napari's private Qt viewer (``window._qt_viewer``), its canvas and its layer
controls' table; where they are missing, layers are added with their parts and drawn
whole, as usual.
"""

from __future__ import annotations

import contextlib
import time
import weakref

from napari.layers.utils.string_encoding import ConstantStringEncoding
from napari.utils.events import Event
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from .gl_context import napari_canvas, painted_later

#: Milliseconds after which visuals nobody asked for are made, one per period.
UNATTENDED_MS = 1000


def _qt_viewer(viewer):
    """napari's Qt viewer (None without one); never held: it would outlive its closing."""
    with contextlib.suppress(AttributeError, RuntimeError):
        return viewer.window._qt_viewer
    return None


class ControlsWhenAsked(dict):
    """napari's table of layer controls (``QtLayerControlsContainer.widgets``), which makes
    a held-back layer's controls when napari first looks them up to show them (the user
    picked the layer). A held-back layer napari removes gets an empty widget to delete
    instead (removing an image removes its four output layers: 200-300 ms of controls
    made only to be deleted). Any other layer missing from it is missing, as in napari's
    own table."""

    def __init__(self, container, made: dict):
        super().__init__(made)
        self._container = weakref.ref(container)
        self.held_back: weakref.WeakSet = weakref.WeakSet()

    def __missing__(self, layer):
        container = self._container()
        if layer not in self.held_back or container is None:
            raise KeyError(layer)
        self.held_back.discard(layer)
        if layer in container.viewer.layers:
            container._add(Event("inserted", value=layer))  # adds itself to this table
        else:  # napari removes it (it looks the controls up once the layer is gone)
            self[layer] = QWidget()
        return dict.__getitem__(self, layer)


def _hold_back_controls(container, layer) -> None:
    """Have ``layer``'s controls made when napari first looks them up."""
    if not isinstance(container.widgets, ControlsWhenAsked):
        container.widgets = ControlsWhenAsked(container, container.widgets)
    container.widgets.held_back.add(layer)


class LayerParts:
    """Layers added through :meth:`adding` get their canvas visual from :meth:`make_next`
    (a turn of its own), and their controls when napari first looks them up."""

    def __init__(self, viewer):
        self._viewer = getattr(viewer, "__wrapped__", viewer)  # a dock gets a proxy
        self._pending: list = []  # layers still without their canvas visual; the maker is
        # looked up each time: holding it would hold napari's Qt viewer after it closed
        self._asked_at = time.monotonic()  # when make_next was last called

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    @contextlib.contextmanager
    def adding(self):
        """Add layers in this block without their canvas visual (made by :meth:`make_next`)
        and controls (made when napari looks them up)."""
        layers = self._viewer.layers
        inserted, added = layers.events.inserted, []

        def record(event) -> None:
            added.append(event.value)

        qt_viewer = _qt_viewer(self._viewer)
        if qt_viewer is None:  # layers made whole, as usual
            yield
            return
        makers = (qt_viewer._on_add_layer_change, qt_viewer.controls._add)
        for maker in makers:
            inserted.block(maker)
        inserted.connect(record)
        try:
            yield
        finally:
            inserted.disconnect(record)
            for maker in makers:
                inserted.unblock(maker)
            for layer in added:
                _hold_back_controls(qt_viewer.controls, layer)
            if added and not self._pending:
                layers.events.removing.connect(self.make_all, position="first")
                layers.selection.events.changed.connect(self.make_all, position="first")
                self._asked_at = time.monotonic()
                QTimer.singleShot(UNATTENDED_MS, self._unattended)
            self._pending += added

    def make_next(self) -> bool:
        """Make the next canvas visual (the canvas repainted a turn later); False if none was
        left."""
        self._asked_at = time.monotonic()
        if not self._pending:
            return False
        layer = self._pending.pop(0)
        if not self._pending:
            self._viewer.layers.events.removing.disconnect(self.make_all)
            self._viewer.layers.selection.events.changed.disconnect(self.make_all)
        qt_viewer = _qt_viewer(self._viewer)
        if layer in self._viewer.layers and qt_viewer is not None:
            with painted_later(self._viewer):
                qt_viewer._on_add_layer_change(Event("inserted", value=layer))
        return True

    def _unattended(self) -> None:
        """Make a visual if none was asked for in the last period: napari's canvas waits for
        every layer's visual."""
        if not self._pending:
            return
        if time.monotonic() - self._asked_at >= UNATTENDED_MS / 1000:
            self.make_next()
        QTimer.singleShot(UNATTENDED_MS, self._unattended)

    def make_all(self, event=None) -> None:
        """Make every visual now: napari is about to look for them (a layer is selected or
        removed)."""
        while self.make_next():
            pass


def _visuals(node) -> list:
    """The vispy visuals ``node`` is drawn with, in order: the subvisuals of a compound, the
    children of a plain node (a layer's overlays, children of its node, are not its own)."""
    if getattr(node, "_subvisuals", None):
        return [v for sub in node._subvisuals for v in _visuals(sub)]
    if hasattr(node, "_program"):
        return [node]
    return [v for child in getattr(node, "children", ()) for v in _visuals(child)]


def drawn_in_turns(viewer, layer, overlay=None) -> list:
    """Hide all but the first shown visual of ``layer``'s canvas visual (or of its
    ``overlay``'s) and return the steps that show them again, one each: each then has its
    first draw, and its shaders built, in a paint of its own."""
    canvas = napari_canvas(viewer)
    try:
        if overlay is None:
            node = canvas.layer_to_visual[layer].node
        else:
            node = canvas._layer_overlay_to_visual[layer][overlay].node
    except (AttributeError, KeyError, TypeError):
        return []
    later = [visual for visual in _visuals(node) if visual.visible][1:]
    for visual in later:
        visual.visible = False
    return [lambda visual=visual: setattr(visual, "visible", True) for visual in later]


def _has_text(layer) -> bool:
    text = layer.text
    empty = isinstance(text.string, ConstantStringEncoding) and text.string.constant == ""
    return bool(text.visible) and not empty


def text_drawn_when_there_is_some(viewer, layer) -> None:
    """Draw ``layer``'s (a Shapes layer's) text visual only while the layer has a text to
    show (given on the console, by another plugin, or shown in its controls)."""
    canvas = napari_canvas(viewer)
    try:
        node = canvas.layer_to_visual[layer].node.text
    except (AttributeError, KeyError, TypeError):
        return

    def follow(event=None) -> None:
        node.visible = _has_text(layer)

    layer.text.events.connect(follow)
    follow()

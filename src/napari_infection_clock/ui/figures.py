"""Docked figures and dock layout: one figure widget (canvas, toolbar), legends off the data,
scroll areas so that every dock fits one screen with the others.

As napari-matplotlib does, the plot, training and evaluation docks share one widget that
owns the figure, its Qt canvas and matplotlib's navigation toolbar (zoom, pan, save), with
sizes that let it sit beside the other docks on a 1920 x 1080 screen.

The canvas renders its figure off the GUI thread (:mod:`.renders`): a draw costs 150-400 ms
on a 2-core machine, which froze the viewer during a run's updates. The docks change the
figure inside ``canvas.editing()`` (a render under way stops first, a new one starts
after); ``draw_idle``, resizes and the toolbar go through it too, so a render never
overlaps a change. Changes that come again and again (a playing time slider, a pan) wait
for the render under way instead (``edit_between_renders``). The canvas shows its last
whole render until the next one is done.

The figure wears napari's current theme (background, text, axes, legends) and follows a
theme change; the docks draw as usual and each render recolours what they drew first, so
no drawing code needs to know the theme. Every export of a themed canvas (the toolbar's
Save, a dock's "Export PNG", any ``savefig``) is light: what a paper or a slide takes,
whichever theme the viewer has. Once its dock is closed a canvas never renders again, and
a render under way is never shown: napari lets go of a closed dock's widget, Python then
owns it, and a garbage collection during a draw deleted the widget under the canvas.

Constrained layout costs about as much as the draw itself, so a docked figure lays itself
out again only when what the layout depends on changed (:class:`LayoutOnDemand`): a render
that only moves data, as a run's updates do a few times per second, keeps the axes where
they are.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import partial, wraps

from matplotlib.backend_bases import DrawEvent
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from napari.utils.theme import get_theme
from qtpy import QT_API
from qtpy.compat import isalive
from qtpy.QtCore import QPoint, QTimer
from qtpy.QtGui import QImage, QPainter
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from .renders import RenderJob, job_here, submit
from .teardown import on_dock_closed


def legend_above(ax, ncol: int = 2, leave_out=()) -> None:
    """The axes' legend in a band above it (constrained layout makes room): never on data.
    The artists in ``leave_out`` are named elsewhere (a legend of their own)."""
    handles, labels = ax.get_legend_handles_labels()
    left_out = {id(artist) for artist in leave_out}
    kept = [(h, label) for h, label in zip(handles, labels) if id(h) not in left_out]
    handles, labels = [h for h, _ in kept], [label for _, label in kept]
    if not handles:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        return
    ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.02, 1.0, 0.1),
              mode="expand", ncol=ncol, fontsize="x-small", borderaxespad=0.0, frameon=False)


def _contrasting(colour, background) -> tuple | None:
    """A neutral grey or black drawn on ``background`` (markers, reference lines) mirrored
    in lightness when it would vanish on it; None for colours the data carries."""
    r, g, b = to_rgb(colour)
    if not (r == g == b):
        return None
    dark_background = sum(to_rgb(background)) / 3 < 0.5
    if (r < 0.5) == dark_background:
        return (1 - r,) * 3
    return None


def apply_theme(figure: Figure, theme_name: str) -> None:
    """Colour ``figure``'s face, axes, labels, ticks and legends as napari's theme
    ``theme_name`` does; colours that carry data (curves, points, images) stay."""
    theme = get_theme(theme_name)
    background, edges, text = (theme.background.as_hex(), theme.secondary.as_hex(),
                               theme.text.as_hex())
    figure.patch.set_facecolor(background)
    figure.patch.set_edgecolor(background)
    for label in figure.texts:  # suptitle and other figure text
        label.set_color(text)
    for ax in figure.axes:
        ax.set_facecolor(background)
        for spine in ax.spines.values():
            spine.set_edgecolor(edges)
        ax.tick_params(which="both", colors=edges, labelcolor=text)
        for label in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label,
                      ax.yaxis.label, ax.xaxis.offsetText, ax.yaxis.offsetText):
            label.set_color(text)
        _mirror_greys(ax.lines, background)
        _mirror_greys(ax.texts, background)  # messages such as report.py's "not enough data"
    legends = [ax.get_legend() for ax in figure.axes] + list(figure.legends)
    for legend in filter(None, legends):
        legend.get_frame().set_facecolor(background)
        legend.get_frame().set_edgecolor(edges)
        legend.get_title().set_color(text)
        for label in legend.get_texts():
            label.set_color(text)
        _mirror_greys(legend.get_lines(), background)


def _mirror_greys(artists, background) -> None:
    """Grey lines or texts mirrored in lightness where they would vanish on ``background``."""
    for artist in artists:
        flipped = _contrasting(artist.get_color(), background)
        if flipped is not None:
            artist.set_color(flipped)


class ThemedCanvas(FigureCanvasQTAgg):
    """A Qt canvas whose figure is rendered off the GUI thread (:mod:`.renders`) in the
    viewer's theme, and never again once :attr:`closed` (its dock was closed).

    Every change of the figure is made inside :meth:`editing`, which stops a render under
    way first and starts one after (one for all the changes of an event-loop turn);
    ``draw_idle``, a resize and the toolbar's pan, zoom and views go the same way. The
    canvas shows its last whole render until the next one is done. ``draw`` is
    matplotlib's, on the calling thread (for who reads its result at once); nothing in the
    docks calls it."""

    def __init__(self, figure: Figure, theme: str = "light"):
        self.theme = theme
        self._closed = False
        self._job = None  # the render asked for or under way
        self._edits = 0  # depth of editing() blocks
        self._wanted = False  # a render asked for this turn
        self._spare = None  # a renderer shown before, drawn into by the next render
        self._failures = 0  # renders in a row that raised
        self._deferred: dict = {}  # changes waiting for the render under way (as keys)
        super().__init__(figure)
        self._render_soon = QTimer(self)
        self._render_soon.setSingleShot(True)
        self._render_soon.setInterval(0)
        self._render_soon.timeout.connect(self._start_render)
        if self._wanted:
            self._render_soon.start()

    @property
    def closed(self) -> bool:
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value
        if value and self._job is not None:
            self._job.cancel(wait=False)  # its end is never shown
            self._job = None

    @contextmanager
    def editing(self, render: bool = True):
        """Change the figure inside this block: a render under way stops first (the GUI
        thread waits a few ms for that), and, with ``render``, one starts after the
        block (one for all the changes made in this event-loop turn)."""
        self._stop_render()
        self._edits += 1
        try:
            changes, self._deferred = self._deferred, {}
            for change in changes:  # edit_between_renders' changes are made now too
                change()
            yield self.figure
        finally:
            self._edits -= 1
            self._failures = 0
            if render:
                self.request_render()

    def edit_between_renders(self, change) -> None:
        """Call ``change()`` (which changes the figure) inside :meth:`editing`, now if no
        render is under way, else once it is shown (the same change asked twice meanwhile
        is made once). For changes that come again and again, the time slider playing or
        a pan: each would stop the render under way, and none would be shown until they
        stop."""
        if self._job is None:
            with self.editing():
                change()
        else:
            self._deferred[change] = None

    def request_render(self) -> None:
        """Render the figure as it is once this event-loop turn is over."""
        if self._closed or self._wanted:
            return
        self._wanted = True
        timer = getattr(self, "_render_soon", None)  # None while Qt's __init__ resizes
        if timer is not None:
            timer.start()

    def draw_idle(self) -> None:
        self.request_render()

    def draw(self) -> None:
        if self._closed:
            return
        with self.editing(render=False):
            apply_theme(self.figure, self.theme)
            super().draw()

    def resizeEvent(self, event) -> None:
        with self.editing():  # matplotlib resizes the figure
            super().resizeEvent(event)

    def _start_render(self) -> None:
        self._wanted = False
        if self._closed or self._edits:  # an editing block asks again when it ends
            return
        self._stop_render()
        width, height = self.get_width_height(physical=True)
        if width <= 0 or height <= 0:
            return
        shown = self.__dict__.get("renderer")
        spare = self._spare if self._spare is not shown else None
        self._spare = None
        self._job = RenderJob(self.figure, (width, height, self.figure.dpi),
                              partial(apply_theme, theme_name=self.theme), spare,
                              self._show_render)
        submit(self._job)

    def _stop_render(self) -> None:
        job, self._job = self._job, None
        if job is None:
            return
        job.cancel()
        if job.ended.is_set() and job.renderer is not self.__dict__.get("renderer"):
            self._spare = job.renderer  # for the next render

    def _show_render(self, job: RenderJob) -> None:
        """A render ended (on the GUI thread): show it, as FigureCanvasAgg.draw would."""
        if job is not self._job or job.cancelled or self._closed or not isalive(self):
            return
        self._job = None
        if job.error is not None:
            self._failures += 1
            print(f"a figure's render failed (drawn again): {job.error}", file=sys.stderr)
            if self._failures < 3:
                self.request_render()
            return
        self._failures = 0
        shown = self.__dict__.get("renderer")
        self.renderer, self._lastKey = job.renderer, job.size
        self._spare = shown
        self.figure.stale = False
        DrawEvent("draw_event", self, job.renderer)._process()
        self.update()
        if job.size != (*self.get_width_height(physical=True), self.figure.dpi):
            self.request_render()  # the screen's pixel ratio changed meanwhile
        if self._deferred:
            with self.editing():  # makes the changes that waited for this render
                pass

    def get_renderer(self):
        job = job_here()
        if job is not None and job.figure is self.figure:
            return job.renderer  # the render under way (constrained layout asks for it)
        return super().get_renderer()

    def paintEvent(self, event) -> None:
        """The last whole render, at its own size until the next one is done (matplotlib's
        paint drew the figure first, or showed an empty buffer after a resize)."""
        if self._draw_pending:  # set by matplotlib's print_figure
            self._draw_pending = False
            self.request_render()
        renderer = self.__dict__.get("renderer")
        if renderer is None:
            return
        painter = QPainter(self)
        try:
            painter.eraseRect(event.rect())
            buffer = renderer.buffer_rgba()
            pointer = buffer
            if QT_API == "PyQt6":  # QImage takes the buffer's address there (as matplotlib)
                from qtpy import sip  # PyQt only: PySide has none

                pointer = int(sip.voidptr(buffer))
            image = QImage(pointer, buffer.shape[1], buffer.shape[0],
                           QImage.Format.Format_RGBA8888)
            image.setDevicePixelRatio(self.device_pixel_ratio)
            painter.drawImage(QPoint(0, 0), image)
            self._draw_rect_callback(painter)  # the zoom tool's rectangle
        finally:
            painter.end()

    def print_figure(self, *args, **kwargs):
        """Every export (``savefig``, the toolbar's Save) in the light theme, then back;
        a render under way stops first, and what the canvas shows stays."""
        with self.editing():
            shown, key = self.__dict__.get("renderer"), self._lastKey
            apply_theme(self.figure, "light")
            try:
                return super().print_figure(*args, **kwargs)
            finally:
                apply_theme(self.figure, self.theme)
                if shown is not None:  # Agg's print drew into a renderer of its own size
                    self.renderer, self._lastKey = shown, key


def _editing(method):
    """The toolbar's ``method``, inside its canvas's editing block."""
    @wraps(method)
    def edit(self, *args, **kwargs):
        with self.canvas.editing():
            return method(self, *args, **kwargs)
    return edit


class Toolbar(NavigationToolbar2QT):
    """matplotlib's toolbar, whose changes of the figure (pan, zoom, home, back, forward,
    the figure options) are made inside the canvas's :meth:`ThemedCanvas.editing`."""

    press_pan = _editing(NavigationToolbar2QT.press_pan)
    release_pan = _editing(NavigationToolbar2QT.release_pan)  # after the last drag
    press_zoom = _editing(NavigationToolbar2QT.press_zoom)
    release_zoom = _editing(NavigationToolbar2QT.release_zoom)
    push_current = _editing(NavigationToolbar2QT.push_current)
    _update_view = _editing(NavigationToolbar2QT._update_view)  # home, back, forward
    edit_parameters = _editing(NavigationToolbar2QT.edit_parameters)
    _dragged_to = None  # the last mouse motion of a pan, not yet applied

    def drag_pan(self, event):
        """Pan to the mouse between renders: the figure follows at the renders' pace."""
        self._dragged_to = event
        self.canvas.edit_between_renders(self._pan_to_last)

    def _pan_to_last(self) -> None:
        event, self._dragged_to = self._dragged_to, None
        if event is not None and self._pan_info is not None:
            NavigationToolbar2QT.drag_pan(self, event)


class LayoutOnDemand(ConstrainedLayoutEngine):
    """Constrained layout, run only when the figure's size, axes, titles, axis labels,
    legend entries (a figure legend's: their texts) or the width of the y tick labels (in
    steps of two characters: the axis label follows its tick labels anyway) changed since
    the last one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._laid_out_for = None

    def execute(self, fig):
        key = _layout_key(fig)
        if key != self._laid_out_for:
            self._laid_out_for = None  # until done: a render stopped midway lays out again
            super().execute(fig)
            self._laid_out_for = key


def _layout_key(fig: Figure) -> tuple:
    """What the figure's constrained layout depends on (not the data the axes show)."""
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    key = [tuple(fig.bbox.size), suptitle,
           tuple(text.get_text() for legend in fig.legends for text in legend.get_texts())]
    for ax in fig.axes:
        legend = ax.get_legend()
        axis = ax.yaxis
        ticks = axis.get_major_formatter().format_ticks(axis.get_major_locator()())
        key.append((id(ax), ax.get_title(), ax.get_xlabel(), ax.get_ylabel(),
                    len(legend.get_texts()) if legend is not None else 0,
                    (max(map(len, ticks), default=0) + 1) // 2))
    return tuple(key)


class DockedFigure(QWidget):
    """A figure with its canvas and toolbar, in ``viewer``'s theme; docks add their own
    controls above it. When ``dock`` (default: itself), the dock it sits in, is closed, it
    stops following the theme and its canvas stops drawing."""

    def __init__(self, viewer, figsize=(4.5, 3.5), min_height: int = 220, parent=None,
                 dock: QWidget | None = None):
        super().__init__(parent)
        self.figure = Figure(figsize=figsize, layout=LayoutOnDemand())
        self.canvas = ThemedCanvas(self.figure, viewer.theme)
        self.canvas.setMinimumSize(240, min_height)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.toolbar = Toolbar(self.canvas, self, coordinates=False)
        self.toolbar.setMaximumHeight(28)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.canvas, stretch=1)
        self._viewer_events = viewer.events
        viewer.events.theme.connect(self._on_theme)
        on_dock_closed(dock or self, self._on_closed)

    def _on_theme(self, event) -> None:
        with self.canvas.editing():  # the render recolours the figure
            self.canvas.theme = event.value

    def _on_closed(self) -> None:
        self.canvas.closed = True
        self._viewer_events.theme.disconnect(self._on_theme)

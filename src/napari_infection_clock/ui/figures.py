"""Docked figures and dock layout: one figure widget (canvas, toolbar), legends off the data,
scroll areas so that every dock fits one screen with the others.

As napari-matplotlib does, the plot, training and evaluation docks share one widget that
owns the figure, its Qt canvas and matplotlib's navigation toolbar (zoom, pan, save), with
sizes that let it sit beside the other docks on a 1920 x 1080 screen. The figure wears
napari's current theme (background, text, axes, legends) and follows a theme change; the
docks draw as usual and the canvas recolours what they drew just before each draw, so no
drawing code needs to know the theme. Every export of a themed canvas (the toolbar's Save,
a dock's "Export PNG", any ``savefig``) is light: what a paper or a slide takes, whichever
theme the viewer has. Once its dock is closed a canvas never draws again, also not a draw
already scheduled: napari lets go of a closed dock's widget, Python then owns it, and a
garbage collection during such a draw deleted the widget under the canvas.

Constrained layout costs about as much as the draw itself, so a docked figure lays itself
out again only when what the layout depends on changed (:class:`LayoutOnDemand`): a draw
that only moves data, as a run's updates do a few times per second, keeps the axes where
they are.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.backend_bases import DrawEvent
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from napari.utils.theme import get_theme
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from .teardown import on_dock_closed

#: Milliseconds between the parts of a figure drawn in steps (ThemedCanvas.draw_in_steps).
DRAW_STEP_MS = 30


def legend_above(ax, ncol: int = 2) -> None:
    """The axes' legend in a band above it (constrained layout makes room): never on data."""
    handles, labels = ax.get_legend_handles_labels()
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
    """A Qt canvas that colours its figure as the viewer's theme before every draw, and
    draws no more once :attr:`closed` (its dock was closed).

    :meth:`draw_in_steps` draws as :meth:`draw` does, a part per event-loop turn (the
    layout, then each axes) into a buffer of its own that is shown once whole: a run's
    update of a figure of two or three axes no longer holds the GUI thread for the whole
    draw (matplotlib's layout and draw each cost 50-150 ms on a 2-core machine)."""

    def __init__(self, figure: Figure, theme: str = "light"):
        self.theme = theme
        self.closed = False
        super().__init__(figure)
        self._steps = None  # the steps left of a draw in steps
        self._step_timer = QTimer(self)
        self._step_timer.setSingleShot(True)
        self._step_timer.setInterval(DRAW_STEP_MS)
        self._step_timer.timeout.connect(self._next_step)

    def draw(self) -> None:
        if self.closed:  # also a draw_idle scheduled before the dock was closed
            return
        self._steps = None  # everything is drawn now: a draw in steps would be older
        apply_theme(self.figure, self.theme)
        super().draw()

    def draw_idle(self) -> None:
        if not self.closed:
            super().draw_idle()

    def draw_in_steps(self) -> None:
        """Draw the figure as it is now, one part per event-loop turn; the canvas shows the
        previous drawing until the new one is whole. A later call starts over."""
        if self.closed:
            return
        self._steps = self._drawing()
        self._step_timer.start(0)

    def _next_step(self) -> None:
        if self._steps is None or self.closed:
            self._steps = None
            return
        if next(self._steps, None) is None:
            self._steps = None
        else:
            self._step_timer.start()

    def _drawing(self):
        """Figure.draw's work as a generator: it yields between the layout and each axes,
        and at the end puts the new buffer in place and repaints."""
        figure = self.figure
        apply_theme(figure, self.theme)
        engine = figure.get_layout_engine()
        if engine is not None and figure.axes:
            engine.execute(figure)  # LayoutOnDemand: only when what it depends on changed
            yield True
        key = (*self.get_width_height(physical=True), figure.dpi)
        renderer = RendererAgg(*key)
        try:
            artists = figure._get_draw_artists(renderer)  # as Figure.draw orders them
        except AttributeError:  # another matplotlib: one draw as usual
            self.draw_idle()
            return
        figure.patch.draw(renderer)
        for artist in artists:
            artist.draw(renderer)
            if isinstance(artist, Axes):
                yield True
        if key != (*self.get_width_height(physical=True), figure.dpi):
            self.draw_idle()  # resized meanwhile
            return
        self.renderer, self._lastKey = renderer, key
        figure.stale = False
        DrawEvent("draw_event", self, renderer)._process()
        self.update()

    def print_figure(self, *args, **kwargs):
        """Every export (``savefig``, the toolbar's Save) in the light theme, then back."""
        apply_theme(self.figure, "light")
        try:
            return super().print_figure(*args, **kwargs)
        finally:
            apply_theme(self.figure, self.theme)


class LayoutOnDemand(ConstrainedLayoutEngine):
    """Constrained layout, run only when the figure's size, axes, titles, axis labels,
    legend entries or the width of the y tick labels (in steps of two characters: the
    axis label follows its tick labels anyway) changed since the last one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._laid_out_for = None

    def execute(self, fig):
        key = _layout_key(fig)
        if key != self._laid_out_for:
            self._laid_out_for = key
            super().execute(fig)


def _layout_key(fig: Figure) -> tuple:
    """What the figure's constrained layout depends on (not the data the axes show)."""
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    key = [tuple(fig.bbox.size), suptitle, len(fig.legends)]
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
        self.toolbar = NavigationToolbar2QT(self.canvas, self, coordinates=False)
        self.toolbar.setMaximumHeight(28)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.canvas, stretch=1)
        self._viewer_events = viewer.events
        viewer.events.theme.connect(self._on_theme)
        on_dock_closed(dock or self, self._on_closed)

    def _on_theme(self, event) -> None:
        self.canvas.theme = event.value
        self.canvas.draw_idle()

    def _on_closed(self) -> None:
        self.canvas.closed = True
        self._viewer_events.theme.disconnect(self._on_theme)


class _FitWidth(QObject):
    def __init__(self, area: QScrollArea):
        super().__init__(area)
        self._area = area
        area.widget().installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        if event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
            area = self._area
            area.setMinimumWidth(obj.minimumSizeHint().width() + 2 * area.frameWidth()
                                 + area.verticalScrollBar().sizeHint().width())
        return False


def fit_width(area: QScrollArea) -> None:
    """Keep the vertical-only scroll ``area`` as wide as its content needs, whenever that
    changes: else the dock could be made narrower than its form, cut off at the right."""
    _FitWidth(area)


def scrolling_layout(dock: QWidget) -> QVBoxLayout:
    """The layout to fill ``dock`` with, inside a vertical scroll area.

    The dock then asks napari for little height, so that all docks fit one 1920 x 1080
    screen together; when squeezed, its content scrolls instead of growing the window.
    """
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(dock)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    inner = QWidget()
    area.setWidget(inner)
    fit_width(area)
    outer.addWidget(area)
    return QVBoxLayout(inner)

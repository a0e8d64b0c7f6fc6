"""Where the plugin's docks go: the forms share one tab group, so that all fit one screen.

napari's Plugins menu adds each dock to the right-hand area below the others (npe2 has no
way to ask for a tab): with six docks on a 1920 x 1080 screen four of them get two rows
each. The form docks (prediction, annotation, training, evaluation, label next) therefore
join the tab group of the first form already docked there, each with the whole group's
height; the plot keeps its own place below them, so the curves stay in view while one
predicts or labels, and the two share the area's height half and half. The
person can still drag a tab out, float it, or move the splitter. A form's tab shows a short
name of its own (napari's dock title, "Predict infection (napari-infection-clock)", would
be cut to "Predic..." in a tab a fifth of the dock's width); its title bar keeps the full one.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

from .gc_freeze import freeze_while_docked

#: Set on the docks that hold one of the plugin's widgets: "form" or "figure".
ROLE = "infection_clock_dock"
FORM, FIGURE = "form", "figure"
#: The forms' share of the height of the area they share with the plot.
FORMS_SHARE = 0.5
#: The least width (px) of the window's central area (napari's canvas, its slider) once a
#: dock is placed: the window widens for it.
CANVAS_MIN_PX = 320


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock ``widget`` sits in, or None."""
    while widget is not None and not isinstance(widget, QDockWidget):
        widget = widget.parentWidget()
    return widget


class _PlaceWhenDocked(QObject):
    """Waits for napari to put the widget into a dock of its main window, then places it."""

    def __init__(self, widget: QWidget, role: str, tab: str = ""):
        super().__init__(widget)
        self._widget = widget
        self._role = role
        self._tab = tab
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.ParentChange and obj.parent() is not None:
            # napari docks the widget first and adds the dock to its window right after;
            # the timer is ours, so it goes with the widget if that is deleted first
            timer = QTimer(self)
            timer.setSingleShot(True)
            timer.timeout.connect(self._place)
            timer.timeout.connect(timer.deleteLater)
            timer.start(0)
        return False

    def _place(self) -> None:
        dock = dock_of(self._widget)
        window = dock.parentWidget() if dock is not None else None
        if not isinstance(window, QMainWindow):
            return
        dock.setProperty(ROLE, self._role)
        if self._tab:
            dock.setWindowTitle(self._tab)  # what its tab shows
        if dock.isFloating() or window.tabifiedDockWidgets(dock):
            return  # the user's (or napari's restored) place stays
        if self._role == FORM:
            others = _ours(window, window.dockWidgetArea(dock), FORM)
            others = [other for other in others if other is not dock]
            if others:
                window.tabifyDockWidget(others[0], dock)
                dock.show()
                dock.raise_()
        _share_height(window, window.dockWidgetArea(dock))
        _keep_canvas_width(window)


def _ours(window: QMainWindow, area, role: str) -> list[QDockWidget]:
    """The plugin's docks of ``role`` shown in ``area`` (of a tab group, the current one)."""
    return [dock for dock in window.findChildren(QDockWidget)
            if dock.property(ROLE) == role and dock.isVisible() and not dock.isFloating()
            and window.dockWidgetArea(dock) == area]


def _keep_canvas_width(window: QMainWindow) -> None:
    """Widen ``window``, within its screen, so that the canvas's area keeps
    :data:`CANVAS_MIN_PX`: napari reopens its window at the size it was closed at, and a form
    dock (some 430 px) placed in a narrow one took the canvas's whole width."""
    window.layout().activate()  # the new dock's place
    central = window.centralWidget()
    short = CANVAS_MIN_PX - central.width() if central is not None else 0
    screen = window.screen()
    if short <= 0 or screen is None or window.isMaximized() or window.isFullScreen():
        return
    room, frame = screen.availableGeometry(), window.frameGeometry()
    border = frame.width() - window.width()  # the window manager's frame
    width = min(window.width() + short, room.width() - border)
    left = max(room.left(), min(frame.left(), room.right() + 1 - width - border))
    window.resize(width, window.height())
    window.move(left, frame.top())


def _share_height(window: QMainWindow, area) -> None:
    forms, figures = _ours(window, area, FORM), _ours(window, area, FIGURE)
    if not forms or not figures:
        return
    height = window.centralWidget().height()
    rest = int(height * (1 - FORMS_SHARE) / len(figures))
    window.resizeDocks([forms[0], *figures], [int(height * FORMS_SHARE)] + [rest] * len(figures),
                       Qt.Orientation.Vertical)


def place_form(widget: QWidget, tab: str) -> None:
    """``widget`` (a form dock's Qt widget) joins the plugin's form tab group once docked,
    its tab named ``tab``."""
    _PlaceWhenDocked(widget, FORM, tab)
    freeze_while_docked(widget)


def place_figure(widget: QWidget) -> None:
    """``widget`` (the plot) keeps its own place beside the forms' tab group once docked."""
    _PlaceWhenDocked(widget, FIGURE)
    freeze_while_docked(widget)

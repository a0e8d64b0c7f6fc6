"""Status lines that never widen a dock: short, wrapped, with the long cause on demand.

A message from deep inside (PyTorch's paragraph about ``weights_only``, a traceback) would
otherwise set a label's minimum width and grow napari's window past the screen. The line
shows the first sentence-sized part; the whole text is its tooltip. A click on a dock's button
scrolls its status line into view (the docks scroll beside one another). A run's end is
also a napari notification only when its status line is out of sight (:func:`tell`).
"""

from __future__ import annotations

from napari.utils.notifications import show_info
from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import QApplication, QLabel, QScrollArea, QSizePolicy, QWidget

#: Longest message shown in a status line; the rest is in its tooltip.
MAX_CHARS = 300


def fit_messages(label: QLabel) -> None:
    """Make ``label`` wrap, selectable, and never ask for more width than its dock has."""
    label.setWordWrap(True)
    label.setMinimumWidth(0)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)


def short(message: str) -> str:
    """The first line of ``message``, cut to :data:`MAX_CHARS` characters."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first if len(first) <= MAX_CHARS else first[: MAX_CHARS - 1].rstrip() + "…"


def show(label: QLabel, message: str, details: str = "") -> None:
    """Put a short ``message`` in ``label``; the full text and ``details`` in its tooltip."""
    label.setText(short(message))
    full = "\n\n".join(part for part in (message.strip(), details.strip()) if part)
    label.setToolTip(full if full != label.text() else "")


def tell(label: QLabel, message: str, notice: str = "") -> None:
    """:func:`show` a run's end in ``label``, and ``notice`` (else the message) in a napari
    notification only while ``label`` is out of sight (its dock tabbed behind another,
    closed, or scrolled away from it). A notification slides in over the canvas and each
    step of that animation repaints the whole canvas: 55-100 ms of the GUI thread on
    software OpenGL, 200-320 ms beside a run's start, to say what is already on screen."""
    show(label, message)
    if label.visibleRegion().isEmpty():  # empty too while the label is hidden
        show_info(short(notice or message))


def in_view(label: QWidget) -> None:
    """Scroll the dock that holds ``label`` so that it is in view: beside the other docks a
    dock's form scrolls, and its status line, the answer to a click, sat below the fold."""
    area = label.parentWidget()
    while area is not None and not isinstance(area, QScrollArea):
        area = area.parentWidget()
    if area is None:
        return
    # the answer's new text laid out (the form grown to it) before its place is taken
    QApplication.sendPostedEvents(None, QEvent.Type.LayoutRequest)
    area.ensureWidgetVisible(label, 0, 8)
    # and once more when the event loop has laid it out whole (a wrapped line's height
    # follows its width, which the form gets a turn later)
    again = QTimer(area)
    again.setSingleShot(True)
    again.timeout.connect(lambda: area.ensureWidgetVisible(label, 0, 8))
    again.timeout.connect(again.deleteLater)
    again.start(0)


def answered_in_view(label: QWidget, *buttons) -> None:
    """After a click on any of ``buttons`` (Qt buttons), :func:`in_view` of ``label``.
    Connected after the dock's own handlers, so it runs once they have answered."""
    for button in buttons:
        button.clicked.connect(lambda *_: in_view(label))

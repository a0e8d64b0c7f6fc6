"""A dock's form inside a vertical scroll area, as wide as the form needs.

Qt only (no matplotlib): the form docks open without importing a plotting library.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget


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

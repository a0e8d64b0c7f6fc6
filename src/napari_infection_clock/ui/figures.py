"""Docked figures and dock layout: one figure widget (canvas, toolbar), legends off the data,
scroll areas so that every dock fits one screen with the others.

As napari-matplotlib does, the plot, training and evaluation docks share one widget that
owns the figure, its Qt canvas and matplotlib's navigation toolbar (zoom, pan, save), with
sizes that let it sit beside the other docks on a 1920 x 1080 screen. Figures keep
matplotlib's light style in both napari themes: it is what an exported PNG looks like.
"""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget


def legend_above(ax, ncol: int = 2) -> None:
    """The axes' legend in a band above it (constrained layout makes room): never on data."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        return
    ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.02, 1.0, 0.1),
              mode="expand", ncol=ncol, fontsize="x-small", borderaxespad=0.0, frameon=False)


class DockedFigure(QWidget):
    """A figure with its canvas and toolbar; docks add their own controls above it."""

    def __init__(self, figsize=(4.5, 3.5), min_height: int = 220, parent=None):
        super().__init__(parent)
        self.figure = Figure(figsize=figsize, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumSize(240, min_height)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.toolbar = NavigationToolbar2QT(self.canvas, self, coordinates=False)
        self.toolbar.setMaximumHeight(28)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.canvas, stretch=1)


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
    outer.addWidget(area)
    return QVBoxLayout(inner)

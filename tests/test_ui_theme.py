"""Docked figures follow napari's theme, and a theme change (issue 9: figures in the
dark theme kept matplotlib's white face and black text)."""

from __future__ import annotations

import threading
import time

import numpy as np
from matplotlib.colors import to_hex, to_rgb
from matplotlib.text import Text
from napari.utils.theme import get_theme
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-infection-clock"
FIGURE_DOCKS = ("Infection time-series plot", "Retrain on labels", "Evaluate the model")


def _figures(dock):
    return [figure for figure, _ in dock.figures.values()] if hasattr(dock, "figures") \
        and isinstance(dock.figures, dict) else [dock.figure]


def _labels(figure):
    """Every piece of text a person reads around the data (not annotations in the data)."""
    inside = {id(t) for ax in figure.axes for t in ax.texts}
    return [t for t in figure.findobj(Text)
            if t.get_visible() and t.get_text() and id(t) not in inside]


def _shown_background(figure) -> str:
    """The colour of the figure's top-left pixel as the Qt canvas painted it."""
    figure.canvas.draw()
    pixel = np.asarray(figure.canvas.buffer_rgba())[1, 1, :3] / 255
    return to_hex(pixel)


def test_docked_figures_follow_the_theme_and_its_changes(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.theme = "dark"
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in FIGURE_DOCKS]
    QApplication.processEvents()
    for name in ("dark", "light", "dark"):
        viewer.theme = name  # what Preferences > Appearance > theme does
        QApplication.processEvents()
        theme = get_theme(name)
        for dock in docks:
            for figure in _figures(dock):
                assert _shown_background(figure) == theme.background.as_hex(), (name, dock)
                texts = _labels(figure)
                assert texts or not figure.axes
                for text in texts:
                    assert to_hex(text.get_color()) == theme.text.as_hex(), (name, text)
                for ax in figure.axes:
                    for label in ax.get_xticklabels() + ax.get_yticklabels():
                        assert to_hex(label.get_color()) == theme.text.as_hex()


def test_an_exported_plot_is_light_in_the_dark_theme(make_napari_viewer, tmp_path):
    """Export PNG gives what a paper takes; the dock itself stays dark."""
    from matplotlib.image import imread

    viewer = make_napari_viewer()
    viewer.theme = "dark"
    plot = viewer.window.add_plugin_dock_widget(PLUGIN, FIGURE_DOCKS[0])[1]
    path = plot.export_png(tmp_path / "plot")
    exported = to_hex(imread(path)[1, 1, :3])
    assert exported == get_theme("light").background.as_hex()
    assert _shown_background(plot.figure) == get_theme("dark").background.as_hex()


def test_the_toolbar_save_is_light_in_the_dark_theme(make_napari_viewer, tmp_path,
                                                     monkeypatch):
    """matplotlib's own Save button (every docked figure has one) exports light too."""
    from matplotlib.image import imread
    from qtpy.QtWidgets import QFileDialog

    viewer = make_napari_viewer()
    viewer.theme = "dark"
    plot = viewer.window.add_plugin_dock_widget(PLUGIN, FIGURE_DOCKS[0])[1]
    path = tmp_path / "toolbar.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(path), "")))
    [save] = [a for a in plot.toolbar.actions() if a.text() == "Save"]
    save.trigger()
    exported = to_hex(imread(path)[1, 1, :3])
    assert exported == get_theme("light").background.as_hex()
    assert _shown_background(plot.figure) == get_theme("dark").background.as_hex()


def test_grey_messages_in_the_axes_are_readable_in_the_dark_theme(make_napari_viewer):
    """report.py's "not enough data" text (grey 0.3) is mirrored on a dark background."""
    from napari_infection_clock.core.report import roc_figure
    from napari_infection_clock.ui.figures import DockedFigure

    viewer = make_napari_viewer()
    viewer.theme = "dark"
    docked = DockedFigure(viewer)
    roc_figure(np.ones(4, int), np.full(4, 0.7), ax=docked.figure.add_subplot())
    background = np.mean(to_rgb(_shown_background(docked.figure)))
    texts = [t for ax in docked.figure.axes for t in ax.texts
             if t.get_visible() and t.get_text()]
    assert texts
    for text in texts:
        assert abs(np.mean(to_rgb(text.get_color())) - background) >= 0.4, text


def test_a_closed_figure_dock_never_draws_again(make_napari_viewer, qtbot, capsys):
    """Close a figure dock with draws pending (a run's update, a theme change): they never
    come. They used to, on a widget napari had let go: Python owns it then, and a garbage
    collection during that draw deleted it under the canvas, which matplotlib printed
    ("wrapped C/C++ object of type ThemedCanvas has been deleted"). Here the widget is
    deleted where that collection did it: in the middle of the draw."""
    from qtpy import sip

    viewer = make_napari_viewer()
    for name in FIGURE_DOCKS:
        qdock, dock = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        drawn = []

        def collected(event, dock=dock):  # what a full collection did mid-draw
            drawn.append(event)
            if not sip.isdeleted(dock):
                sip.delete(dock)

        for figure in _figures(dock):
            figure.canvas.mpl_connect("draw_event", collected)
            figure.canvas.draw_idle()
        viewer.window.remove_dock_widget(qdock)  # what the dock's close button does
        qtbot.wait(50)
        assert drawn == [], name
        assert "has been deleted" not in capsys.readouterr().err, name


def _drawing_slowly(figure, monkeypatch) -> threading.Event:
    """An event set when ``figure`` is being drawn off the GUI thread; that draw then
    lingers a little in its background, where a test acts in the middle of it."""
    gui = threading.get_ident()
    drawing = threading.Event()
    real = figure.patch.draw

    def draw(renderer):
        if threading.get_ident() != gui:
            drawing.set()
            time.sleep(0.1)
        return real(renderer)

    monkeypatch.setattr(figure.patch, "draw", draw)
    return drawing


def test_a_figure_dock_closed_during_a_draw_never_shows_it(make_napari_viewer, qtbot, capsys,
                                                            monkeypatch):
    """A theme change has every figure drawn again (in the background); the dock is closed
    in the middle of that draw: the canvas never shows it, nothing touches the widget."""
    viewer = make_napari_viewer()
    for name in FIGURE_DOCKS:
        qdock, dock = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        figure = _figures(dock)[0]
        drawing = _drawing_slowly(figure, monkeypatch)
        drawn = []
        figure.canvas.mpl_connect("draw_event", drawn.append)
        viewer.theme = "light" if viewer.theme == "dark" else "dark"
        qtbot.waitUntil(drawing.is_set, timeout=10_000)
        viewer.window.remove_dock_widget(qdock)  # what the dock's close button does
        qtbot.wait(300)
        assert drawn == [], name
        err = capsys.readouterr().err
        assert "has been deleted" not in err and "Traceback" not in err, name


def test_an_export_during_a_draw_is_light_and_the_dock_stays_dark(make_napari_viewer, qtbot,
                                                                   tmp_path, monkeypatch):
    """Export PNG while the plot is being drawn in the background: the export stops that
    draw, is light, and the dock then shows its dark drawing."""
    from matplotlib.image import imread

    viewer = make_napari_viewer()
    viewer.theme = "dark"
    plot = viewer.window.add_plugin_dock_widget(PLUGIN, FIGURE_DOCKS[0])[1]
    drawing = _drawing_slowly(plot.figure, monkeypatch)
    plot.canvas.draw_idle()
    qtbot.waitUntil(drawing.is_set, timeout=10_000)
    path = plot.export_png(tmp_path / "plot")
    assert to_hex(imread(path)[1, 1, :3]) == get_theme("light").background.as_hex()
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=10_000)
    shown = np.asarray(plot.canvas.buffer_rgba())[1, 1, :3] / 255
    assert to_hex(shown) == get_theme("dark").background.as_hex()

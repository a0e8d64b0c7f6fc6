"""All docks open together fit one 1920 x 1080 screen, and a long message never widens
napari's window (issue 9, item 5)."""

from __future__ import annotations

import tifffile
from npe2 import PluginManager
from qtpy.QtCore import QPoint, Qt
from qtpy.QtWidgets import QApplication, QDockWidget, QPushButton, QScrollArea, QTabBar

from napari_infection_clock.core.stack import write_stack
from napari_infection_clock.core.synthetic import sample_pair

PLUGIN = "napari-infection-clock"
PLOT = "Infection time-series plot"


def _dock_of(widget) -> QDockWidget:
    widget = getattr(widget, "native", widget)  # a magicgui Container's Qt widget
    while not isinstance(widget, QDockWidget):
        widget = widget.parentWidget()
    return widget


def test_all_docks_fit_a_full_hd_screen_and_a_long_error_does_not_widen_it(
    make_napari_viewer, qtbot, tmp_path
):
    viewer = make_napari_viewer(show=True)
    data, meta = sample_pair(n_frames=4, size=64)["infected"]
    viewer.add_image(data, name="well", metadata=meta)
    manifest = PluginManager.instance().get_manifest(PLUGIN)
    docks = {}
    for contribution in manifest.contributions.widgets:
        name = contribution.display_name
        docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
    window = viewer.window._qt_window
    QApplication.processEvents()
    needed = window.minimumSizeHint()
    assert needed.width() <= 1920 and needed.height() <= 1080, needed
    window.resize(1920, 1080)
    QApplication.processEvents()
    assert (window.width(), window.height()) == (1920, 1080)

    # usable together: the forms share one tab group (napari's menu would stack all six in
    # slices of two rows each), the plot beside them; every dock shown gets real height
    plot = docks.pop(PLOT)
    tabs = {_dock_of(dock) for dock in docks.values()}
    for dock in tabs:
        assert set(window.tabifiedDockWidgets(dock)) == tabs - {dock}, dock.windowTitle()
    for dock in [*tabs, _dock_of(plot)]:
        dock.raise_()
        QApplication.processEvents()
        assert dock.height() >= 300, (dock.windowTitle(), dock.height())
        for area in dock.findChildren(QScrollArea):  # no form cut off at the right
            if area.isVisible() and area.widget() is not None:
                needed = area.widget().minimumSizeHint().width()
                assert area.viewport().width() >= needed, (dock.windowTitle(), needed)
    assert plot.canvas.height() >= 160
    # each tab says which form it holds, whole: no tab text cut short ("Predic...")
    [bar] = [bar for bar in window.findChildren(QTabBar)
             if {bar.tabText(i) for i in range(bar.count())} & {d.windowTitle() for d in tabs}]
    names = [bar.tabText(i) for i in range(bar.count())]
    assert names == ["Predict", "Annotate", "Retrain", "Evaluate", "Label next"], names
    for i, name in enumerate(names):
        assert bar.tabRect(i).width() > bar.fontMetrics().horizontalAdvance(name), name

    # a text file given as checkpoint: a long message must not widen anything
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes " * 400)
    predict = docks["Predict infection"]
    predict.checkpoint.value = notes
    predict.device.value = "cpu"
    ended = []
    predict.finished.connect(ended.append)
    predict.run_button.native.click()
    qtbot.waitUntil(lambda: bool(ended), timeout=60_000)
    QApplication.processEvents()
    assert ended[0].startswith("prediction failed")
    assert window.width() == 1920 and window.height() == 1080
    status = predict.status.native
    assert status.wordWrap() and len(status.text()) <= 300  # short; any longer cause on hover


def test_a_dock_opened_in_a_small_window_leaves_the_canvas_its_width(make_napari_viewer, qtbot):
    """napari reopens its window at the size it was closed at; in a 732 x 508 px window the
    Predict dock left the canvas 0 px wide: no image, nothing painted. The window widens,
    within the screen, to keep the canvas its least width."""
    from napari_infection_clock.ui.docking import CANVAS_MIN_PX

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.move(0, 0)
    window.resize(732, 508)
    canvas = viewer.window._qt_viewer.canvas.native
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")
    qtbot.waitUntil(lambda: dock.isVisible() and dock.width() >= widget.native.minimumWidth())
    qtbot.waitUntil(lambda: window.centralWidget().width() >= CANVAS_MIN_PX, timeout=5000)
    assert canvas.width() >= CANVAS_MIN_PX - 10, canvas.width()  # the area's margins
    screen = window.screen().availableGeometry()
    assert screen.contains(window.frameGeometry()), (screen, window.frameGeometry())


def test_the_default_time_warning_wraps_and_leaves_the_canvas_its_width(
    make_napari_viewer, tmp_path
):
    """A stack opened with napari's own reader has no frame interval or onset, and the
    prediction dock warns that defaults are used: on one line, that warning made the docks
    500 px wider and halved the canvas of a 1920 px wide window."""
    data, meta = sample_pair(n_frames=4, size=64)["infected"]
    path = tmp_path / "well.tif"
    tifffile.imwrite(path, data)
    viewer = make_napari_viewer(show=True)
    manifest = PluginManager.instance().get_manifest(PLUGIN)
    docks = {contribution.display_name: viewer.window.add_plugin_dock_widget(
        PLUGIN, contribution.display_name)[1] for contribution in manifest.contributions.widgets}
    window, canvas = viewer.window._qt_window, viewer.window._qt_viewer.canvas.native
    window.resize(1920, 1080)
    predict = docks["Predict infection"]
    viewer.add_image(data, name="well", metadata=meta)  # the plugin's reader: the file's times
    QApplication.processEvents()
    assert "from file metadata" in predict.time_source.value
    width = canvas.width()
    viewer.layers.clear()
    viewer.open(path, plugin="napari")  # File > Open with napari's reader: no metadata
    QApplication.processEvents()
    assert "default used" in predict.time_source.value
    assert window.width() == 1920 and canvas.width() == width


def _in_view(label) -> bool:
    """Whether ``label`` lies wholly inside what its dock's scroll area shows now."""
    area = label.parentWidget()
    while not isinstance(area, QScrollArea):
        area = area.parentWidget()
    top = label.mapTo(area.viewport(), QPoint(0, 0)).y()
    return top >= 0 and top + label.height() <= area.viewport().height()


def test_after_a_click_each_docks_answer_is_in_view(make_napari_viewer, qtbot, tmp_path):
    """Every dock open in a 1600 x 1000 window: the form docks share one tab beside the
    plot and scroll, and their status lines sat below the fold ("saved ..." after a label,
    a refused Start); only Predict scrolled to its answer. After a click on a dock's
    button, its status line is in view."""
    path = tmp_path / "well_p1_t0-3.tif"
    write_stack(path, sample_pair(n_frames=4, size=64)["infected"][0], "TYX", 0.5)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    manifest = PluginManager.instance().get_manifest(PLUGIN)
    docks = {contribution.display_name: viewer.window.add_plugin_dock_widget(
        PLUGIN, contribution.display_name)[1] for contribution in manifest.contributions.widgets}
    viewer.open(str(path), plugin=PLUGIN)
    clicks = {  # the dock, its button, what the status line answers
        "Retrain on labels": ("Start", "no labels yet"),
        "Evaluate the model": ("Evaluate", "no model"),
        "What to label next": ("Rank", "no model"),
        "Predict infection": ("Predict", "checkpoint"),
        "Annotate frames and crops": ("Infected", "saved"),
    }
    below = []
    for title, (text, answer) in clicks.items():
        widget = docks[title]
        _dock_of(widget).raise_()  # a click on its tab
        QApplication.processEvents()
        form = getattr(widget, "native", widget)
        status = getattr(widget.status, "native", widget.status)
        if not _in_view(status):
            below.append(title)
        [button] = [b for b in form.findChildren(QPushButton) if b.text() == text]
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        QApplication.processEvents()
        assert answer in status.text(), (title, status.text())
        assert _in_view(status), title
    assert {"Annotate frames and crops", "Retrain on labels"} <= set(below), below


"""The time-series plot dock: curves, onset estimate, marker <-> time slider, regions, export."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from matplotlib.backend_bases import MouseEvent
from matplotlib.colors import to_hex
from qtpy.QtWidgets import QApplication, QFileDialog, QPushButton

from napari_infection_clock.core.checkpoint import CheckpointMeta, save_checkpoint
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.results import result_rows
from napari_infection_clock.core.synthetic import sample_pair
from napari_infection_clock.core.targets import TimePolicy
from napari_infection_clock.core.tiles import TileSpec
from napari_infection_clock.ui.layer_roles import PREDICTION_TABLE, annotation_key, image_id
from napari_infection_clock.ui.overlays import PredictionLayers, layer_name, tile_grid
from napari_infection_clock.ui.plot_widget import TimeSeriesPlot
from napari_infection_clock.ui.prediction_widget import MODE_TILES
from napari_infection_clock.ui.state import PredictionRun, session_for
from napari_infection_clock.ui.timeseries import estimate_onset, frame_summary

from .figures import points_under_legends

N_FRAMES, INTERVAL, ONSET = 12, 0.5, 2.0
PLUGIN = "napari-infection-clock"
#: How long a test waits for a real prediction: a guard against a hang, not a speed test.
RUN_TIMEOUT_MS = 180_000


def _table(grid) -> pd.DataFrame:
    """A clock that is right: tiles infected from the onset on, duration t - onset (+ tile)."""
    frames = []
    for frame in range(N_FRAMES):
        hours = frame * INTERVAL
        n = len(grid.boxes)
        p = np.full(n, 0.9 if hours >= ONSET else 0.1)
        p[0] = 0.2  # tile (0, 0) always looks uninfected
        duration = np.where(p > 0.5, hours - ONSET + 0.1 * np.arange(n), hours)
        frames.append(result_rows("well", frame, hours, grid.boxes, grid.grid_rc, p, duration))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def plotted(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((N_FRAMES, 64, 64), np.uint16), name="well")
    grid = tile_grid(64, 64, TileSpec(32))
    table = _table(grid)
    layers = PredictionLayers(viewer, image, grid, N_FRAMES, 48.0)
    while not layers.make_next():
        pass
    layers.add_frames([rows for _, rows in table.groupby("frame")])
    plot = TimeSeriesPlot(viewer)
    viewer.window.add_dock_widget(plot)
    run = PredictionRun(n_frames=N_FRAMES, frame_interval_h=INTERVAL, onset_h=ONSET,
                        mode="tile grid")
    session_for(viewer).set_results(viewer.layers["well"], layers.table, run)
    return viewer, plot, layers


def test_summary_and_onset_numbers():
    table = _table(tile_grid(64, 64, TileSpec(32)))
    summary = frame_summary(table)
    assert summary["frame"].tolist() == list(range(N_FRAMES))
    row = summary.set_index("frame").loc[10]
    assert row.mean_p_infected == pytest.approx((0.2 + 3 * 0.9) / 4)
    assert row.fraction_infected == pytest.approx(0.75)
    assert row.median_duration_h == pytest.approx(5.0 - ONSET + 0.2)  # tiles 1..3: +0.1..0.3
    assert np.isnan(summary.set_index("frame").loc[0, "median_duration_h"])
    fit = estimate_onset(summary)
    assert fit.onset_h == pytest.approx(ONSET - 0.2) and fit.n_votes == N_FRAMES - 4
    assert fit.onset_low_h == fit.onset_high_h == fit.onset_h  # the votes agree: no spread


def test_curves_marker_and_click(plotted, qtbot):
    viewer, plot, _ = plotted
    assert plot.image_name == "well"
    hours, mean_p = plot.ax_p.lines[1].get_data()  # lines[0] is the frame marker
    np.testing.assert_allclose(hours, np.arange(N_FRAMES) * INTERVAL)
    assert "estimated onset: 1.80 h" in plot.onset_label.text()
    labels = [line.get_label() for line in plot.ax_t.lines]
    assert "ideal t - 2 h" in labels and "estimated onset 1.80 h" in labels
    fitted = plot.ax_t.lines[labels.index("fitted clock")]
    np.testing.assert_allclose(fitted.get_ydata(), np.maximum(fitted.get_xdata() - 1.8, 0))

    # the marker follows the slider without a full redraw: same artists, new x
    lines_before = list(plot.ax_p.lines)
    viewer.dims.set_point(0, 7)  # moved now, or once the render under way is shown
    qtbot.waitUntil(lambda: plot.markers[0].get_xdata()[0] == pytest.approx(7 * INTERVAL),
                    timeout=10_000)
    assert plot.markers[1].get_xdata()[0] == pytest.approx(7 * INTERVAL)
    assert list(plot.ax_p.lines) == lines_before

    # a click on the plot moves the slider to the nearest frame
    plot.canvas.draw()
    x, y = plot.ax_t.transData.transform((3.1, 1.0))
    event = MouseEvent("button_press_event", plot.canvas, x, y, button=1)
    plot.canvas.callbacks.process("button_press_event", event)
    assert viewer.dims.current_step[0] == 6
    assert plot.markers[0].get_xdata()[0] == pytest.approx(3.0)


def _axes_drawn_on(plot, monkeypatch) -> list[int]:
    """The threads the plot's axes are drawn on, from now on."""
    threads = []
    for ax in (plot.ax_p, plot.ax_t):
        def draw(renderer, real=ax.draw):
            threads.append(threading.get_ident())
            return real(renderer)
        monkeypatch.setattr(ax, "draw", draw)
    return threads


def test_the_plot_is_drawn_off_the_gui_thread(plotted, qtbot, monkeypatch):
    """The marker follows the time slider, and a new table comes in (a run's update, twice
    a second): matplotlib draws the plot on a thread of its own and the canvas shows it
    once whole. Drawn on the GUI thread, a part per turn, it held the viewer 65-180 ms a
    part (docs/benchmarks.md, GUI-thread stalls)."""
    viewer, plot, _ = plotted
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=10_000)
    threads = _axes_drawn_on(plot, monkeypatch)
    drawn = []
    plot.canvas.mpl_connect("draw_event", drawn.append)
    before = bytes(plot.canvas.buffer_rgba())
    viewer.dims.set_point(0, 7)  # what moving the slider does
    qtbot.waitUntil(lambda: bool(drawn), timeout=10_000)
    assert threads and threading.get_ident() not in threads
    assert drawn[-1].renderer is plot.canvas.renderer and not plot.figure.stale
    assert bytes(plot.canvas.buffer_rgba()) != before  # the moved marker is shown

    threads.clear()
    drawn.clear()
    before = bytes(plot.canvas.buffer_rgba())
    tiles = viewer.layers[layer_name("well", "tiles")]
    tiles.selected_data = {1}  # a tile's curves join the plot
    qtbot.waitUntil(lambda: bool(drawn), timeout=10_000)
    assert threads and threading.get_ident() not in threads
    assert bytes(plot.canvas.buffer_rgba()) != before


def test_edits_during_a_draw_leave_no_error_and_the_last_drawing_shown(plotted, qtbot,
                                                                         monkeypatch, capsys):
    """The slider and the selection change while the plot is being drawn: each change
    stops the draw in progress and starts another; no error, and what the canvas finally
    shows is the figure as it is last (a fresh draw of it gives the same pixels)."""
    viewer, plot, _ = plotted
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=10_000)
    gui = threading.get_ident()
    drawing = threading.Event()
    real = plot.ax_t.draw

    def slow_draw(renderer):  # the change below comes while the draw is in this axes
        if threading.get_ident() != gui:
            drawing.set()
            time.sleep(0.05)
        return real(renderer)

    monkeypatch.setattr(plot.ax_t, "draw", slow_draw)
    tiles = viewer.layers[layer_name("well", "tiles")]
    for step in range(8):
        drawing.clear()
        if step % 2:
            tiles.selected_data = {step % 4}
        else:
            viewer.dims.set_point(0, step + 1)
        qtbot.waitUntil(drawing.is_set, timeout=10_000)
    viewer.dims.set_point(0, 9)
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=10_000)
    shown = bytes(plot.canvas.buffer_rgba())
    assert list(plot.items) == ["tile (1, 1)"]
    assert plot.markers[0].get_xdata()[0] == pytest.approx(9 * INTERVAL)
    plot.canvas.draw()  # matplotlib's own draw of the figure as it is now
    assert bytes(plot.canvas.buffer_rgba()) == shown
    assert "Traceback" not in capsys.readouterr().err


def test_a_render_that_raises_is_dropped_and_done_again(plotted, qtbot, monkeypatch, capsys):
    """A render that raises (the figure changed under it despite the rules) never reaches
    napari: it is dropped, its traceback printed, and the figure rendered again."""
    viewer, plot, _ = plotted
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=10_000)
    gui, real, raised = threading.get_ident(), plot.ax_t.draw, []

    def draw(renderer):
        if threading.get_ident() != gui and not raised:
            raised.append(True)
            raise RuntimeError("changed under the render")
        return real(renderer)

    monkeypatch.setattr(plot.ax_t, "draw", draw)
    drawn = []
    plot.canvas.mpl_connect("draw_event", drawn.append)
    viewer.dims.set_point(0, 9)  # the marker moves
    qtbot.waitUntil(lambda: bool(drawn), timeout=10_000)
    assert raised and drawn[-1].renderer is plot.canvas.renderer
    assert "changed under the render" in capsys.readouterr().err


def test_the_plot_follows_a_playing_slider(plotted, qtbot, monkeypatch):
    """The slider moves every turn (napari's play button) while the plot takes a while to
    render: renders are shown as they are done, the marker where the slider was. A move
    that stopped the render under way showed none until the slider stopped."""
    viewer, plot, _ = plotted
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=10_000)
    gui, real = threading.get_ident(), plot.ax_t.draw

    def slow_draw(renderer):
        if threading.get_ident() != gui:
            time.sleep(0.05)
        return real(renderer)

    monkeypatch.setattr(plot.ax_t, "draw", slow_draw)
    drawn = []
    plot.canvas.mpl_connect("draw_event", drawn.append)
    for move in range(1, 1000):
        viewer.dims.set_point(0, move % N_FRAMES)
        qtbot.wait(10)
        if len(drawn) >= 2:
            break
    assert len(drawn) >= 2  # shown while the slider kept moving
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=10_000)
    frame = viewer.dims.current_step[0]
    assert plot.markers[0].get_xdata()[0] == pytest.approx(frame * INTERVAL)


def test_a_pan_with_the_toolbar_is_drawn_off_the_gui_thread(plotted, qtbot, monkeypatch):
    """matplotlib's toolbar pans the plot: the figure is rendered off the GUI thread too,
    and Home brings the view back."""
    from matplotlib.backend_bases import MouseButton

    _, plot, _ = plotted
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=10_000)
    threads = _axes_drawn_on(plot, monkeypatch)
    canvas, xlim = plot.canvas, plot.ax_t.get_xlim()
    x, y = plot.ax_t.transData.transform((3.0, 1.0))
    plot.toolbar.pan()
    for name, dx, buttons in (("button_press_event", 0, None),
                              ("motion_notify_event", 20, {MouseButton.LEFT}),
                              ("motion_notify_event", 40, {MouseButton.LEFT}),
                              ("button_release_event", 40, None)):
        kwargs = {"buttons": buttons} if buttons else {"button": MouseButton.LEFT}
        canvas.callbacks.process(name, MouseEvent(name, canvas, x + dx, y, **kwargs))
        qtbot.wait(20)
    assert plot.ax_t.get_xlim()[0] < xlim[0]  # dragged right: earlier hours in view
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=10_000)
    assert threads and threading.get_ident() not in threads
    [home] = [a for a in plot.toolbar.actions() if a.text() == "Home"]
    home.trigger()
    assert plot.ax_t.get_xlim() == pytest.approx(xlim)


def test_selected_tiles_get_curves_and_export(plotted, tmp_path):
    viewer, plot, layers = plotted
    tiles = viewer.layers[layer_name("well", "tiles")]
    features = tiles.features
    pick = features.index[(features.tile_row == 1) & (features.tile_col == 0)][0]
    tiles.selected_data = {int(pick)}
    assert list(plot.items) == ["tile (1, 0)"]
    assert "tile (1, 0)" in [line.get_label() for line in plot.ax_p.lines]

    png = plot.export_png(tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(plot.export_csv(tmp_path / "plot.csv"))
    assert len(csv) == N_FRAMES
    np.testing.assert_allclose(csv["mean_p_infected"], plot.summary["mean_p_infected"])
    np.testing.assert_allclose(csv["ideal_duration_h"], np.maximum(csv["hours"] - ONSET, 0))
    table = tiles.metadata[PREDICTION_TABLE]
    series = table[(table.tile_row == 1) & (table.tile_col == 0)].sort_values("frame")
    np.testing.assert_allclose(csv["p_infected tile (1, 0)"], series["p_infected"])


def test_a_selected_tile_shows_its_clock_with_its_band(plotted):
    from napari_infection_clock.core.calibration import apply_calibration
    from napari_infection_clock.core.clock import with_clock

    viewer, plot, layers = plotted
    rng = np.random.default_rng(0)
    table = layers.table.copy()
    noisy = table["pred_class"] == 1
    table.loc[noisy, "pred_time_h"] += rng.normal(0, 0.5, noisy.sum())
    calibration = {"temperature": 1.0, "level": 0.9,
                   "time_halfwidth_h": {"infected": 1.0, "uninfected": 3.0},
                   "consistent_halfwidth_h": {"infected": 0.5, "uninfected": 2.0}}
    table = apply_calibration(with_clock(table), calibration)
    session_for(viewer).set_results(viewer.layers["well"], table,
                                    replace(plot.info, interval_level=0.9))
    tiles = viewer.layers[layer_name("well", "tiles")]
    pick = tiles.features.index[(tiles.features.tile_row == 1) & (tiles.features.tile_col == 1)]
    tiles.selected_data = {int(pick[0])}
    labels = [line.get_label() for line in plot.ax_t.lines]
    assert "tile (1, 1) clock" in labels
    line = plot.ax_t.lines[labels.index("tile (1, 1) clock")]
    tile = table[(table.tile_row == 1) & (table.tile_col == 1)]
    onset, low, high = tile[["onset_h", "onset_low_h", "onset_high_h"]].iloc[0]
    assert low < onset < high
    np.testing.assert_allclose(line.get_ydata(), np.maximum(line.get_xdata() - onset, 0))
    band = plot.ax_t.collections[-1].get_paths()[0].vertices  # the tile's band, last drawn
    assert band[:, 1].max() == pytest.approx(max(plot.summary["hours"].max() - low, 0))
    assert "(" in plot.onset_label.text() and "90 %" in plot.onset_label.text()
    # the item's answer at the current frame, with its calibrated interval
    viewer.dims.set_point(0, 10)
    now = tile[tile.frame == 10].iloc[0]
    assert plot.answer_label.text() == (
        f"at 5.0 h: tile (1, 1): infected for {now.consistent_time_h:.1f} h "
        f"({now.consistent_time_h - 0.5:.1f}-{now.consistent_time_h + 0.5:.1f} h, 90 %)")
    # a frame unlike the training data (core.novelty): no answer, not "nan-nan h"
    table["out_of_distribution"] = (table.tile_row == 1) & (table.tile_col == 1) & (table.frame == 8)
    session_for(viewer).set_results(viewer.layers["well"], apply_calibration(table, calibration),
                                    replace(plot.info, interval_level=0.9))
    tiles.selected_data = {int(pick[0])}
    viewer.dims.set_point(0, 8)
    assert plot.answer_label.text() == "at 4.0 h: tile (1, 1): no answer: unlike the training data"


def test_the_band_and_answer_say_how_the_clock_interval_was_calibrated(plotted):
    """A model calibrated over validation regions: the band is the calibrated interval of
    the consistent times; with too few regions there is no band and the answer says why;
    an older model's interval is said to be uncalibrated."""
    from napari_infection_clock.core.calibration import (
        REGION_METHOD,
        apply_calibration,
        clock_interval,
    )
    from napari_infection_clock.core.clock import with_clock

    viewer, plot, layers = plotted
    regions = {"method": REGION_METHOD, "halfwidth_h": {"infected": 1.5, "uninfected": 2.0},
               "n_regions": {"infected": 12, "uninfected": 12}, "regions_needed": 9}
    calibration = {"temperature": 1.0, "level": 0.9, "consistent": regions,
                   "time_halfwidth_h": {"infected": 1.0, "uninfected": 3.0}}
    tiles = viewer.layers[layer_name("well", "tiles")]
    pick = int(tiles.features.index[(tiles.features.tile_row == 1)
                                    & (tiles.features.tile_col == 1)][0])

    def show(calibration):
        table = apply_calibration(with_clock(layers.table), calibration)
        session_for(viewer).set_results(viewer.layers["well"], table, replace(
            plot.info, interval_level=0.9, clock_interval=clock_interval(calibration)))
        tiles.selected_data = {pick}
        viewer.dims.set_point(0, 10)
        tile = table[(table.tile_row == 1) & (table.tile_col == 1)].sort_values("frame")
        bands = [c.get_paths()[0].vertices for c in plot.ax_t.collections]
        return tile, tile[tile.frame == 10].iloc[0], bands

    tile, now, bands = show(calibration)
    assert any(np.isclose(b[:, 1].max(), tile.consistent_high_h.max())
               and np.isclose(b[:, 1].min(), tile.consistent_low_h.min()) for b in bands)
    assert plot.answer_label.text() == (
        f"at 5.0 h: tile (1, 1): infected for {now.consistent_time_h:.1f} h "
        f"({now.consistent_low_h:.1f}-{now.consistent_high_h:.1f} h, 90 %)")
    few = {**regions, "halfwidth_h": {"infected": np.inf, "uninfected": np.inf},
           "n_regions": {"infected": 1, "uninfected": 1}}
    tile, now, bands = show({**calibration, "consistent": few})
    assert not any(np.isclose(b[:, 1].max(), 48.0) for b in bands)  # no 0-48 h band
    assert plot.answer_label.text() == (
        f"at 5.0 h: tile (1, 1): infected for {now.consistent_time_h:.1f} h "
        "(90 % interval unbounded: 1 validation region, 9 needed)")
    older = {k: v for k, v in calibration.items() if k != "consistent"}
    tile, now, _ = show({**older, "consistent_halfwidth_h": {"infected": 0.5, "uninfected": 2.0}})
    assert plot.answer_label.text().endswith(", 90 %, uncalibrated)")


def test_regions_selected_in_their_layer(make_napari_viewer):
    from napari_infection_clock.ui.overlays import region_grid

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((N_FRAMES, 64, 64), np.uint16), name="well")
    regions = viewer.add_shapes(
        [
            np.array([[0, 0], [0, 20], [30, 20], [30, 0]]) - 0.5,
            np.array([[40, 40], [40, 63], [63, 63], [63, 40]]) - 0.5,
        ],
        shape_type="rectangle",
        name="cells",
    )
    grid = region_grid(64, 64, np.array([[0, 0, 30, 20], [40, 40, 63, 63]]))
    layers = PredictionLayers(viewer, image, grid, N_FRAMES, 48.0)
    while not layers.make_next():
        pass
    layers.add_frames([rows for _, rows in _table(grid).groupby("frame")])
    plot = TimeSeriesPlot(viewer)
    viewer.window.add_dock_widget(plot)  # docked, as a user has it (see test_ui_theme.py)
    run = PredictionRun(n_frames=N_FRAMES, frame_interval_h=INTERVAL, onset_h=ONSET,
                        mode="regions (Shapes rectangles)", regions_id=image_id(regions))
    session_for(viewer).set_results(viewer.layers["well"], layers.table, run)
    regions.selected_data = {1}
    assert list(plot.items) == ["region 1"]


def test_empty_plot_is_calm(make_napari_viewer):
    viewer = make_napari_viewer()
    plot = TimeSeriesPlot(viewer)
    viewer.window.add_dock_widget(plot)
    assert "no prediction yet" in plot.onset_label.text()
    viewer.dims.set_point(0, 0)  # no crash without data
    assert plot.table().empty


def test_closed_dock_stops_listening(plotted):
    viewer, plot, layers = plotted
    viewer.window.remove_dock_widget(plot)  # what the dock's close button does
    lines, markers_x = list(plot.ax_p.lines), plot.markers[0].get_xdata()[0]
    viewer.layers.remove(layer_name("well", "tiles"))  # no redraw, no error
    viewer.dims.set_point(0, 9)
    session_for(viewer).set_results(viewer.layers["well"], layers.table,
                                    PredictionRun(n_frames=N_FRAMES))
    session_for(viewer).labels_changed.emit(annotation_key(viewer.layers["well"]))
    assert list(plot.ax_p.lines) == lines
    assert plot.markers[0].get_xdata()[0] == markers_x
    assert "estimated onset: 1.80 h" in plot.onset_label.text()
    plot.close()  # a second teardown is harmless


def test_plot_follows_the_prediction_legends_hide_nothing_exports_name_it(plotted, tmp_path):
    """Item 7: legends off the data, the plot follows a new prediction or the active image,
    the figure (and its PNG) names the well, "plot" as CSV name gets .csv."""
    viewer, plot, layers = plotted
    assert points_under_legends(plot.figure) == 0
    assert plot.figure._suptitle.get_text() == "well"

    mock = viewer.add_image(np.zeros((N_FRAMES, 64, 64), np.uint16), name="mock")
    table = _table(tile_grid(64, 64, TileSpec(32))).assign(image="mock")
    session_for(viewer).set_results(
        mock, table, PredictionRun(n_frames=N_FRAMES, frame_interval_h=INTERVAL))
    assert plot.image_name == "mock"  # a new prediction is followed
    assert plot.figure._suptitle.get_text() == "mock"
    viewer.layers.selection.active = viewer.layers[layer_name("well", "probability")]
    assert plot.image_name == "well"  # and so is the image the user turns to
    viewer.layers.selection.active = mock
    assert plot.image_name == "mock"

    assert plot.export_csv(tmp_path / "plot") == tmp_path / "plot.csv"
    assert (tmp_path / "plot.csv").is_file() and not (tmp_path / "plot").exists()
    assert plot.export_png(tmp_path / "figure").name == "figure.png"


def test_selecting_tiles_does_not_refit_the_images_clock(plotted, monkeypatch):
    """The whole image's bootstrap fit runs on the GUI thread: once per table, not again on
    every redraw that a selection or the chooser causes."""
    from napari_infection_clock.ui import timeseries

    viewer, plot, _ = plotted
    fits = []
    real = timeseries.fit_region
    monkeypatch.setattr(timeseries, "fit_region", lambda *a, **k: fits.append(1) or real(*a, **k))
    onset = plot.onset
    tiles = viewer.layers[layer_name("well", "tiles")]
    for pick in ({0}, {1}, {0, 1}):
        tiles.selected_data = pick
    assert len(plot.items) == 2 and plot.onset == onset
    assert fits == []


def test_the_plot_is_drawn_only_when_its_marker_or_answer_moves(make_napari_viewer, qtbot):
    """napari's dims announce a step when a run adds its layers (the same frame) and while
    the slider moves before any prediction (no marker to move): each was a full draw of the
    plot (55-120 ms of the GUI thread on a 2-core machine, docs/benchmarks.md, GUI-thread
    stalls). The plot draws when its marker moves, not otherwise."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((N_FRAMES, 64, 64), np.uint16), name="well")
    plot = TimeSeriesPlot(viewer)
    viewer.window.add_dock_widget(plot)
    qtbot.waitUntil(lambda: not plot.figure.stale, timeout=5_000)
    QApplication.processEvents()
    drawn = []
    plot.canvas.mpl_connect("draw_event", drawn.append)
    for frame in (3, 4, 5):  # no prediction yet: nothing to move
        viewer.dims.set_point(0, frame)
        QApplication.processEvents()
    viewer.add_image(np.zeros((2 * N_FRAMES, 1, 1), np.float32), scale=(1, 64, 64))
    qtbot.wait(200)
    assert drawn == []

    image = viewer.layers["well"]
    grid = tile_grid(64, 64, TileSpec(32))
    table = _table(grid)
    session_for(viewer).set_results(image, table, PredictionRun(
        n_frames=N_FRAMES, frame_interval_h=INTERVAL, onset_h=ONSET, mode="tile grid"))
    qtbot.waitUntil(lambda: bool(drawn), timeout=5_000)
    drawn.clear()
    viewer.dims.set_point(0, 6)  # the slider moved: the marker follows
    qtbot.waitUntil(lambda: bool(drawn), timeout=5_000)
    assert plot.markers[0].get_xdata()[0] == pytest.approx(6 * INTERVAL)


def test_the_first_prediction_is_plotted_once(make_napari_viewer, monkeypatch):
    """The plot's curves are made on the GUI thread (40-70 ms on 2 cores): the first
    prediction it hears of (its image added to the chooser, which chose it) is plotted
    once, not once for the chooser and again for the results."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((N_FRAMES, 64, 64), np.uint16), name="well")
    grid = tile_grid(64, 64, TileSpec(32))
    plot = TimeSeriesPlot(viewer)
    viewer.window.add_dock_widget(plot)
    plotted = []
    real_plot = plot._plot
    monkeypatch.setattr(plot, "_plot", lambda: (plotted.append(plot.image_key), real_plot()))
    run = PredictionRun(n_frames=N_FRAMES, frame_interval_h=INTERVAL, onset_h=ONSET,
                        mode="tile grid")
    session_for(viewer).set_results(image, _table(grid), run)
    assert plotted == [image_id(image)]
    assert plot.image_name == "well" and len(plot.summary) == N_FRAMES


def _plain(values) -> list:
    """``values`` as lists of floats that compare equal where both are NaN."""
    values = np.asarray(values, float)
    return np.where(np.isnan(values), np.inf, values).tolist()


def _shown(plot) -> dict:
    """What the user sees of the plot: every curve, band, legend entry, label and limit."""
    return {
        "labels": [[line.get_label() for line in ax.lines] for ax in (plot.ax_p, plot.ax_t)],
        "lines": [_plain(line.get_xydata())
                  for ax in (plot.ax_p, plot.ax_t) for line in ax.lines],
        "bands": [[_plain(path.vertices) for path in band.get_paths()]
                  for ax in (plot.ax_p, plot.ax_t) for band in ax.collections],
        "legends": [[text.get_text() for text in ax.get_legend().get_texts()]
                    for ax in (plot.ax_p, plot.ax_t)],
        "limits": [(ax.get_xlim(), ax.get_ylim()) for ax in (plot.ax_p, plot.ax_t)],
        "onset": plot.onset_label.text(),
        "title": plot.figure._suptitle.get_text(),
    }


def test_a_run_publishing_more_frames_moves_the_curves_there_are(plotted):
    """A run publishes its table twice a second with the frames finished since: the plot
    moves its curves, fit and legend entries onto it instead of making them and the legends
    anew (40-100 ms of the GUI thread each on 2 cores), and shows what a plot made for the
    whole table shows. Another selection still makes them anew."""
    viewer, plot, _ = plotted
    tiles = viewer.layers[layer_name("well", "tiles")]
    tiles.selected_data = {1}  # a tile's curves join the plot
    table = _table(tile_grid(64, 64, TileSpec(32)))
    table.loc[table["frame"] >= 8, "pred_time_h"] += 0.5  # later frames move the fit
    session, image = session_for(viewer), viewer.layers["well"]

    def publish(n_frames):  # what the prediction dock does, a new run record each time
        session.set_results(image, table.iloc[:4 * n_frames].copy(), PredictionRun(
            n_frames=N_FRAMES, frame_interval_h=INTERVAL, onset_h=ONSET, mode="tile grid"))

    publish(8)  # a new run: fewer frames than shown, made anew
    artists = [*plot.ax_p.lines, *plot.ax_t.lines, *plot.ax_t.collections]
    legends = [plot.ax_p.get_legend(), plot.ax_t.get_legend()]
    assert "estimated onset 1.80 h" in _shown(plot)["legends"][1]
    for n_frames in (10, N_FRAMES):
        publish(n_frames)
    assert [*plot.ax_p.lines, *plot.ax_t.lines, *plot.ax_t.collections] == artists
    assert [plot.ax_p.get_legend(), plot.ax_t.get_legend()] == legends
    shown = _shown(plot)
    np.testing.assert_allclose(plot.ax_p.lines[1].get_xdata(), np.arange(N_FRAMES) * INTERVAL)
    assert "estimated onset 1.80 h" not in shown["legends"][1]  # the fit moved, and said so

    fresh = TimeSeriesPlot(viewer)  # made for the whole table at once
    viewer.window.add_dock_widget(fresh)
    assert shown == _shown(fresh)

    before = set(plot.items)
    tiles.selected_data = {2}
    assert set(plot.ax_p.lines) & set(artists) == {plot.markers[0]}  # made anew
    assert len(plot.items) == 1 and set(plot.items) != before


def test_a_well_labelled_mock_has_no_ideal_clock(plotted, qtbot):
    """The ideal clock (duration t - onset) is the reference of an infected well: on a well
    the user labelled mock in the annotation dock it was still drawn from the prediction's
    onset, as if the mock well should have been infected, and exported so."""
    from napari_infection_clock.ui.annotation_widget import AnnotationWidget

    viewer, plot, _ = plotted
    annotate = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    annotate.condition_combo.setCurrentText("mock")  # picked in the dock's chooser

    def ideal_drawn() -> bool:
        return any(line.get_label().startswith("ideal") for line in plot.ax_t.lines)

    qtbot.waitUntil(lambda: not ideal_drawn(), timeout=10_000)
    assert "mock" in plot.onset_label.text() and "set onset" not in plot.onset_label.text()
    assert "ideal_duration_h" not in plot.table()
    annotate.condition_combo.setCurrentText("infected")
    qtbot.waitUntil(ideal_drawn, timeout=10_000)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = ModelConfig("resnet18", hidden_dim=16)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(32),
                          time=TimePolicy(frame_interval_h=0.5, onset_h=2.0, clamp=(0.0, 24.0)))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, build_model(config, init="random"), meta)


@pytest.fixture
def predicted_in_a_window(make_napari_viewer, qtbot, checkpoint):
    """A user's session: a shown viewer of 1900 x 1000, a well opened, the Predict and
    plot docks opened from the Plugins menu, a grid of 16 tiles predicted with Predict."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1900, 1000)
    data, meta = sample_pair(n_frames=8, size=64, seed=1)["infected"]
    viewer.add_image(data, name="well", metadata=dict(meta))
    predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")[1]
    plot = viewer.window.add_plugin_dock_widget(PLUGIN, "Infection time-series plot")[1]
    predict.checkpoint.value = checkpoint
    predict.device.value = "cpu"
    predict.mode.value = MODE_TILES
    predict.tile_size.value = 16
    predict.stride.value = 0
    ended = []
    predict.finished.connect(ended.append)
    predict.run_button.native.click()
    qtbot.waitUntil(lambda: bool(ended), timeout=RUN_TIMEOUT_MS)
    assert ended[0].startswith("done"), ended
    QApplication.processEvents()
    return viewer, plot


def _axes_heights(plot) -> list[float]:
    """The plot's axes' heights in pixels, laid out for the canvas's size."""
    plot.canvas.draw()
    renderer = plot.canvas.get_renderer()
    return [ax.get_window_extent(renderer).height for ax in (plot.ax_p, plot.ax_t)]


def _legend_texts(figure) -> list[str]:
    legends = [ax.get_legend() for ax in figure.axes] + list(figure.legends)
    return [text.get_text() for legend in legends if legend is not None
            for text in legend.get_texts()]


def test_selected_items_are_named_once_and_leave_the_axes_their_height(predicted_in_a_window):
    """Issue 9, item 7 (notes/new-user.md, item 1): each selected tile added an entry to
    the upper legend and two (curve, clock) to the lower one, both above their axes: with
    2 tiles in a 1900 x 1000 window the lower axes shrank to ~40 px, with 8 to nothing.
    Each item is named once, the axes keep their height from 1 to 8 items, and no legend
    covers data. (Before, in this window: 78 px each with 1 tile, 33 with 8.)"""
    viewer, plot = predicted_in_a_window
    tiles = viewer.layers[layer_name("well", "tiles")]
    tiles.selected_data = {5}
    one = _axes_heights(plot)
    tiles.selected_data = set(range(8))  # the most the plot draws
    assert len(plot.items) == 8
    eight = _axes_heights(plot)
    height = plot.figure.bbox.height
    assert min(eight) >= 0.9 * min(one), (one, eight, height)
    assert min(eight) >= 0.2 * height, (eight, height)  # before: 33 px of 312 at 8 items
    texts = _legend_texts(plot.figure)
    for label in plot.items:
        assert sum(label in text for text in texts) == 1, (label, texts)
    assert points_under_legends(plot.figure) == 0
    # each item in a colour of its own, none the well's curves' or the ideal line's (the 7th
    # and 8th were the well's mean P(infected) and fraction infected, a 4th grey as ideal)
    colours = {}
    for line in plot.ax_p.get_lines() + plot.ax_t.get_lines():
        colours.setdefault(line.get_label(), set()).add(to_hex(line.get_color()))
    items = [colour for label in plot.items for colour in colours[label]]
    wells = set().union(*(found for label, found in colours.items()
                          if not label.startswith(("_", *plot.items))))
    assert len(set(items)) == 8 and not set(items) & wells, (colours, wells)


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_export_png_is_a_print_sized_figure_whatever_the_docks_size(predicted_in_a_window,
                                                                     tmp_path, monkeypatch):
    """Issue 9, item 7 (notes/new-user.md, item 7): "Export PNG..." wrote the canvas's
    size on screen (708 x 418 px), too small for a paper, and another size for each dock
    size. It writes one print size (300 dpi), at least twice the screen's, and the figure
    on screen keeps its size."""
    viewer, plot = predicted_in_a_window
    [button] = [b for b in plot.findChildren(QPushButton) if b.text() == "Export PNG..."]
    asked = []

    def save_as(parent, caption, suggested, kinds):  # the user types a name in the dialog
        asked.append(suggested)
        return str(tmp_path / f"figure{len(asked)}"), kinds

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_as)
    shown = plot.canvas.get_width_height(physical=True)
    inches = tuple(plot.figure.get_size_inches())
    button.click()
    size = _png_size(tmp_path / "figure1.png")
    assert size[0] >= 2 * shown[0] and size[1] >= 2 * shown[1], (size, shown)
    assert tuple(plot.figure.get_size_inches()) == inches  # the screen's figure untouched
    assert "well" in asked[0]

    plot.canvas.setMinimumSize(240, 160)
    viewer.window._qt_window.resize(1300, 800)  # a smaller window: a smaller plot
    QApplication.processEvents()
    assert plot.canvas.get_width_height(physical=True) != shown
    button.click()
    assert _png_size(tmp_path / "figure2.png") == size

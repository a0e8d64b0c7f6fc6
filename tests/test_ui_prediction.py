"""The prediction widget in a real napari viewer, with a real (tiny) resnet18 checkpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from napari import save_layers
from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication

from napari_infection_clock.core.checkpoint import CheckpointMeta, save_checkpoint
from napari_infection_clock.core.clock import CLOCK_COLUMNS
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.novelty import NOVELTY_COLUMNS
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.results import RESULT_COLUMNS
from napari_infection_clock.core.synthetic import sample_pair
from napari_infection_clock.core.targets import TimePolicy
from napari_infection_clock.ui.layer_roles import PREDICTION_TABLE, image_id
from napari_infection_clock.ui.overlays import layer_name
from napari_infection_clock.ui.prediction_widget import (
    MODE_REGIONS,
    MODE_TILES,
    MODE_WHOLE,
    SOURCE_SESSION,
    PredictionWidget,
)
from napari_infection_clock.ui.state import SessionModel, session_for
from napari_infection_clock.ui.writer import write_prediction_csv

from .layer_list import click_eye, click_layer, rename_layer
from .long_well import FRAMES as LONG_WELL_FRAMES
from .long_well import long_well
from .native_tiles import native_checkpoint
from .notices import notifications_said

PLUGIN = "napari-infection-clock"
KINDS = ("probability", "duration", "class", "tiles")
#: How long a test waits for a real run to end: a guard against a hang, never a speed test.
#: A run of the 8-frame sample is 6-7 s of CPU (load 2.5: the checkpoint loaded and its
#: model folded, 32 tiles, four layers made a tick apart and painted on software OpenGL,
#: the clocks), and a nice 19 test process at load 12 gets a small share of the 2 cores:
#: 30 s was not enough twice (test_outputs_can_be_read).
RUN_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = ModelConfig("resnet18", hidden_dim=16)
    meta = CheckpointMeta(
        model=config,
        preprocessing=Preprocessing(32),
        time=TimePolicy(frame_interval_h=0.5, onset_h=2.0, clamp=(0.0, 24.0)),
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, build_model(config, init="random"), meta)


@pytest.fixture(scope="module")
def sample():
    data, meta = sample_pair(n_frames=8, size=64, seed=1)["infected"]
    return data, meta


def _setup(make_napari_viewer, sample, checkpoint, show=False, **values):
    """A viewer with the sample; with ``show``, a shown one and the dock opened from the
    Plugins menu (napari then hands the dock a proxy of the viewer, as a user's has)."""
    viewer = make_napari_viewer(show=show)
    data, meta = sample
    image = viewer.add_image(data, name="well", metadata=dict(meta))
    if show:
        widget = viewer.window.add_plugin_dock_widget("napari-infection-clock",
                                                      "Predict infection")[1]
    else:
        widget = PredictionWidget(viewer)
        viewer.window.add_dock_widget(widget)
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    for key, value in values.items():
        getattr(widget, key).value = value
    return viewer, image, widget


def _run(qtbot, widget, timeout=RUN_TIMEOUT_MS):
    messages = []
    widget.finished.connect(messages.append)
    assert widget.run(), widget.status.value
    qtbot.waitUntil(lambda: bool(messages), timeout=timeout)
    return messages[0]


def test_tile_grid_layers_sit_on_their_tiles(
    make_napari_viewer, qtbot, sample, checkpoint, tmp_path
):
    viewer, image, widget = _setup(
        make_napari_viewer, sample, checkpoint, mode=MODE_TILES, tile_size=32, stride=0
    )
    assert widget.frame_interval_h.value == 0.5  # from the layer metadata
    assert widget.onset_h.value == 1.0  # the layer's onset wins over the checkpoint's
    viewer.dims.set_point(0, 5)

    message = _run(qtbot, widget)
    assert message.startswith("done: 8 frames"), message
    prob, dur, cls, tiles = (viewer.layers[layer_name("well", k)] for k in KINDS)
    table = tiles.metadata[PREDICTION_TABLE]
    assert list(table.columns) == [*RESULT_COLUMNS, *NOVELTY_COLUMNS, *CLOCK_COLUMNS]
    assert len(table) == 8 * 4
    # one rectangle per tile, on every frame (2D), with its row, column and box
    assert tiles.ndim == 2 and len(tiles.data) == len(tiles.features) == 4
    rectangle_of = {(r.tile_row, r.tile_col): i for i, r in enumerate(tiles.features.itertuples())}
    assert table["frame"].iloc[0] == 5  # the frame on screen came first
    assert prob.data.shape == dur.data.shape == cls.data.shape == (8, 2, 2)
    assert not np.isnan(prob.data).any()
    assert tuple(prob.contrast_limits) == (0.0, 1.0)
    assert tuple(dur.contrast_limits) == (0.0, 24.0)  # the checkpoint's clamp maximum

    for row in table.itertuples():
        cell = (row.frame, row.tile_row, row.tile_col)
        assert prob.data[cell] == pytest.approx(row.p_infected)
        assert cls.data[cell] == row.pred_class + 1
        if row.pred_class == 1:
            assert dur.data[cell] == pytest.approx(row.pred_time_h)
        else:
            assert np.isnan(dur.data[cell])
        # the cell's centre and edges land on the tile's pixels in world coordinates
        centre = prob.data_to_world(cell)
        expected = image.data_to_world(
            (row.frame, (row.y0 + row.y1 - 1) / 2, (row.x0 + row.x1 - 1) / 2)
        )
        np.testing.assert_allclose(centre, expected)
        corner = prob.data_to_world((row.frame, row.tile_row - 0.5, row.tile_col - 0.5))
        np.testing.assert_allclose(
            corner[1:], image.data_to_world((0, row.y0 - 0.5, row.x0 - 0.5))[1:]
        )
        # the rectangle of this row's tile covers the same pixels
        rect = tiles.data[rectangle_of[(row.tile_row, row.tile_col)]]
        assert rect[:, 0].min() == row.y0 - 0.5 and rect[:, 0].max() == row.y1 - 0.5
        assert rect[:, 1].min() == row.x0 - 0.5 and rect[:, 1].max() == row.x1 - 0.5

    # the onset map: one value per tile, the same for every frame, with its colorbar
    onset = viewer.layers[layer_name("well", "onset")]
    assert onset.data.shape == (2, 2) and onset.colorbar.visible
    per_tile = table.groupby(["tile_row", "tile_col"])["onset_h"].agg(["min", "max"])
    for (r, c), row in per_tile.iterrows():  # the map is float32, the table float64
        np.testing.assert_allclose([row["min"], row["max"]], [onset.data[r, c]] * 2, rtol=1e-6)
    np.testing.assert_allclose(onset.data_to_world((1, 1)), prob.data_to_world((0, 1, 1))[1:])

    # the tiles layer's table is the shared result and what the writer saves
    well = image_id(viewer.layers["well"])
    pd.testing.assert_frame_equal(session_for(viewer).results[well], table)
    written = write_prediction_csv(str(tmp_path / "t.csv"), tiles.data, tiles._get_state())
    again = pd.read_csv(written[0])
    pd.testing.assert_frame_equal(again, table.reset_index(drop=True), check_dtype=False)
    # and napari's own File > Save Selected Layers goes through the plugin's writer
    saved = save_layers(str(tmp_path / "via_napari.csv"), [tiles], plugin="napari-infection-clock")
    pd.testing.assert_frame_equal(pd.read_csv(saved[0]), again)

    # a second run (whole frame now) reuses the same layers
    before = {k: id(viewer.layers[layer_name("well", k)]) for k in (*KINDS, "onset")}
    n_layers = len(viewer.layers)
    widget.mode.value = MODE_WHOLE
    assert _run(qtbot, widget).startswith("done")
    assert len(viewer.layers) == n_layers
    assert {k: id(viewer.layers[layer_name("well", k)]) for k in (*KINDS, "onset")} == before
    assert prob.data.shape == (8, 1, 1) and onset.data.shape == (1, 1)
    np.testing.assert_allclose(prob.data_to_world((3, 0, 0)), (3, 31.5, 31.5))
    assert len(tiles.data) == len(tiles.features) == 1
    assert len(tiles.metadata[PREDICTION_TABLE]) == 8


def _draw_two_regions(viewer):
    """Two rectangles in a Shapes layer named "cells", as a user draws them."""
    return viewer.add_shapes(
        [
            np.array([[0, 0], [0, 20], [30, 20], [30, 0]]) - 0.5,
            np.array([[40, 40], [40, 63], [63, 63], [63, 40]]) - 0.5,
        ],
        shape_type="rectangle",
        name="cells",
    )


def test_regions_mode_paints_the_rectangles(make_napari_viewer, qtbot, sample, checkpoint):
    viewer, image, widget = _setup(make_napari_viewer, sample, checkpoint)
    regions = _draw_two_regions(viewer)
    widget.mode.value = MODE_REGIONS
    widget.regions.value = regions
    widget.first.value, widget.last.value = 2, 4
    assert _run(qtbot, widget).startswith("done: 3 frames")
    prob = viewer.layers[layer_name("well", "probability")]
    table = viewer.layers[layer_name("well", "tiles")].metadata[PREDICTION_TABLE]
    assert sorted(table["frame"].unique()) == [2, 3, 4]
    assert table[["y0", "x0", "y1", "x1"]].drop_duplicates().values.tolist() == [
        [0, 0, 30, 20],
        [40, 40, 63, 63],
    ]
    first = table[(table.frame == 3) & (table.tile_row == 0)].p_infected.item()
    assert np.all(prob.data[3, 0:30, 0:20] == np.float32(first))
    assert np.isnan(prob.data[3, 30:40, :]).all()  # outside every region
    assert np.isnan(prob.data[0]).all()  # outside the frame range


def test_a_renamed_regions_layer_keeps_its_curves(make_napari_viewer, qtbot, sample, checkpoint):
    """Rename the Shapes layer a regions prediction ran on, in the layer list: selecting
    one of its rectangles still draws that region's curve in the plot. Layer names are the
    user's: the run knows its regions layer by id, as images are known."""
    viewer, _, widget = _setup(make_napari_viewer, sample, checkpoint, show=True)
    plot = viewer.window.add_plugin_dock_widget("napari-infection-clock",
                                                "Infection time-series plot")[1]
    regions = _draw_two_regions(viewer)
    widget.mode.value = MODE_REGIONS
    widget.regions.value = regions
    assert _run(qtbot, widget).startswith("done: 8 frames")
    table = session_for(viewer).results[image_id(viewer.layers["well"])]
    region = table[table.tile_row == 1].sort_values("frame")

    def drawn() -> list[str]:
        return [line.get_label() for line in plot.ax_p.lines]

    regions.selected_data = {0}
    assert "region 0" in drawn(), drawn()
    regions.selected_data = set()
    rename_layer(viewer, regions, "infected cells")
    assert regions.name == "infected cells" and "region 0" not in drawn()
    regions.selected_data = {1}
    assert "region 1" in drawn(), drawn()
    line = plot.ax_p.lines[drawn().index("region 1")]
    np.testing.assert_allclose(line.get_xdata(), region["hours"])
    np.testing.assert_allclose(line.get_ydata(), region["p_infected"])


def test_predicting_again_keeps_no_earlier_run(make_napari_viewer, qtbot, checkpoint, tmp_path):
    """Each click of Predict with a checkpoint file runs a folded copy of its model; a
    finished run's copy and worker go with it, without waiting for a full collection
    (rare while a dock is open: ui/gc_freeze.py). A resnet50 kept 95 MB a run."""
    import gc

    from torch import nn

    from napari_infection_clock.ui.workers import Run

    config = ModelConfig("resnet18", hidden_dim=16)
    other = save_checkpoint(tmp_path / "other.pt", build_model(config, init="random"),
                            CheckpointMeta(model=config, preprocessing=Preprocessing(32)))
    viewer = make_napari_viewer()
    data, meta = sample_pair(n_frames=2, size=32, seed=4)["infected"]
    viewer.add_image(data, name="w", metadata=meta)
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    messages = []
    widget.finished.connect(messages.append)

    def convolutions():  # with weights: the folding traces weightless ("meta") copies
        return sum(isinstance(o, nn.Conv2d) and not o.weight.is_meta for o in gc.get_objects())

    alive = []
    gc.collect()
    gc.disable()  # what is freed must be freed when let go, not by the cyclic collector
    try:
        for i, path in enumerate([checkpoint, other, checkpoint, other]):
            widget.checkpoint.value = path
            widget.run_button.native.click()
            qtbot.waitUntil(lambda i=i: len(messages) > i, timeout=RUN_TIMEOUT_MS)
            qtbot.waitUntil(lambda: not widget.native.findChildren(Run), timeout=5_000)
            alive.append(convolutions())
    finally:
        gc.enable()
    assert all(m.startswith("done") for m in messages), messages
    assert alive[1:] == alive[:1] * 3  # the session's model only, not one more per run


def test_event_loop_turns_and_cancel_leaves_consistent_layers(
    make_napari_viewer, qtbot, checkpoint
):
    """Cancel while the run is provably under way: frames shown, and a well it could not
    have finished (tests/long_well.py), so it must end "cancelled", never "done"."""
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    data, meta = long_well("mock", seed=2)
    viewer.add_image(data, name="long", metadata=meta)
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    widget.mode.value = MODE_TILES
    widget.tile_size.value = 16
    widget.batch_size.value = 4

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    messages = []
    widget.finished.connect(messages.append)
    assert widget.run()  # makes the output layers on the GUI thread, then starts the worker
    timer.start(20)
    qtbot.waitUntil(lambda: widget.progress_bar.value >= 10, timeout=120_000)  # as seen
    widget.mode.value = MODE_WHOLE  # the user sets up the next run meanwhile
    statuses = []  # what the status line says from the click on, each timer tick
    timer.timeout.connect(lambda: statuses.append(widget.status.value))
    widget.cancel_button.native.click()
    try:
        qtbot.waitUntil(lambda: bool(messages), timeout=60_000)
    except qtbot.TimeoutError:
        widget.worker.stop()  # a Cancel that does not stop fails this test, not the next ones
    assert messages, f"the run did not end within 60 s of Cancel: {widget.status.value!r}"
    timer.stop()

    assert messages[0].startswith("cancelled"), messages
    assert len(ticks) > 10  # the event loop kept turning (how long it paused: benchmarks/)
    assert widget.status.value == messages[0]  # the status line is right at the end
    # until then it said so: no "predicting: N of M" over "cancelling..."
    assert all(not text.startswith("predicting") for text in statuses), statuses
    # the run is recorded as it ran (tiles), not as the chooser says now
    assert session_for(viewer).runs[image_id(viewer.layers["long"])].mode == MODE_TILES

    prob = viewer.layers[layer_name("long", "probability")]
    tiles = viewer.layers[layer_name("long", "tiles")]
    table = tiles.metadata[PREDICTION_TABLE]
    done = sorted(table["frame"].unique())
    assert 10 <= len(done) < LONG_WELL_FRAMES
    assert len(table) == 16 * len(done) and len(tiles.data) == 16
    painted = np.flatnonzero(~np.isnan(prob.data).all(axis=(1, 2)))
    assert painted.tolist() == done
    assert not np.isnan(prob.data[done]).any()
    assert widget.run_button.enabled and not widget.running
    assert layer_name("long", "onset") not in viewer.layers  # no clock from a cut-short run


def test_a_model_that_comes_during_a_run_leaves_the_runs_record_alone(
    make_napari_viewer, qtbot, sample, checkpoint
):
    """A model trained meanwhile becomes the session's during a run (the training dock):
    the run's results are still published as its own model's, whose intervals are not
    calibrated, not as the new model's (the plot would say "90 %" about them)."""
    from napari_infection_clock.core.calibration import clock_interval
    from napari_infection_clock.core.checkpoint import load_checkpoint

    viewer, image, widget = _setup(make_napari_viewer, sample, checkpoint, show=True,
                                   mode=MODE_TILES, tile_size=32)
    messages = []
    widget.finished.connect(messages.append)
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.layers is not None, timeout=RUN_TIMEOUT_MS)  # model loaded
    trained, meta = load_checkpoint(checkpoint)
    meta.calibration = {"level": 0.9, "consistent_halfwidth_h": {"infected": 0.5}}
    session_for(viewer).set_model(SessionModel(trained, meta, origin="trained in this session"))
    qtbot.waitUntil(lambda: bool(messages), timeout=RUN_TIMEOUT_MS)
    assert messages[0].startswith("done: 8 frames"), messages
    run = session_for(viewer).runs[image_id(image)]
    assert run.interval_level is None
    assert run.clock_interval == clock_interval({})


def test_compiled_run_fills_the_same_layers(make_napari_viewer, qtbot, sample, checkpoint):
    viewer, _, widget = _setup(make_napari_viewer, sample, checkpoint, mode=MODE_WHOLE)
    assert _run(qtbot, widget).startswith("done: 8 frames")
    eager = session_for(viewer).results[image_id(viewer.layers["well"])].copy()
    widget.compile.value = True
    messages, warned = [], []
    widget.finished.connect(messages.append)
    assert widget.run()
    widget.worker.worker.warned.connect(warned.append)  # the worker's warnings, relayed by napari
    qtbot.waitUntil(lambda: bool(messages), timeout=300_000)
    assert messages[0].startswith("done: 8 frames"), messages
    assert not [w for w in warned if "torch.compile failed" in str(w[0])]  # it compiled
    compiled = session_for(viewer).results[image_id(viewer.layers["well"])]
    np.testing.assert_allclose(compiled.p_infected, eager.p_infected, atol=0.02)
    np.testing.assert_allclose(compiled.pred_time_h, eager.pred_time_h, atol=0.25)


def test_session_model_refresh_and_rgb(make_napari_viewer, qtbot, checkpoint):
    from napari_infection_clock.core.checkpoint import load_checkpoint

    viewer = make_napari_viewer()
    gray, meta = sample_pair(n_frames=4, size=64, seed=3)["infected"]
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    viewer.add_image(rgb, name="rgb", rgb=True, metadata=meta)
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    session = session_for(viewer)

    model, ckpt_meta = load_checkpoint(checkpoint)
    session.set_model(SessionModel(model, ckpt_meta, origin="trained in this session"))
    assert widget.source.value == SOURCE_SESSION
    assert "trained in this session" in widget.model_info.value

    messages = []
    widget.finished.connect(messages.append)
    assert session.request_prediction()
    qtbot.waitUntil(lambda: bool(messages), timeout=RUN_TIMEOUT_MS)
    assert messages[0].startswith("done: 4 frames"), messages
    assert len(session.results[image_id(viewer.layers["rgb"])]) == 4


@pytest.mark.parametrize(
    "case", ["no image", "2d", "rgb 2d", "bad checkpoint", "big tile", "no file"]
)
def test_bad_input_gives_a_clear_message(make_napari_viewer, qtbot, checkpoint, tmp_path, case):
    viewer = make_napari_viewer()
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    stack = sample_pair(n_frames=2, size=64)["infected"][0]
    if case == "2d":
        viewer.add_image(stack[0], name="flat")
    elif case == "rgb 2d":
        viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="photo", rgb=True)
    elif case != "no image":
        viewer.add_image(stack, name="well")
    if case == "bad checkpoint":
        bad = tmp_path / "broken.pt"
        bad.write_bytes(b"not a checkpoint")
        widget.checkpoint.value = bad
        messages = []
        widget.finished.connect(messages.append)
        assert widget.run()
        qtbot.waitUntil(lambda: bool(messages), timeout=RUN_TIMEOUT_MS)
        assert "prediction failed" in messages[0] and "broken.pt" in messages[0]
    else:
        if case == "big tile":
            widget.mode.value = MODE_TILES
            widget.tile_size.value = 128
        if case == "no file":
            widget.checkpoint.value = tmp_path / "missing.pt"
        assert not widget.run()
        assert not widget.running
    expected = {
        "no image": "no image layer",
        "2d": "single 2D image",
        "rgb 2d": "single 2D image",
        "bad checkpoint": "not a PyTorch checkpoint",
        "big tile": "larger than the frame",
        "no file": "choose a checkpoint file",
    }[case]
    assert expected in widget.status.value, widget.status.value
    assert widget.run_button.enabled
    viewer.add_points([[1, 1]])  # napari is still up and usable


def _broken(model):
    """A model whose class head no longer fits its backbone: its forward raises torch's
    RuntimeError (shape mismatch), the kind superqt's worker would swallow."""
    from torch import nn

    model.classifier = nn.Sequential(nn.Linear(7, 2))
    return model


def test_a_torch_error_ends_the_run_with_its_message(make_napari_viewer, qtbot, checkpoint):
    from napari_infection_clock.core.checkpoint import load_checkpoint

    viewer = make_napari_viewer()
    viewer.add_image(sample_pair(n_frames=2, size=64)["infected"][0], name="well")
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    model, meta = load_checkpoint(checkpoint)
    session_for(viewer).set_model(SessionModel(_broken(model), meta, origin="trained"))
    message = _run(qtbot, widget)
    assert message.startswith("prediction failed") and "RuntimeError" in message
    assert widget.status.value == message and widget.run_button.enabled


def test_closing_the_dock_leaves_the_session(make_napari_viewer, checkpoint):
    from napari_infection_clock.core.checkpoint import load_checkpoint

    viewer = make_napari_viewer()
    widget = PredictionWidget(viewer)
    dock = viewer.window.add_dock_widget(widget)
    session = session_for(viewer)
    assert len(session.prediction_requested) == 1
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does
    assert len(session.prediction_requested) == 0 and not session.request_prediction()
    model, meta = load_checkpoint(checkpoint)
    session.set_model(SessionModel(model, meta, origin="trained"))
    assert widget.model_info.value == "no model loaded"  # the closed widget heard nothing


def test_a_calibrated_model_flags_a_blank_frame_and_gives_intervals(
    make_napari_viewer, qtbot, sample, checkpoint, tmp_path
):
    from napari_infection_clock.core.checkpoint import load_checkpoint
    from napari_infection_clock.core.novelty import crop_statistics, fit_novelty

    data, meta = sample
    model, ckpt_meta = load_checkpoint(checkpoint)
    stats = np.stack([crop_statistics(f) for f in data])
    ckpt_meta.calibration = {
        "temperature": 2.0, "level": 0.9, "novelty": fit_novelty(stats, stats),
        "time_halfwidth_h": {"infected": 1.5, "uninfected": 2.5},
        "consistent_halfwidth_h": {"infected": 0.5, "uninfected": 1.0}}
    calibrated = save_checkpoint(tmp_path / "calibrated.pt", model, ckpt_meta)
    blank = data.copy()
    blank[3] = 0  # a dropped frame
    viewer, image, widget = _setup(make_napari_viewer, (blank, meta), calibrated)
    assert _run(qtbot, widget).startswith("done")
    table = viewer.layers[layer_name("well", "tiles")].metadata[PREDICTION_TABLE]
    table = table.set_index("frame").sort_index()
    assert table["out_of_distribution"].tolist() == [f == 3 for f in range(8)]
    assert np.isnan(table.loc[3, "p_calibrated"]) and np.isnan(table.loc[3, "time_low_h"])
    others = table.drop(index=3)
    assert (others["time_high_h"] - others["time_low_h"] > 0).all()
    assert others["p_calibrated"].notna().all()


def test_frames_reach_the_layers_in_a_few_updates_and_the_status_ends_right(
    make_napari_viewer, qtbot, checkpoint
):
    """Frames finished together (one batch) reach the layers in one update, not one each,
    and at the end the status line, the bar and the layers agree (issue 9, item 3)."""
    viewer = make_napari_viewer()
    data, meta = sample_pair(n_frames=48, size=32, seed=5)["infected"]
    viewer.add_image(data, name="many", metadata=meta)
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    widget.batch_size.value = 16
    assert _run(qtbot, widget).startswith("done: 48 frames")  # makes the layers

    tiles = viewer.layers[layer_name("many", "tiles")]
    prob = viewer.layers[layer_name("many", "probability")]
    tile_updates, updates = [], []
    tiles.events.data.connect(tile_updates.append)
    prob.events.set_data.connect(updates.append)
    plotted = []  # rows the plot was given, per update of the session's results
    widget.session.results_changed.connect(
        lambda key: plotted.append(len(widget.session.results[key])))
    widget.run_button.native.click()
    message = _run_started(qtbot, widget)
    assert message == "done: 48 frames predicted"
    assert widget.status.value == message  # not "frame 0: 2 of 48 done"
    assert widget.progress_bar.value == widget.progress_bar.max == 48
    # 1 reset + at most one update per batch of 16 frames (and the frame on screen first),
    # where showing each frame on its own took 48; the tiles, the same on every frame, none
    assert 1 <= len(updates) <= 1 + 48 // 16 + 1, len(updates)
    assert tile_updates == [] and len(tiles.data) == 1
    assert len(tiles.metadata[PREDICTION_TABLE]) == 48
    # the plot too gets a few updates, not one per frame, and the last one has every frame
    assert 1 <= len(plotted) <= 48 // 16 + 1 and plotted[-1] == 48, plotted


def test_frames_off_screen_are_painted_without_redrawing_the_canvas(
    make_napari_viewer, qtbot, checkpoint
):
    """The frame on screen is predicted first; the frames predicted after it are off screen,
    and writing their values redraws nothing (each redraw re-slices the layer, uploads its
    texture, repaints the canvas and the layer list's thumbnail: the most of the GUI
    thread's time in a run). The user who moves the slider then sees their values."""
    viewer = make_napari_viewer(show=True)
    data, meta = long_well("infected", seed=2)  # a run goes on until Cancel
    viewer.add_image(data, name="long", metadata=meta)
    widget = viewer.window.add_plugin_dock_widget("napari-infection-clock",
                                                  "Predict infection")[1]
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    widget.batch_size.value = 4
    viewer.dims.set_current_step(0, 5)

    def predict_until(frames):
        messages = []
        widget.finished.connect(messages.append)
        widget.run_button.native.click()
        qtbot.waitUntil(lambda: widget.progress_bar.value >= frames, timeout=RUN_TIMEOUT_MS)
        widget.cancel_button.native.click()
        qtbot.waitUntil(lambda: bool(messages), timeout=60_000)
        assert messages[0].startswith("cancelled"), messages

    predict_until(8)  # makes the layers
    prob = viewer.layers[layer_name("long", "probability")]
    in_view = [prob.data[5].copy()]  # frame 5 as each redraw found it
    prob.events.set_data.connect(lambda event: in_view.append(prob.data[5].copy()))
    predict_until(120)  # over several of the dock's updates
    # the reset (a new run), then the update with frame 5; none for the frames after it
    changed = [not np.array_equal(a, b, equal_nan=True) for a, b in zip(in_view, in_view[1:])]
    assert changed == [True, True], changed
    for frame in (5, 100):
        viewer.dims.set_current_step(0, frame)
        qtbot.wait(50)
        shown = viewer.screenshot(canvas_only=True, flash=False)
        prob.refresh()  # napari slices the data anew: what the canvas must already show
        qtbot.wait(50)
        np.testing.assert_array_equal(shown, viewer.screenshot(canvas_only=True, flash=False))
        assert not np.isnan(prob.data[frame]).any()


def _run_started(qtbot, widget, timeout=RUN_TIMEOUT_MS):
    messages = []
    widget.finished.connect(messages.append)
    qtbot.waitUntil(lambda: bool(messages), timeout=timeout)
    return messages[0]


def _move_mouse_to(viewer, world) -> None:
    """A real mouse move over the canvas, to the pixel that shows ``world`` (t, y, x)."""
    canvas = viewer.window._qt_viewer.canvas
    to_pixels = canvas.view.transform * canvas.view.scene.transform
    x, y = to_pixels.map([world[-1], world[-2]])[:2]
    QTest.mouseMove(canvas.native, QPoint(round(x), round(y)))
    QApplication.processEvents()


def test_outputs_can_be_read(make_napari_viewer, qtbot, sample, checkpoint):
    """Colorbars, one continuous overlay at a time (the other one click away), class names
    on hover, and a readout with the time in hours and the tile under the cursor (item 4)."""
    viewer, image, widget = _setup(
        make_napari_viewer, sample, checkpoint, show=True, mode=MODE_TILES, tile_size=32,
        stride=0,
    )
    assert _run(qtbot, widget).startswith("done")
    prob, dur, cls, _ = (viewer.layers[layer_name("well", k)] for k in KINDS)
    assert prob.colorbar.visible and dur.colorbar.visible
    assert prob.visible and not dur.visible and not cls.visible

    widget.swap_button.native.click()  # one click: duration instead of probability
    assert dur.visible and not prob.visible
    prob.visible = True  # or the eye in the layer list: the other one goes
    assert prob.visible and not dur.visible

    table = session_for(viewer).results[image_id(viewer.layers["well"])]
    row = table[(table.frame == 3) & (table.tile_row == 1) & (table.tile_col == 0)].iloc[0]
    viewer.dims.set_point(0, 3)
    assert viewer.canvas.overlays.text.visible
    assert viewer.canvas.overlays.text.text.startswith("t = 1.50 h  (frame 3 of 8)")  # 0.5 h a frame

    # the mouse moved over tile (1, 0) of the canvas: its values in the readout
    world = image.data_to_world((3, 48, 16))
    _move_mouse_to(viewer, world)
    qtbot.waitUntil(lambda: "p(infected)" in viewer.canvas.overlays.text.text, timeout=5_000)
    np.testing.assert_allclose(viewer.cursor.position[1:], world[1:], atol=1.0)
    text = viewer.canvas.overlays.text.text
    assert f"p(infected) {row.p_infected:.2f}" in text, text
    name = "infected" if row.pred_class == 1 else "uninfected"
    assert f"· {name}" in text
    if row.pred_class == 1:
        assert f"infected for {row.pred_time_h:.1f} h" in text, text
    # the onset is the tile's fitted clock, as in the onset map, the table and the plot
    # (not this frame's time minus its duration), on every frame of the tile
    fitted = f"onset {row.onset_h:.1f} h" if np.isfinite(row.onset_h) else "no onset"
    assert fitted in text and text.count("onset") == 1, text
    cls.visible = True  # the class layer shown: napari's status names the class
    status = cls.get_status(viewer.cursor.position, world=True)  # where the mouse is
    assert f"class: {name}" in status["coordinates"], status


def test_a_failed_model_load_leaves_no_empty_layers(make_napari_viewer, qtbot, tmp_path, sample):
    """A text file as checkpoint: a short message, and no empty output layers (item 8)."""
    viewer = make_napari_viewer()
    data, meta = sample
    viewer.add_image(data, name="well", metadata=dict(meta))
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    notes = tmp_path / "notes.pt"
    notes.write_text("these are my notes, not a model\n" * 20)
    widget.checkpoint.value = notes
    widget.device.value = "cpu"
    message = _run(qtbot, widget)
    assert message.startswith("prediction failed")
    assert [layer.name for layer in viewer.layers] == ["well"]
    status = widget.status.native
    assert len(status.text()) <= 300 and status.wordWrap()  # short, wrapped
    assert "notes.pt" in status.text() + status.toolTip()  # the whole text on hover


def test_channel_layers_of_a_fiji_file_are_recorded_and_checked(make_napari_viewer, qtbot,
                                                                tmp_path):
    """A layer the reader made from one channel of a hyperstack: the table says which
    channel; a checkpoint trained on DAPI warns on the mito layer (issue 13)."""
    from .fiji import write_fiji

    config = ModelConfig("resnet18", hidden_dim=0)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(32),
                          stacks=[{"stack": "x.tif", "channel": 0, "channel_desc": "DAPI"}])
    ckpt = save_checkpoint(tmp_path / "dapi.pt", build_model(config, init="random"), meta)
    path = write_fiji(tmp_path / "w.tif", ["mito", "actin", "DAPI", "BF"], frames=3)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-infection-clock")
    widget = PredictionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.checkpoint.value = ckpt
    widget.device.value = "cpu"
    with notifications_said() as said:
        for name in ("w [ch 2 DAPI]", "w [ch 0 mito]"):
            widget.image.value = viewer.layers[name]
            assert _run(qtbot, widget).startswith("done")
            table = session_for(viewer).results[image_id(viewer.layers[name])]
            assert set(table["channel"]) == {int(name[6])}
            assert set(table["channel_name"]) == {name.split()[-1].rstrip("]")}
    warned = [m for m in said if "trained on DAPI" in m]
    assert len(warned) == 1 and "mito" in warned[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_a_run_leaves_naparis_worker_threads_at_their_priority(make_napari_viewer, qtbot, sample,
                                                               checkpoint):
    """A run yields the CPU to the GUI (nice), but a nice cannot be undone without
    privileges: the threads napari lends every plugin's workers must never get it."""
    from napari.qt.threading import create_worker
    from qtpy.QtCore import QThreadPool

    viewer, image, widget = _setup(make_napari_viewer, sample, checkpoint)
    assert _run(qtbot, widget).startswith("done")
    gui_priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    n = QThreadPool.globalInstance().maxThreadCount()
    everyone_started = threading.Barrier(n)  # one job on every thread of the pool

    def priority():
        everyone_started.wait(timeout=20)
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen = []
    for _ in range(n):
        worker = create_worker(priority, _start_thread=False)
        worker.returned.connect(seen.append)
        worker.start()
    qtbot.waitUntil(lambda: len(seen) == n, timeout=30_000)
    assert seen == [gui_priority] * n


def test_a_runs_torch_leaves_a_core_to_the_gui(qtbot):
    """A run computes on one core fewer than torch would take: the GUI thread and the
    OpenGL renderer (Mesa's llvmpipe draws on the CPU) need one while it runs, and torch's
    threads wait for each other at every operation, so one of them descheduled stalls all.
    The setting is the run thread's own (OpenMP's is per thread): the GUI's, and other
    plugins', is left as it was."""
    import torch

    from napari_infection_clock.ui.workers import Result, Run

    default = torch.get_num_threads()

    def body(stop):
        x = torch.ones(64, 64)
        yield Result((torch.get_num_threads(), float((x @ x).sum())))

    seen, ended = [], []
    Run(body, on_batch=lambda batch: seen.extend(batch.results),
        on_end=ended.append).start()
    qtbot.waitUntil(lambda: bool(ended), timeout=60_000)
    assert seen == [(max(1, default - 1), 64.0 ** 3)]
    assert torch.get_num_threads() == default


def test_a_run_does_not_animate_naparis_activity_indicator(make_napari_viewer, qtbot, sample,
                                                           checkpoint):
    """The dock shows a run's progress itself. napari's activity indicator is a 33 frames a
    second GIF in the status bar, and on software OpenGL (Mesa's llvmpipe) each frame
    recomposes the whole window: ~60 % of the GUI thread, and a tiled run 2.4x slower
    (benchmarks.md, 1 December)."""
    from napari._qt.dialogs.qt_activity_dialog import ActivityToggleItem
    from qtpy.QtGui import QMovie

    viewer, image, widget = _setup(make_napari_viewer, sample, checkpoint, show=True)
    indicator = viewer.window._qt_window.findChild(ActivityToggleItem)._inProgressIndicator
    animating = []  # whether the indicator ran, at every look while the run goes on

    def ended():
        animating.append(indicator.movie().state() == QMovie.MovieState.Running)
        return widget.worker is None

    widget.run_button.native.click()
    assert widget.worker is not None, widget.status.value
    qtbot.waitUntil(ended, timeout=RUN_TIMEOUT_MS)
    assert widget.status.value.startswith("done"), widget.status.value
    assert len(animating) > 1 and not any(animating), animating
    assert widget.progress_bar.value == widget.progress_bar.max


def test_naparis_activity_indicator_stops_once_a_file_is_open(make_napari_viewer, qtbot,
                                                               tmp_path):
    """File > Open shows napari's "Opening Files" progress, which starts the activity
    indicator (the status bar's GIF); napari stops it from the bar's ``destroyed`` signal,
    which PyQt6 never delivers to it, so the GIF went on for the rest of the session, each
    frame recomposing the window. With a dock of the plugin open, it stops once no progress
    is left, whether the file came before the dock or after; a progress still running
    keeps it going."""
    import tifffile
    from napari._qt.dialogs.qt_activity_dialog import ActivityToggleItem
    from napari.utils import progress
    from qtpy.QtGui import QMovie

    from napari_infection_clock.core.stack import write_stack

    data, _ = sample_pair(n_frames=4, size=64, seed=1)["infected"]
    paths = [tmp_path / "first.tif", tmp_path / "second.tif"]
    tifffile.imwrite(paths[0], data)  # a plain TIFF, for napari's reader
    write_stack(paths[1], data)  # one with the time axis, for the plugin's
    viewer = make_napari_viewer(show=True)
    indicator = viewer.window._qt_window.findChild(ActivityToggleItem)._inProgressIndicator

    def animating() -> bool:
        QApplication.processEvents()
        return indicator.movie().state() == QMovie.MovieState.Running

    viewer.open(paths[0], plugin="napari")  # before any dock: napari 0.9.2 leaves it on
    viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")
    assert not animating() and not indicator.isVisible()
    viewer.open(paths[1], plugin=PLUGIN)
    assert not animating()
    with progress(total=2, desc="another plugin's work") as running:
        assert animating()
        running.update(1)
    assert not animating()


def test_the_image_chooser_follows_the_image_in_view(make_napari_viewer, qtbot, checkpoint):
    """The dock serves the image the user looks at (selected, or the only one shown), as the
    annotation dock does; the chooser still lets the user pick, and never offers outputs."""
    viewer = make_napari_viewer(show=True)
    wells = sample_pair(n_frames=4, size=64, seed=3)
    infected = viewer.add_image(wells["infected"][0], name="infected")
    mock = viewer.add_image(wells["mock"][0], name="mock")  # napari selects the new layer
    widget = viewer.window.add_plugin_dock_widget("napari-infection-clock", "Predict infection")[1]
    assert widget.image.value is mock
    click_layer(viewer, infected)
    assert widget.image.value is infected
    click_eye(viewer, infected)  # hidden: the mock well is the only one in view
    assert widget.image.value is mock
    click_eye(viewer, infected)  # shown again, and still the selected one
    assert widget.image.value is infected

    widget.image.value = mock  # the user's own pick stands until the view changes
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    assert _run(qtbot, widget).startswith("done")
    assert widget.image.value is mock
    assert list(widget.image.choices) == [infected, mock]  # no output layer offered
    click_layer(viewer, viewer.layers[layer_name("mock", "probability")])
    assert widget.image.value is mock  # an output stands for its image
    click_layer(viewer, infected)
    assert widget.image.value is infected
    assert list(widget.image.choices) == [infected, mock]
    late = viewer.add_image(wells["infected"][0], name="opened later")  # selected by napari
    assert widget.image.value is late


def test_removing_the_image_of_a_running_prediction_stops_it_and_leaves_no_layers(checkpoint):
    """The trash button on the image while its prediction is provably under way (frames
    shown, of a well it could not have finished: tests/long_well.py): the run is cancelled,
    its outputs go, napari does not crash (it did, in vispy's glDrawArrays, until
    ui/gl_context.py). In a fresh process, napari first, as a user's: a crash is then this
    test's failure, not the end of pytest."""
    assert os.environ.get("DISPLAY"), "needs a display (pytest-xvfb)"
    script = Path(__file__).with_name("remove_during_prediction.py")
    try:
        proc = subprocess.run([sys.executable, str(script), str(checkpoint)],
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        pytest.fail(f"the fresh napari did not end within 300 s:\n{out}")
    out = proc.stdout
    frames = LONG_WELL_FRAMES
    under_way = re.search(rf"under way: (\d+) of {frames} frames shown, ended: False, "
                          r"outputs: 4", out)
    assert under_way and int(under_way.group(1)) >= 1, out
    assert proc.returncode == 0, (
        f"exit {proc.returncode} (-11 is a segmentation fault, 3 a run the removal did not "
        f"stop)\n{out}\n{proc.stderr[-3000:]}")
    assert re.search(rf"^cancelled: \d+ of {frames} frames predicted$", out, re.MULTILINE), out
    assert "left: []" in out, out


def test_crops_without_information_stay_empty_in_overlays_readout_and_plot(
    make_napari_viewer, qtbot, sample, tmp_path
):
    """Issue 11 item 4: a dropped (constant) frame and a flat tile, predicted with a research
    checkpoint (no novelty model): marked in the table, empty in every overlay, "no
    information" under the cursor, left out of the plot; the dock counts them."""
    import torch

    from napari_infection_clock.ui.plot_widget import TimeSeriesPlot
    from tests.research import ResearchMultitask, research_config, save_research_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "best_model.pth"
    save_research_checkpoint(ckpt, ResearchMultitask("resnet18", hidden=16),
                             research_config("resnet18", hidden=16, image_size=32))
    data, meta = sample
    data = data.copy()
    data[3] = data[3].min()  # a dropped frame
    data[5, :32, 32:] = 100  # tile (0, 1) of frame 5 is flat
    viewer, image, widget = _setup(make_napari_viewer, (data, meta), ckpt, mode=MODE_TILES,
                                   tile_size=32, stride=0)
    plot = TimeSeriesPlot(viewer)
    viewer.window.add_dock_widget(plot)
    message = _run(qtbot, widget)
    assert message == "done: 8 frames predicted; 5 of 32 items had no information", message

    prob, dur, cls, tiles = (viewer.layers[layer_name("well", k)] for k in KINDS)
    table = tiles.metadata[PREDICTION_TABLE]
    empty = (table.frame == 3) | ((table.frame == 5) & (table.tile_row == 0)
                                  & (table.tile_col == 1))
    assert table["no_information"].tolist() == empty.tolist()
    assert table.loc[empty, "p_infected"].isna().all()
    assert table.loc[empty, "consistent_time_h"].isna().all()
    for cell in [(3, r, c) for r in (0, 1) for c in (0, 1)] + [(5, 0, 1)]:
        assert np.isnan(prob.data[cell]) and np.isnan(dur.data[cell]), cell
        assert cls.data[cell] not in (1, 2), cell  # no class painted
    assert not np.isnan(prob.data[5, 1, 1]) and not np.isnan(prob.data[4]).any()

    viewer.dims.set_point(0, 3)
    world = image.data_to_world((3, 48, 16))
    viewer.cursor.position = world
    for callback in list(viewer.mouse_move_callbacks):
        callback(viewer, type("Event", (), {"position": world})())
    text = viewer.canvas.overlays.text.text
    assert "no information" in text and "p(infected)" not in text, text
    cls.visible = True
    assert "class: no information" in cls.get_status(world, world=True)["coordinates"]

    assert 3 not in plot.summary["frame"].tolist()  # the plot skips the dropped frame
    five = table[(table.frame == 5) & ~empty]
    row = plot.summary.set_index("frame").loc[5]
    assert row.mean_p_infected == pytest.approx(five.p_infected.mean())
    assert row.fraction_infected == pytest.approx((five.pred_class == 1).mean())


def _type(qtbot, box, text: str) -> None:
    """Type into a spin box of the dock as a person does: select its text, type, Enter."""
    edit = box.native.lineEdit()
    edit.selectAll()
    qtbot.keyClicks(edit, text)
    qtbot.keyClick(edit, Qt.Key.Key_Return)


def test_settings_typed_for_an_image_stay_when_the_view_moves_off_it_and_back(
        make_napari_viewer, qtbot):
    """A click on another layer (to adjust its contrast, say) and back must not reset the
    frame interval, onset and frame range typed for the image: they label every output."""
    viewer = make_napari_viewer(show=True)
    wells = sample_pair(n_frames=6, size=64, seed=3)
    infected = viewer.add_image(wells["infected"][0], name="infected")
    mock = viewer.add_image(wells["mock"][0], name="mock")
    widget = viewer.window.add_plugin_dock_widget("napari-infection-clock", "Predict infection")[1]
    click_layer(viewer, infected)
    assert widget.image.value is infected
    _type(qtbot, widget.frame_interval_h, "0.25")
    _type(qtbot, widget.onset_h, "3")
    _type(qtbot, widget.first, "2")
    assert (widget.frame_interval_h.value, widget.onset_h.value, widget.first.value) == (
        0.25, 3.0, 2)
    assert widget.time_source.value == "set here"

    click_layer(viewer, mock)
    assert widget.image.value is mock
    assert widget.first.value == 0 and widget.last.value == 5  # the mock well's own
    assert widget.time_source.value != "set here"
    click_layer(viewer, infected)
    assert widget.image.value is infected
    assert (widget.frame_interval_h.value, widget.onset_h.value) == (0.25, 3.0)
    assert (widget.first.value, widget.last.value) == (2, 5)
    assert widget.time_source.value == "set here"


def test_a_native_tile_model_is_not_run_on_whole_frames(make_napari_viewer, qtbot, sample,
                                                         tmp_path):
    """A checkpoint trained on native 16 px tiles (its meta's recipe says so, as
    ``train --native-tiles 16`` writes it) would shrink whole frames to 16 px and answer
    with confidence: the dock refuses, switches to its tiles and says so. Tiles of another
    size are resized to its 16 px: the status line says so, as the CLI warns."""
    native = native_checkpoint(tmp_path / "native.pt", 16, TimePolicy(
        frame_interval_h=0.5, onset_h=2.0, clamp=(0.0, 24.0)))
    viewer, image, widget = _setup(make_napari_viewer, sample, native)
    assert widget.mode.value == MODE_WHOLE
    qtbot.mouseClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    message = _run_started(qtbot, widget)
    assert "16 px tiles" in message and "Predict again" in message, message
    assert (widget.mode.value, widget.tile_size.value, widget.stride.value) == (
        MODE_TILES, 16, 0)
    assert [layer.name for layer in viewer.layers] == ["well"]  # no whole-frame outputs
    assert _run(qtbot, widget).startswith("done")
    assert len(viewer.layers[layer_name("well", "tiles")].data) == 16  # a 4 x 4 grid
    assert "resized" not in widget.status.value
    widget.tile_size.value = 32
    qtbot.mouseClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    said = _run_started(qtbot, widget)
    assert said.startswith("done"), said
    assert "32 px tiles are resized to 16 px" in widget.status.value, widget.status.value


def test_a_native_tile_model_says_it_cannot_predict_smaller_frames(make_napari_viewer, qtbot,
                                                                    tmp_path):
    """Frames smaller than a native-tile model's tiles: the dock says the model cannot
    predict them and what to do, not "use whole-frame mode" (which it cannot take)."""
    native = native_checkpoint(tmp_path / "native.pt", 24)
    data = np.random.default_rng(0).integers(0, 255, (4, 16, 16), np.uint8)
    viewer, image, widget = _setup(make_napari_viewer, (data, {}), native)
    qtbot.mouseClick(widget.run_button.native, Qt.MouseButton.LeftButton)
    said = _run_started(qtbot, widget)
    assert "cannot predict frames smaller than 24 px: these are 16 x 16 px" in said, said
    assert "whole-frame mode" not in said and widget.mode.value == MODE_WHOLE
    assert [layer.name for layer in viewer.layers] == ["well"]


def test_a_refusal_or_failure_is_not_left_beside_another_choice(make_napari_viewer, qtbot,
                                                                checkpoint, tmp_path):
    """Predict on a 2D image is refused, Predict with a text file as checkpoint fails; once
    the user picks another image, or the real checkpoint, the status line no longer names
    the 2D image or the text file (it did, and still said "done" of another image)."""
    import tifffile

    from napari_infection_clock.core.stack import write_stack

    flat, well = tmp_path / "snapshot.tif", tmp_path / "well.tif"
    tifffile.imwrite(flat, np.full((64, 64), 7, np.uint8))
    write_stack(well, sample_pair(n_frames=3, size=64)["infected"][0], "TYX", 0.5)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(flat), plugin="napari")  # napari's own reader: one 2D image
    viewer.open(str(well), plugin="napari-infection-clock")
    widget = viewer.window.add_plugin_dock_widget("napari-infection-clock",
                                                  "Predict infection")[1]
    widget.device.value = "cpu"
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    widget.checkpoint.value = notes
    widget.image.value = viewer.layers["snapshot"]  # picked in the image chooser
    widget.run_button.native.click()
    assert "single 2D image" in widget.status.value
    widget.image.value = viewer.layers["well"]
    assert "snapshot" not in widget.status.value, widget.status.value

    messages = []
    widget.finished.connect(messages.append)
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: bool(messages), timeout=RUN_TIMEOUT_MS)
    assert "notes.txt" in widget.status.value and "not a PyTorch checkpoint" in messages[0]
    widget.checkpoint.value = checkpoint
    assert "notes.txt" not in widget.status.value, widget.status.value
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: len(messages) == 2, timeout=RUN_TIMEOUT_MS)
    assert widget.status.value.startswith("done: 3 frames")
    widget.image.value = viewer.layers["snapshot"]  # the run was the well's, not this one's
    assert not widget.status.value.startswith("done"), widget.status.value


def test_the_frame_interval_and_onset_set_in_the_annotation_dock_are_predicted_with(
        make_napari_viewer, qtbot, checkpoint, tmp_path):
    """The user gives the well's frame interval and onset once, in the annotation dock: the
    prediction dock shows and uses them (it kept the file's 0.5 h/frame, so frame 4 was
    "2 h" in the plot and on the canvas and "1 h" in the annotation dock), also after the
    image is closed and opened again (the annotation dock reads them back)."""
    from napari_infection_clock.core.stack import write_stack

    path = tmp_path / "well.tif"
    write_stack(path, sample_pair(n_frames=10, size=64)["infected"][0], "TYX", 0.5)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-infection-clock")
    window = viewer.window
    annotate = window.add_plugin_dock_widget("napari-infection-clock",
                                             "Annotate frames and crops")[1]
    widget = window.add_plugin_dock_widget("napari-infection-clock", "Predict infection")[1]
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    annotate.condition_combo.setCurrentText("infected")
    for spin, value in ((annotate.onset_spin, 1.5), (annotate.interval_spin, 0.25)):
        spin.setValue(value)
        spin.editingFinished.emit()
    assert (widget.frame_interval_h.value, widget.onset_h.value) == (0.25, 1.5)
    assert "annotation dock" in widget.time_source.value, widget.time_source.value
    viewer.dims.set_current_step(0, 4)
    assert "(1 h)" in annotate.frame_info.text()
    assert _run(qtbot, widget).startswith("done")
    table = session_for(viewer).results[image_id(viewer.layers["well"])]
    assert table.loc[table["frame"] == 4, "hours"].unique().tolist() == [1.0]
    assert viewer.text_overlay.text.startswith("t = 1.00 h"), viewer.text_overlay.text

    viewer.layers.remove(viewer.layers["well"])
    viewer.open(str(path), plugin="napari-infection-clock")
    assert "0.25 h/frame" in annotate.time_source.text()
    assert (widget.frame_interval_h.value, widget.onset_h.value) == (0.25, 1.5)


def test_a_fiji_hyperstack_from_naparis_reader_is_sent_to_the_plugins_reader(
        make_napari_viewer, qtbot, checkpoint, tmp_path):
    """A Fiji TCYX file opened with napari's own reader is one (T, C, Y, X) layer. The dock
    refuses it, and its advice must work: it said "Split Stack", which splits napari's
    first axis, time, into one layer per time point whose "frames" are the channels (the
    dock then predicts those). It sends the user to the plugin's reader instead, whose
    channel layers it predicts."""
    from .fiji import write_fiji

    path = write_fiji(tmp_path / "w.tif", ["mito", "DAPI"], frames=4, size=64)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari")
    assert viewer.layers["w"].data.shape[:2] == (4, 2)
    widget = viewer.window.add_plugin_dock_widget("napari-infection-clock",
                                                  "Predict infection")[1]
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    widget.run_button.native.click()
    assert not widget.running
    message = widget.status.native.toolTip() or widget.status.value
    assert "> Split Stack" not in message, message  # not advised any more
    assert "'Infection Clock' reader" in message, message

    viewer.open(str(path), plugin="napari-infection-clock")  # what the message says
    widget.image.value = viewer.layers["w [ch 1 DAPI]"]
    assert _run(qtbot, widget).startswith("done: 4 frames")


def _in_view(scroll_area, widget) -> bool:
    """Whether ``widget`` lies wholly inside what ``scroll_area`` shows now."""
    top = widget.mapTo(scroll_area.viewport(), QPoint(0, 0)).y()
    return top >= 0 and top + widget.height() <= scroll_area.viewport().height()


def test_predict_scrolls_its_dock_to_the_answer(make_napari_viewer, qtbot, checkpoint, tmp_path):
    """Every dock of the plugin open in a 1600 x 1000 window: the prediction dock scrolls
    (its tab shares the height with the plot) and its status line sat below the fold, so
    a click on Predict answered only in a notification cut after 40 characters. After the
    click the status line is in view: the refusal, and a run's progress."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    widgets = {}
    for name in ("Predict infection", "Infection time-series plot",
                 "Annotate frames and crops", "Retrain on labels", "Evaluate the model",
                 "What to label next"):
        widgets[name] = viewer.window.add_plugin_dock_widget("napari-infection-clock",
                                                             name)[1]
    widget = widgets["Predict infection"]
    dock = next(d for title, d in viewer.window._wrapped_dock_widgets.items()
                if title.startswith("Predict infection"))
    dock.raise_()  # a click on its tab
    viewer.add_image(np.zeros((64, 64), np.uint8), name="snapshot")
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    QApplication.processEvents()
    status = widget.status.native
    assert not _in_view(widget.native, status)  # below the fold before any click

    widget.run_button.native.click()
    QApplication.processEvents()
    assert "single 2D image" in widget.status.value
    assert _in_view(widget.native, status)


def _colorbars_shown(viewer) -> list[str]:
    """The layers whose colorbar is on the canvas (napari draws it while both it and its
    layer are visible)."""
    return [layer.name for layer in viewer.layers
            if getattr(layer, "colorbar", None) is not None and layer.visible
            and layer.colorbar.visible]


def _canvas_boxes(viewer) -> list[tuple]:
    """(name, x0, y0, x1, y1) on the canvas of every canvas overlay drawn (colorbars, layer
    names, the readout)."""
    from napari.components.overlays import CanvasOverlay

    canvas = viewer.window._qt_viewer.canvas
    drawn = [(layer.name, visual) for layer in viewer.layers if layer.visible
             for overlay, visual in canvas._layer_overlay_to_visual.get(layer, {}).items()
             if isinstance(overlay, CanvasOverlay) and overlay.visible]
    drawn += [("viewer", visual) for overlay, visuals in canvas._viewer_overlay_to_visual.items()
              if isinstance(overlay, CanvasOverlay) and overlay.visible for visual in visuals]
    boxes = []
    for name, visual in drawn:
        x, y = visual.node.transform.translate[:2]
        boxes.append((name, x, y, x + visual.x_size, y + visual.y_size))
    return boxes


def test_each_colorbar_shown_is_named_and_only_the_image_in_views_are(make_napari_viewer,
                                                                      qtbot, checkpoint):
    """notes/new-user.md, item 2: after predicting several images, each image's probability
    layer showed an unlabelled 0..1 colorbar, all side by side in the canvas's top right
    corner (5 after 5 images), none saying which image or quantity it is. The colorbars
    shown are the image in view's, each beside its layer's name (the image, the quantity,
    hours for the duration), and nothing on the canvas lies on anything else."""
    viewer = make_napari_viewer(show=True)
    pair = sample_pair(n_frames=8, size=64, seed=1)
    for name in ("infected", "mock"):
        data, meta = pair[name]
        viewer.add_image(data, name=name, metadata=dict(meta))
    widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")[1]
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    widget.mode.value = MODE_TILES
    widget.tile_size.value = 32
    for name in ("infected", "mock"):
        click_layer(viewer, viewer.layers[name])  # the image in view: the dock predicts it
        assert widget.image.value.name == name
        assert not widget.swap_button.enabled  # no overlays of this image to swap yet
        ended = []
        widget.finished.connect(ended.append)
        widget.run_button.native.click()
        qtbot.waitUntil(lambda ended=ended: bool(ended), timeout=RUN_TIMEOUT_MS)
        assert ended[0].startswith("done"), ended

    def named_alone(expected: str) -> bool:
        shown = _colorbars_shown(viewer)
        return shown == [expected] and viewer.layers[expected].name_overlay.visible

    qtbot.waitUntil(lambda: named_alone("mock infection probability"), timeout=10_000)
    widget.swap_button.native.click()  # duration instead: its bar, in hours, named so
    qtbot.waitUntil(lambda: named_alone("mock infection duration (h)"), timeout=10_000)
    click_layer(viewer, viewer.layers["infected"])  # the other image in view: its bar
    qtbot.waitUntil(lambda: named_alone("infected infection probability"), timeout=10_000)
    assert not viewer.layers["mock infection duration (h)"].name_overlay.visible
    qtbot.wait(200)  # napari places the overlays when they are shown
    boxes = _canvas_boxes(viewer)
    assert len(boxes) >= 2, boxes  # the bar and its name (and the readout)
    for i, (a, *one) in enumerate(boxes):
        for b, *other in boxes[i + 1:]:
            apart = (one[2] <= other[0] or other[2] <= one[0]
                     or one[3] <= other[1] or other[3] <= one[1])
            assert apart, (a, one, b, other)
    # the swap button acts on the image in view, not on the last run's (mock's) overlays
    assert widget.swap_button.text == "show duration (h)", widget.swap_button.text
    widget.swap_button.native.click()
    qtbot.waitUntil(lambda: named_alone("infected infection duration (h)"), timeout=10_000)
    assert viewer.layers["mock infection duration (h)"].visible  # as the user left it


def _choose(chooser, name: str) -> None:
    """Pick ``name`` in a magicgui chooser's drop-down, as a person does."""
    combo = chooser.native
    index = combo.findText(name)
    assert index >= 0, (name, [combo.itemText(i) for i in range(combo.count())])
    combo.setCurrentIndex(index)
    QApplication.processEvents()


def test_the_frame_range_follows_the_chosen_image_and_a_2d_image_has_none(
        make_napari_viewer, tmp_path):
    """Choosing a 2D image in the image chooser left first/last frame at the previous
    image's range (0 to 11 of a 12-frame well): a range that image does not have. For a
    2D image the range is off, and says why, as does the time line (it named the previous
    image's time source); a time-lapse chosen after it gets its own."""
    import tifffile

    from napari_infection_clock.core.stack import write_stack

    wells = sample_pair(n_frames=12, size=32)
    write_stack(tmp_path / "long.tif", wells["infected"][0], "TYX", 0.5)
    write_stack(tmp_path / "short.tif", wells["mock"][0][:5], "TYX", 0.5)
    tifffile.imwrite(tmp_path / "snapshot.tif", np.full((32, 32), 7, np.uint8))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(tmp_path / "long.tif"), plugin=PLUGIN)
    viewer.open(str(tmp_path / "snapshot.tif"), plugin="napari")  # napari's reader: 2D
    viewer.open(str(tmp_path / "short.tif"), plugin=PLUGIN)
    widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")[1]
    first, last = widget.first, widget.last

    _choose(widget.image, "long")
    assert (first.value, last.value, first.enabled, last.enabled) == (0, 11, True, True)
    _choose(widget.image, "snapshot")
    assert (first.value, last.value, first.enabled, last.enabled) == (0, 0, False, False)
    assert "2D image" in last.tooltip, last.tooltip
    # the time line said where the long well's frame interval came from
    assert "2D image" in widget.time_source.value, widget.time_source.value
    widget.onset_h.value = 2.0  # typed for no image: still says so
    assert "2D image" in widget.time_source.value, widget.time_source.value
    _choose(widget.image, "short")
    assert (first.value, last.value, first.enabled, last.enabled) == (0, 4, True, True)
    last.value = 3  # the user's range on the short well
    _choose(widget.image, "snapshot")
    _choose(widget.image, "long")
    assert (first.value, last.value) == (0, 11)
    _choose(widget.image, "short")
    assert (first.value, last.value) == (0, 3)  # kept for it, not the 2D image's


def test_a_one_frame_imagej_stack_is_a_time_lapse_that_predicts(make_napari_viewer, qtbot,
                                                                 checkpoint, tmp_path):
    """A time-lapse of one frame saved by Fiji (ImageJ metadata with its frame interval,
    no frames= line) or by tifffile with imagej=True: the plugin's reader left it to
    napari's, which made a 2D image that Predict refused as "a single 2D image", while the
    core (the command line) reads it as a time-lapse of one frame. Opened with the plugin's
    reader it is one, and predicts."""
    import tifffile

    frame = sample_pair(n_frames=1, size=64)["infected"][0][0]
    fiji, tiff = tmp_path / "fiji_t1.tif", tmp_path / "tifffile_t1.tif"
    tifffile.imwrite(fiji, frame, metadata=None,
                     description="ImageJ=1.54f\nunit=micron\nfinterval=900.0\n")
    tifffile.imwrite(tiff, frame[None], imagej=True, metadata={"axes": "TYX"})
    viewer = make_napari_viewer(show=True)
    [one] = viewer.open(str(fiji), plugin=PLUGIN)
    assert one.data.shape == (1, 64, 64)
    assert one.metadata["frame_interval_h"] == pytest.approx(0.25)
    [other] = viewer.open(str(tiff), plugin=PLUGIN)
    assert other.data.shape == (1, 64, 64)
    widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")[1]
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    _choose(widget.image, "fiji_t1")
    assert _run(qtbot, widget).startswith("done: 1 frames")


def test_a_run_in_sight_is_answered_in_its_status_line_alone(make_napari_viewer, qtbot, sample,
                                                             checkpoint):
    """The status line answers a run. A napari notification slides in over the canvas and
    every step of its animation repaints the canvas (55-100 ms of the GUI thread on
    software OpenGL, 200-320 ms beside a training's start), so a run's end is notified
    only when the user cannot see the dock: here it was tabbed behind another one."""
    viewer, _, widget = _setup(make_napari_viewer, sample, checkpoint, show=True)
    with notifications_said() as said:
        ended = []
        widget.finished.connect(ended.append)
        widget.run_button.native.click()
        qtbot.waitUntil(lambda: bool(ended), timeout=RUN_TIMEOUT_MS)
        assert widget.status.value == ended[0] == "done: 8 frames predicted"
        assert said == []

        widget.run_button.native.click()
        viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate the model")  # tabbed in front
        qtbot.waitUntil(lambda: widget.status.native.visibleRegion().isEmpty(), timeout=5_000)
        qtbot.waitUntil(lambda: len(ended) == 2, timeout=RUN_TIMEOUT_MS)
        assert said == ["done: 8 frames predicted"]

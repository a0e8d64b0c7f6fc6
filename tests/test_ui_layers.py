"""Which layers are inputs: the plugin's own output layers never are, and the docks say
where an image's frame interval and onset came from (issue 9, item 6)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile
import torch
from napari._qt.layer_controls import qt_layer_controls_container as controls_container
from qtpy.QtCore import Qt

from napari_infection_clock.core.stack import write_stack
from napari_infection_clock.core.synthetic import generate_stack
from napari_infection_clock.ui.annotation_widget import AnnotationWidget
from napari_infection_clock.ui.label_next_widget import LabelNextWidget
from napari_infection_clock.ui.layer_roles import image_id, memory_key
from napari_infection_clock.ui.overlays import layer_name
from napari_infection_clock.ui.prediction_widget import (
    MODE_REGIONS,
    MODE_TILES,
    PredictionWidget,
)

from .fresh_process import run_fresh
from .layer_list import click_layer, delete_selected
from .research import ResearchMultitask, research_config, save_research_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A research checkpoint as the research scripts write it: 2 frames per hour, onset 3 h."""
    path = tmp_path_factory.mktemp("ckpt") / "research.pt"
    torch.manual_seed(0)
    save_research_checkpoint(path, ResearchMultitask("resnet18", hidden=16),
                             research_config(hidden=16, image_size=32, frames_per_hour=2.0,
                                             onset=3.0))
    return path


def _predict(qtbot, widget):
    messages = []
    widget.finished.connect(messages.append)
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: bool(messages), timeout=60_000)
    return messages[0]


def test_output_layers_are_never_inputs_nor_saved(make_napari_viewer, qtbot, checkpoint,
                                                  tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(generate_stack(True, seed=1, n_frames=4, size=32, dtype="uint8"),
                             name="well", metadata={"frame_interval_h": 0.5})
    predict = PredictionWidget(viewer)
    annotate = AnnotationWidget(viewer)
    label_next = LabelNextWidget(viewer)
    for dock in (predict, annotate, label_next):
        viewer.window.add_dock_widget(dock)
    predict.checkpoint.value = checkpoint
    predict.device.value = "cpu"
    predict.mode.value = MODE_TILES
    predict.tile_size.value = 16
    assert not _predict(qtbot, predict).startswith("prediction failed")
    outputs = [layer_name("well", kind) for kind in ("probability", "duration", "class", "tiles")]
    assert all(name in viewer.layers for name in outputs)

    assert [layer.name for layer in predict.image.choices] == ["well"]
    predict.mode.value = MODE_REGIONS  # the plugin's own tiles are no regions
    assert predict.regions.value is None and list(predict.regions.choices) == []
    names = [label_next.image_combo.itemText(i) for i in range(label_next.image_combo.count())]
    assert names == ["well"]

    # the probability layer selected: the labels go to the image it belongs to
    viewer.layers.selection.active = viewer.layers[outputs[0]]
    assert annotate.layer is image and "well" in annotate.target_label.text()

    project = tmp_path / "project"
    annotate.set_project_dir(project)
    viewer.dims.set_current_step(0, 1)
    qtbot.mouseClick(annotate.buttons["uninfected"], Qt.LeftButton)
    viewer.close()
    assert sorted(p.name for p in project.glob("*.tif")) == ["well.tif"]


def test_docks_say_where_interval_and_onset_came_from(make_napari_viewer, qtbot, checkpoint,
                                                      tmp_path):
    plain = tmp_path / "plain.tif"  # no ImageJ or OME metadata at all
    tifffile.imwrite(plain, generate_stack(True, seed=2, n_frames=4, size=32, dtype="uint8"))
    timed = tmp_path / "timed.tif"  # ImageJ metadata: 0.25 h per frame
    write_stack(timed, generate_stack(True, seed=3, n_frames=4, size=32, dtype="uint8"), "TYX",
                0.25)
    viewer = make_napari_viewer()
    viewer.open(str(plain), plugin="napari")  # napari's built-in reader: no metadata
    predict = PredictionWidget(viewer)
    annotate = AnnotationWidget(viewer)
    for dock in (predict, annotate):
        viewer.window.add_dock_widget(dock)

    said = predict.time_source.value
    assert "default" in said and "⚠" in said and "Check them" in said, said
    assert "default" in annotate.time_source.text(), annotate.time_source.text()
    assert (predict.frame_interval_h.value, predict.onset_h.value) == (0.5, 1.0)

    predict.checkpoint.value = checkpoint
    predict.device.value = "cpu"
    _predict(qtbot, predict)  # the checkpoint is loaded: its interval and onset now
    said = predict.time_source.value
    assert "from checkpoint" in said and "⚠" not in said, said
    assert (predict.frame_interval_h.value, predict.onset_h.value) == (0.5, 3.0)

    viewer.open(str(timed), plugin="napari-infection-clock")
    predict.image.value = viewer.layers["timed"]
    said = predict.time_source.value
    assert "0.25 h/frame from file metadata" in said and "onset 3 h from checkpoint" in said, said
    predict.frame_interval_h.value = 0.3  # the user's own value
    assert predict.time_source.value == "set here"
    np.testing.assert_equal(viewer.layers["timed"].metadata["frame_interval_h"], 0.25)


def test_the_annotation_dock_says_when_the_user_set_the_time(make_napari_viewer, tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, generate_stack(True, seed=2, n_frames=8, size=32, dtype="uint8"))
    viewer = make_napari_viewer()
    viewer.open(str(plain), plugin="napari")
    annotate = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    assert "⚠" in annotate.time_source.text()
    annotate.onset_spin.setValue(2.0)
    annotate.onset_spin.editingFinished.emit()
    assert annotate.time_source.text() == "0.5 h/frame, onset 2 h: set here"


def test_output_layers_leave_the_labelling_target_alone(make_napari_viewer, qtbot, checkpoint,
                                                        tmp_path):
    """Predicting one image while labelling another: the layers the run makes never take
    the selection, so the labels keep going to the image the user chose."""
    viewer = make_napari_viewer()
    for name, seed in (("predicted", 1), ("labelled", 2)):
        viewer.add_image(generate_stack(True, seed=seed, n_frames=4, size=32, dtype="uint8"),
                         name=name, metadata={"frame_interval_h": 0.5})
    predict = PredictionWidget(viewer)
    annotate = AnnotationWidget(viewer)
    for dock in (predict, annotate):
        viewer.window.add_dock_widget(dock)
    labelled = viewer.layers["labelled"]
    viewer.layers.selection.active = labelled
    predict.image.value = viewer.layers["predicted"]
    predict.checkpoint.value = checkpoint
    predict.device.value = "cpu"
    predict.mode.value = MODE_TILES
    predict.tile_size.value = 16
    assert not _predict(qtbot, predict).startswith("prediction failed")
    assert layer_name("predicted", "onset") in viewer.layers  # every output layer is made
    assert viewer.layers.selection.active is labelled
    assert annotate.layer is labelled and "labelled" in annotate.target_label.text()
    viewer.dims.set_current_step(0, 1)
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key_U, Qt.ShiftModifier)
    assert annotate.store.stack == memory_key(labelled)
    assert annotate.store.frames == {1: "uninfected"}


def test_a_run_uses_the_checkpoints_time_unless_the_user_set_it(make_napari_viewer, qtbot,
                                                                 checkpoint, tmp_path):
    """The first run with a checkpoint file times its frames by the checkpoint's onset (the
    dock only knew defaults before the file was loaded); a value the user set stays."""
    viewer = make_napari_viewer()
    viewer.add_image(generate_stack(True, seed=1, n_frames=4, size=32, dtype="uint8"),
                     name="plain")  # no time metadata
    predict = PredictionWidget(viewer)
    viewer.window.add_dock_widget(predict)
    session = predict.session
    predict.checkpoint.value = checkpoint
    predict.device.value = "cpu"
    assert not _predict(qtbot, predict).startswith("prediction failed")
    assert "onset 3 h from checkpoint" in predict.time_source.value
    plain = image_id(viewer.layers["plain"])
    assert session.runs[plain].onset_h == 3.0  # what the plot puts on the time axis

    predict.onset_h.value = 2.0  # the user's own onset, then another checkpoint file
    other = tmp_path / "other.pt"
    other.write_bytes(checkpoint.read_bytes())
    predict.checkpoint.value = other
    assert not _predict(qtbot, predict).startswith("prediction failed")
    assert predict.onset_h.value == 2.0 and predict.time_source.value == "set here"
    assert session.runs[plain].onset_h == 2.0


def test_a_new_output_layer_is_painted_in_a_later_turn(make_napari_viewer, qtbot):
    """Making a layer (100-200 ms of napari on a 2-core machine) and the canvas repaint it
    asks for (50-130 ms on software OpenGL) were one turn of the GUI thread; a run's layers
    are made hidden, so the repaint waits a turn: the viewer takes input in between. So
    does the repaint after each later step (its visual, its colorbar, each first draw)."""
    from qtpy.QtWidgets import QApplication

    from napari_infection_clock.core.tiles import TileSpec
    from napari_infection_clock.ui.overlays import PredictionLayers, tile_grid

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="well")
    canvas = viewer.window._qt_viewer.canvas._scene_canvas  # private: vispy's canvas
    qtbot.waitUntil(lambda: canvas.native.isVisible(), timeout=5_000)
    QApplication.processEvents()
    painted = []
    canvas.events.draw.connect(painted.append)
    layers = PredictionLayers(viewer, image, tile_grid(64, 64, TileSpec(32)), 4, 48.0)
    layers.make_next()  # the probability layer, hidden
    assert layer_name("well", "probability") in viewer.layers
    QApplication.processEvents()  # the turn that made it
    assert painted == []
    qtbot.waitUntil(lambda: bool(painted), timeout=5_000)  # and then the canvas is painted
    steps = 1
    while not layers.make_next():  # every later step too: its visual, controls, colorbar,
        steps += 1  # the layer shown, each visual's first draw
        painted.clear()
        QApplication.processEvents()
        assert painted == [], f"step {steps} was painted in its own turn"
        qtbot.waitUntil(lambda: bool(painted), timeout=5_000)
    assert steps > 10


def test_the_class_layer_makes_its_drawing_overlays_when_the_user_draws(make_napari_viewer):
    """napari gives every Labels layer a polygon and a brush-stroke overlay and makes their
    visuals with the layer (some 50 ms of a 2-core machine's GUI thread, inside the run);
    the class layer makes them the first time the user picks a drawing mode."""
    from napari_infection_clock.core.tiles import TileSpec
    from napari_infection_clock.ui.overlays import PredictionLayers, tile_grid

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="well")
    layers = PredictionLayers(viewer, image, tile_grid(64, 64, TileSpec(32)), 4, 48.0)
    while not layers.make_next():
        pass
    canvas = viewer.window._qt_viewer.canvas  # private: napari's vispy canvas
    made = canvas._layer_overlay_to_visual.get(layers.classes, {})
    assert made == {}  # nothing made for drawing while the layer is only looked at
    layers.classes.visible = True  # the user shows it, then picks the paint brush
    layers.classes.mode = "paint"  # as the layer controls' paint button does
    overlays = canvas._layer_overlay_to_visual[layers.classes]
    assert {type(o).__name__ for o in overlays} >= {"LabelsPolygonOverlay",
                                                    "LabelsBrushStrokeOverlay"}
    assert all(o.visible for o in overlays)


def test_an_output_layer_gets_its_canvas_visual_in_later_turns_and_its_controls_when_picked(
        make_napari_viewer, qtbot, monkeypatch):
    """Adding a layer made, in one turn, its canvas visual (vispy: 60-90 ms on a 2-core
    machine) and its layer controls (Qt: an image's 70-90 ms, and as much again for the
    window's layout and repaint that follow); a run makes its layers' visuals in turns of
    their own, and their controls only once the user picks one in the layer list (napari
    shows a layer's controls only then): no run pays for controls nobody looks at."""
    from napari_infection_clock.core.tiles import TileSpec
    from napari_infection_clock.ui.overlays import PredictionLayers, tile_grid

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="well")
    qt_viewer = viewer.window._qt_viewer  # private: where napari keeps both
    layers = PredictionLayers(viewer, image, tile_grid(64, 64, TileSpec(32)), 4, 48.0)
    layers.make_next()  # the probability layer
    assert layers.probability in viewer.layers
    assert layers.probability not in qt_viewer.canvas.layer_to_visual
    layers.make_next()
    assert layers.probability in qt_viewer.canvas.layer_to_visual  # the visual, a turn later
    while not layers.make_next():
        pass
    made = (layers.probability, layers.duration, layers.classes, layers.tiles)
    for layer in made:
        assert layer in qt_viewer.canvas.layer_to_visual
    assert layers.probability.visible and layers.tiles.visible
    assert qt_viewer.canvas.layer_to_visual[layers.probability].node.visible
    click_layer(viewer, image)  # another layer picked: still no output layer's controls
    assert not set(made) & set(qt_viewer.controls.widgets)
    click_layer(viewer, layers.duration)
    assert qt_viewer.controls.currentWidget() is qt_viewer.controls.widgets[layers.duration]
    assert not {layers.probability, layers.classes, layers.tiles} & set(qt_viewer.controls.widgets)
    classes, made = layers.classes, []
    monkeypatch.setattr(  # napari's maker of controls, recorded on the way through
        controls_container, "create_qt_layer_controls",
        lambda layer, make=controls_container.create_qt_layer_controls: (
            made.append(layer), make(layer))[1])
    viewer.layers.remove(classes)  # never picked, removed (the image's removal takes its
    # outputs with it): napari's removal finds what it expects, and no controls are made
    # only to be deleted
    assert classes not in qt_viewer.canvas.layer_to_visual
    assert classes not in qt_viewer.controls.widgets
    assert made == []
    click_layer(viewer, layers.tiles)  # picked and deleted with the trash button
    tiles = layers.tiles
    delete_selected(viewer)
    assert tiles not in viewer.layers and tiles not in qt_viewer.canvas.layer_to_visual
    assert tiles not in qt_viewer.controls.widgets


def test_an_output_layer_can_be_picked_or_deleted_before_its_controls_are_made(
        make_napari_viewer, qtbot):
    """The user clicks a new output layer in the layer list, or deletes it, in the turn
    between its making and its controls': napari finds what it expects (its controls shown,
    its visual removed) and nothing is raised."""
    from napari_infection_clock.core.tiles import TileSpec
    from napari_infection_clock.ui.overlays import PredictionLayers, tile_grid

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="well")
    qt_viewer = viewer.window._qt_viewer
    layers = PredictionLayers(viewer, image, tile_grid(64, 64, TileSpec(32)), 4, 48.0)
    layers.make_next()
    probability = layers.probability
    viewer.layers.selection.active = probability  # a click on it in the layer list
    assert qt_viewer.controls.currentWidget() is qt_viewer.controls.widgets[probability]
    layers.make_next()  # the duration layer, once the probability's steps are done
    while layers.duration is None:
        layers.make_next()
    duration = layers.duration
    viewer.layers.remove(duration)  # the layer list's delete button
    assert duration not in qt_viewer.canvas.layer_to_visual
    assert duration not in qt_viewer.controls.widgets
    viewer.layers.remove(image)  # and the rest, with the viewer, as napari closes
    viewer.layers.clear()
    assert qt_viewer.canvas.layer_to_visual == {}


def _visuals(node) -> list:
    """The vispy visuals ``node`` is drawn with (subvisuals of compounds, children of nodes)."""
    if getattr(node, "_subvisuals", None):
        return [v for sub in node._subvisuals for v in _visuals(sub)]
    if hasattr(node, "_program"):
        return [node]
    return [v for child in node.children for v in _visuals(child)]


def test_a_new_tiles_layer_and_colorbar_are_first_drawn_one_visual_per_turn(
        make_napari_viewer, qtbot):
    """The tiles layer's first paint built vispy's shaders of its five visuals (faces, three
    highlights, a text: 240 ms on 2 cores), a colorbar's of six (ticks, their labels, the
    colour ramp, the box: 140 ms): each is shown, and so first drawn, in a step of its own;
    in the end all are shown, but the tiles' text, which napari draws with an empty string
    while the layer has none: it is drawn once the user gives the layer a text."""
    from napari_infection_clock.core.tiles import TileSpec
    from napari_infection_clock.ui.overlays import PredictionLayers, tile_grid

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="well")
    canvas = viewer.window._qt_viewer.canvas  # private: napari's vispy canvas
    layers = PredictionLayers(viewer, image, tile_grid(64, 64, TileSpec(32)), 4, 48.0)

    def colorbar():
        return canvas._layer_overlay_to_visual[layers.probability][layers.probability.colorbar]

    seen_tiles, seen_colorbar = set(), set()
    while not layers.make_next():
        if layers.tiles is not None and layers.tiles.visible:
            tiles = _visuals(canvas.layer_to_visual[layers.tiles].node)
            seen_tiles.add(sum(v.visible for v in tiles))
        if layers.probability is not None and layers.probability.colorbar.visible:
            seen_colorbar.add(sum(v.visible for v in _visuals(colorbar().node)))
    node = canvas.layer_to_visual[layers.tiles].node
    tiles = _visuals(node)
    assert len(tiles) == 5 and [v for v in tiles if not v.visible] == [node.text]
    assert seen_tiles == {1, 2, 3}  # shown one more per step (all four: the ready state)
    layers.tiles.text = "tile_row"  # as the console or another plugin may
    assert node.text.visible
    layers.tiles.text.visible = False  # the layer controls' "display text" box
    assert not node.text.visible
    bar = _visuals(colorbar().node)
    assert len(bar) == 6 and all(v.visible for v in bar)
    assert seen_colorbar == set(range(1, 7))


def test_a_layers_parts_are_made_when_no_dock_asks_for_them(make_napari_viewer, qtbot):
    """The prediction dock closed mid-run asks for no more steps: the layer it made last
    still gets its canvas visual (napari's canvas updates no layer while one lacks it), and
    its controls once the user picks it."""
    from napari_infection_clock.core.tiles import TileSpec
    from napari_infection_clock.ui.overlays import PredictionLayers, tile_grid

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="well")
    qt_viewer = viewer.window._qt_viewer
    layers = PredictionLayers(viewer, image, tile_grid(64, 64, TileSpec(32)), 4, 48.0)
    layers.make_next()  # the probability layer; then nothing more is asked
    qtbot.waitUntil(lambda: layers.probability in qt_viewer.canvas.layer_to_visual,
                    timeout=10_000)
    click_layer(viewer, layers.probability)
    assert qt_viewer.controls.currentWidget() is qt_viewer.controls.widgets[layers.probability]


def test_a_layer_reused_by_the_next_run_is_not_placed_again_where_it_is(make_napari_viewer):
    """A run reuses its image's output layers; napari refreshes a layer (and the viewer's
    extent) on every set of its scale, translate or contrast limits, equal or not (15-30 ms
    of the GUI thread each on 2 cores): a reused layer in the same place is left there."""
    from napari_infection_clock.core.tiles import TileSpec
    from napari_infection_clock.ui.overlays import PredictionLayers, tile_grid

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="well")
    grid = tile_grid(64, 64, TileSpec(32))
    first = PredictionLayers(viewer, image, grid, 4, 48.0)
    while not first.make_next():
        pass
    placed = []
    for layer in (first.probability, first.duration, first.classes, first.tiles):
        for name in ("scale", "translate", "contrast_limits"):
            if hasattr(layer.events, name):
                getattr(layer.events, name).connect(lambda e, n=name: placed.append(n))
    again = PredictionLayers(viewer, image, grid, 4, 48.0)
    while not again.make_next():
        pass
    assert again.probability is first.probability and again.tiles is first.tiles
    assert placed == []
    moved = PredictionLayers(viewer, image, tile_grid(64, 64, TileSpec(16)), 4, 24.0)
    while not moved.make_next():
        pass
    assert "scale" in placed and "contrast_limits" in placed  # a new grid, a new clamp
    assert tuple(moved.probability.scale[1:]) == (16.0, 16.0)
    assert tuple(moved.duration.contrast_limits) == (0.0, 24.0)


def test_a_reused_tiles_layer_takes_a_new_grid_in_two_steps(make_napari_viewer):
    """A run with another tile grid than the last lays the reused tiles layer's rectangles
    again (60-100 ms of napari's Shapes on 2 cores): the old ones go in one step, the new
    ones and their features come in the next."""
    from napari_infection_clock.core.tiles import TileSpec
    from napari_infection_clock.ui.overlays import PredictionLayers, tile_grid

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="well")
    first = PredictionLayers(viewer, image, tile_grid(64, 64, TileSpec(32)), 4, 48.0)
    while not first.make_next():
        pass
    tiles = first.tiles
    assert len(tiles.data) == 4
    again = PredictionLayers(viewer, image, tile_grid(64, 64, TileSpec(16)), 4, 48.0)
    counts = []
    while not again.make_next():
        counts.append(len(tiles.data))
    assert again.tiles is tiles
    assert 0 in counts  # a step ended with the old rectangles gone, the new ones not laid
    assert len(tiles.data) == 16 and len(tiles.features) == 16
    assert sorted(map(tuple, tiles.features[["tile_row", "tile_col"]].to_numpy())) == [
        (r, c) for r in range(4) for c in range(4)]


def test_each_layer_step_at_a_runs_end_is_painted_before_the_next(make_napari_viewer, qtbot,
                                                                   checkpoint, monkeypatch):
    """A run shorter than its layers take to make makes the rest in steps at its end; each
    step's repaint (a visual's first draw among them) is shown before the next step, also
    when the GUI thread was held meanwhile (a long garbage collection after a step): each
    step had held the canvas again before the last one's repaint, and the tiles layer's
    visuals were first drawn in one paint (9 programs built, 128 ms on 2 cores)."""
    from napari_infection_clock.ui.overlays import PredictionLayers

    viewer = make_napari_viewer(show=True)
    viewer.add_image(generate_stack(True, seed=1, n_frames=2, size=32, dtype="uint8"),
                     name="well", metadata={"frame_interval_h": 0.5})
    predict = PredictionWidget(viewer)
    viewer.window.add_dock_widget(predict)
    predict.checkpoint.value = checkpoint
    predict.device.value = "cpu"
    events = []
    canvas = viewer.window._qt_viewer.canvas._scene_canvas  # private: vispy's canvas
    canvas.events.draw.connect(lambda event: events.append("paint"))
    real_step = PredictionLayers.make_next

    def step(self):
        events.append("step")
        return real_step(self)

    monkeypatch.setattr(PredictionLayers, "make_next", step)
    from napari_infection_clock.ui import gc_freeze

    real_collect = gc_freeze._collect

    def slow_collect():  # the full collection after each step, as on a loaded machine:
        real_collect()  # long enough that the step's repaint and the next step are both due
        time.sleep(0.12)

    monkeypatch.setattr(gc_freeze, "_collect", slow_collect)
    widget = canvas.native
    followers = widget.receivers(widget.frameSwapped)
    assert _predict(qtbot, predict).startswith("done")
    qtbot.wait(200)
    assert widget.receivers(widget.frameSwapped) == followers + 1  # one, however many steps
    steps = "".join("s" if e == "step" else "p" for e in events)
    steps = steps[steps.index("s"):].rstrip("p")  # from the first step to the last
    assert steps.count("s") > 10
    assert "ss" not in steps, steps  # a paint between every two steps


def test_the_collection_after_a_layer_step_lets_what_fell_due_go_first(qtbot):
    """A layer step's full collection (50-80 ms) has an event-loop turn of its own: a timer
    that fell due during the step (a repaint's, the user's input, the stall benchmark's
    tick) runs before it, not after the step and the collection as one long stall."""
    import gc

    from qtpy.QtCore import QTimer

    from napari_infection_clock.ui.gc_freeze import collected_after

    order = []

    def collecting(phase, info):
        if phase == "start" and info["generation"] == 2:
            order.append("collection")

    gc.callbacks.append(collecting)
    try:
        QTimer.singleShot(5, lambda: order.append("due"))
        with collected_after():
            time.sleep(0.03)  # the step's work
        qtbot.waitUntil(lambda: "collection" in order and "due" in order, timeout=5_000)
    finally:
        gc.callbacks.remove(collecting)
    assert order.index("due") < order.index("collection"), order


def test_opening_the_first_dock_scans_none_of_what_napari_made():
    """What napari made (a quarter of a million objects) is frozen before the first dock's
    imports, so every full collection while the dock opens scans only what came after:
    collecting it all first held the GUI thread 0.2-0.4 s and found 7 unreachable objects,
    and the full collections that the dock's own imports set off scanned it all again. In
    a fresh process, napari first, as a user's."""
    out = run_fresh("import gc, napari; viewer = napari.Viewer(show=False); frozen = []; "
                    "gc.callbacks.append(lambda phase, info: phase == 'start' and "
                    "info['generation'] == 2 and frozen.append(gc.get_freeze_count())); "
                    "viewer.window.add_plugin_dock_widget('napari-infection-clock', "
                    "'Predict infection'); print(gc.get_freeze_count(), *frozen)")
    frozen_in_the_end, *frozen_at_each_full = map(int, out.split())
    assert frozen_in_the_end > 100_000, out
    assert all(frozen > 50_000 for frozen in frozen_at_each_full), out


def test_a_repaint_a_hidden_canvas_cannot_show_is_not_waited_for(make_napari_viewer, qtbot):
    """A run's end steps wait for the canvas's repaint (at most half a second each), but a
    canvas not on screen (a hidden or minimised window) shows none: nothing to wait for,
    else each end step waited the whole half second."""
    from napari_infection_clock.ui.gl_context import painted_later, repaint_pending

    viewer = make_napari_viewer(show=False)
    layer = viewer.add_image(np.zeros((2, 8, 8), np.float32))
    with painted_later(viewer):
        layer.contrast_limits = (0.0, 2.0)
    assert repaint_pending(viewer)  # held
    qtbot.waitUntil(lambda: viewer.window._qt_viewer.canvas.native.updatesEnabled())
    assert not repaint_pending(viewer)  # given back, and no frame can be shown

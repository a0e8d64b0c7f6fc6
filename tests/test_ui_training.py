"""The training dock in a real viewer: a worker trains on annotation stores, curves
update, Stop keeps the old checkpoint, bad input is refused with a message."""

from __future__ import annotations

import re
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from napari_infection_clock.core.annotations import open_annotations
from napari_infection_clock.core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.recipes import CLOCK, RESEARCH
from napari_infection_clock.core.synthetic import generate_stack, write_research_dataset
from napari_infection_clock.ui.annotation_widget import AnnotationWidget
from napari_infection_clock.ui.state import SessionModel, session_for
from napari_infection_clock.ui.training_widget import TrainingWidget

from .native_tiles import native_model
from .notices import notifications_said


@pytest.fixture(scope="module")
def wells(tmp_path_factory):
    root = tmp_path_factory.mktemp("wells")
    return write_research_dataset(root, n_infected=2, n_mock=2, n_frames=16, size=32, seed=2)


def _label(session, paths, n_frames=16):
    """What the annotation widget leaves in the session: one store per labelled image."""
    for path in paths:
        store, sidecar = open_annotations(path, n_frames)
        infected = "infected" in path.parent.name and "uninfected" not in path.parent.name
        store.set_condition("infected" if infected else "mock", onset_h=1.0)
        store.label_frames(range(2 if infected else 0, n_frames), "infected" if infected else "uninfected")
        store.save(sidecar)
        session.annotations[store.stack] = store


def _widget(make_napari_viewer, tmp_path, epochs=2, show=False):
    viewer = make_napari_viewer(show=show)
    widget = TrainingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.start_combo.setCurrentText("random")
    widget.arch_combo.setCurrentText("resnet18")
    widget.size_spin.setValue(32)
    widget.epochs_spin.setValue(epochs)
    widget.batch_spin.setValue(16)
    widget.lr_spin.setValue(1e-3)
    widget.device_combo.setCurrentText("cpu")
    widget.output_edit.setText(str(tmp_path / "out" / "model.pt"))
    return viewer, widget


def test_train_in_worker_curves_update_and_model_is_used(make_napari_viewer, qtbot, wells,
                                                         tmp_path):
    viewer, widget = _widget(make_napari_viewer, tmp_path)
    session = session_for(viewer)
    _label(session, wells)
    epochs_seen, requested = [], []
    session.prediction_requested.connect(lambda: requested.append(True))
    widget.auto_check.setChecked(True)  # use the new model and refresh predictions when done
    line = widget.lines["train_loss"]
    widget.canvas.mpl_connect("draw_event",
                              lambda e: epochs_seen.append(len(line.get_xdata())))
    widget.start_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    widget.canvas.draw()
    assert epochs_seen[-1] == 2 and widget.lines["train_loss"] is line  # grown in place
    assert list(widget.lines["val_loss"].get_xdata()) == [1, 2]
    assert widget.progress.value() == widget.progress.maximum()
    assert len(widget.lines["val_mae"].get_ydata()) == 2
    assert widget.device_label.text() == "device: cpu"
    assert "best epoch" in widget.status.text() and widget.use_button.isEnabled()
    _, meta = load_checkpoint(tmp_path / "out" / "model.pt")
    assert len(meta.history) == 2 and meta.preprocessing.image_size == 32
    assert session.validation_items  # for the evaluation dock
    assert session.model is widget.trained and requested == [True]
    assert session.model.origin == "trained in this session"
    widget.use_button.click()  # the one-click way does the same
    assert session.model is widget.trained and requested == [True, True]


def test_start_reads_the_labels_and_plans_the_split_off_the_gui_thread(
        make_napari_viewer, qtbot, wells, tmp_path, monkeypatch):
    """Start read every labelled stack (tifffile) and planned the split on the GUI thread:
    200 ms for four small wells, seconds for a plate; the run does it now, and the dock
    says the split once it is known."""
    from napari_infection_clock.core import retrain

    viewer, widget = _widget(make_napari_viewer, tmp_path, epochs=1)
    _label(session_for(viewer), wells)
    threads = []
    for name in ("labels_of", "plan_from_labels"):
        def recorded(*args, real=getattr(retrain, name), **kwargs):
            threads.append(threading.get_ident())
            return real(*args, **kwargs)
        monkeypatch.setattr(retrain, name, recorded)  # the run imports them from there
    widget.start_button.click()
    qtbot.waitUntil(lambda: "held out" in widget.status.toolTip() + widget.status.text(),
                    timeout=60_000)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert len(threads) == 2 and threading.get_ident() not in threads
    assert "best epoch" in widget.status.text(), widget.status.text()

def test_the_curves_are_drawn_off_the_gui_thread(make_napari_viewer, qtbot, wells, tmp_path,
                                                 monkeypatch):
    """A run's curves are drawn by matplotlib on a thread of its own, and shown once
    drawn: on the GUI thread a draw of the three axes held the viewer 180-260 ms (docs/
    benchmarks.md, GUI-thread stalls)."""
    viewer, widget = _widget(make_napari_viewer, tmp_path, epochs=1, show=True)
    _label(session_for(viewer), wells)
    qtbot.waitUntil(lambda: not widget.figure.stale, timeout=10_000)
    mae = np.array([round(255 * c) for c in to_rgb("C4")] + [255], np.uint8)

    def mae_pixels() -> int:  # the MAE curve's colour, in its axes only (no legend there)
        return int((np.asarray(widget.canvas.buffer_rgba()) == mae).all(axis=-1).sum())

    assert mae_pixels() == 0
    threads = []
    for ax in widget.axes:
        def draw(renderer, real=ax.draw):
            threads.append(threading.get_ident())
            return real(renderer)
        monkeypatch.setattr(ax, "draw", draw)
    widget.start_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert len(widget.lines["val_mae"].get_xdata()) == 1
    qtbot.waitUntil(lambda: not widget.figure.stale, timeout=10_000)
    assert threads and threading.get_ident() not in threads
    assert mae_pixels() > 0


def test_stop_keeps_the_previous_checkpoint(make_napari_viewer, qtbot, wells, tmp_path):
    viewer, widget = _widget(make_napari_viewer, tmp_path, epochs=3)
    widget.mode_combo.setCurrentText("full")
    widget.split_combo.setCurrentText("frame blocks")
    widget.block_spin.setValue(4)
    widget.guard_spin.setValue(2)
    session = session_for(viewer)
    _label(session, wells)
    torch.manual_seed(0)
    config = ModelConfig(arch="resnet18", hidden_dim=32)
    old = save_checkpoint(tmp_path / "out" / "model.pt", build_model(config),
                          CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=32)))
    before = old.read_bytes()
    said = []  # the status lines the dock shows, one after the other
    show_text = widget.status.setText
    widget.status.setText = lambda text: (said.append(text), show_text(text))
    widget.start_button.click()
    # Stop is a flag the core polls before each batch: pressed at once, the run stops
    # before its first epoch is validated (it has planned the split first).
    widget.stop_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    plan = next(text for text in said if "held out" in text)
    assert "block(s) of 4 frames held out" in plan
    left_out = re.search(r"(\d+) neighbouring item\(s\) left out as a 2-frame guard band",
                         plan)
    assert left_out and int(left_out.group(1)) > 0, plan
    event = widget.last_event
    assert (event.stage, event.epoch) == ("stopped", 1) and event.best_epoch is None
    assert old.read_bytes() == before
    assert sorted(p.name for p in old.parent.iterdir()) == ["model.pt"]
    assert "unchanged" in widget.status.text() and not widget.use_button.isEnabled()


def test_bad_input_is_refused_with_a_message(make_napari_viewer, qtbot, wells, tmp_path):
    viewer, widget = _widget(make_napari_viewer, tmp_path)
    session = session_for(viewer)
    assert not widget.start() and "no labels" in widget.status.text()

    _label(session, [p for p in wells if p.parent.name == "uninfected"])
    assert widget.start()  # the run reads the labels, and refuses them
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "are uninfected" in widget.status.text() and widget.trained is None
    assert widget.progress.maximum() > 0  # no longer busy (a range of 0 animates forever)

    _label(session, wells)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    widget.output_edit.setText(str(blocker / "model.pt"))
    assert not widget.start() and "is not a writable folder" in widget.status.text()
    assert widget.worker is None

    widget.output_edit.setText(str(tmp_path / "m.pt"))
    widget.start_combo.setCurrentText("session model")
    assert not widget.start() and "no loaded model" in widget.status.text()

    # ImageNet weights offline: the message says so and offers random; nothing falls back
    widget.start_combo.setCurrentText("imagenet")
    from napari_infection_clock.core.model import imagenet_weights_file

    if imagenet_weights_file("resnet18").exists():
        pytest.skip("ImageNet weights are cached here")
    assert widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "not available" in widget.status.text() and "random" in widget.status.text()
    assert not (tmp_path / "m.pt").exists() and widget.trained is None


def test_labels_of_images_with_no_file_are_said_to_be_left_out(make_napari_viewer, tmp_path):
    viewer, widget = _widget(make_napari_viewer, tmp_path)
    annotate = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    viewer.add_image(generate_stack(True, seed=1, n_frames=6, size=32, dtype="uint8"),
                     name="sample")  # no file, no project folder: labels stay in memory
    for frame, label in ((1, "uninfected"), (4, "infected")):
        viewer.dims.set_current_step(0, frame)
        annotate.buttons[label].click()
    assert not widget.start()
    said = widget.status.text()
    assert "no labels" in said and "2 labels of images with no file left out" in said, said


def test_session_model_is_the_default_start(make_napari_viewer, tmp_path):
    viewer, widget = _widget(make_napari_viewer, tmp_path)
    config = ModelConfig(arch="resnet34", hidden_dim=16)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=96))
    session_for(viewer).set_model(SessionModel(build_model(config), meta))
    assert widget.start_combo.currentText() == "session model"
    assert widget.arch_combo.currentText() == "resnet34" and widget.size_spin.value() == 96


def test_a_torch_error_in_the_worker_ends_with_its_message(make_napari_viewer, qtbot, wells,
                                                          tmp_path):
    """A session model whose class head no longer fits its backbone: torch raises a
    RuntimeError (shape mismatch) mid-run, which superqt's worker would swallow."""
    from torch import nn

    viewer, widget = _widget(make_napari_viewer, tmp_path)
    session = session_for(viewer)
    _label(session, wells)
    config = ModelConfig(arch="resnet18", hidden_dim=16)
    model = build_model(config)
    model.classifier = nn.Sequential(nn.Linear(7, 2))
    session.set_model(SessionModel(model, CheckpointMeta(
        model=config, preprocessing=Preprocessing(image_size=32))))
    assert widget.start_combo.currentText() == "session model"
    assert widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.status.text().startswith("training failed: RuntimeError")
    assert widget.trained is None and not widget.use_button.isEnabled()
    assert not (tmp_path / "out" / "model.pt").exists()


def test_one_epoch_runs_with_the_default_path_keep_each_run(make_napari_viewer, qtbot, wells,
                                                            tmp_path, monkeypatch):
    """A one-epoch run plots visible points on a whole-epoch tick (item 7); two runs with
    the default "save best to" keep two checkpoints (item 8)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer)  # made with HOME set: its default path is in there
    viewer.window.add_dock_widget(widget)
    for combo, text in ((widget.start_combo, "random"), (widget.arch_combo, "resnet18"),
                        (widget.mode_combo, "heads"), (widget.device_combo, "cpu")):
        combo.setCurrentText(text)
    widget.size_spin.setValue(32)
    widget.epochs_spin.setValue(1)
    _label(session_for(viewer), wells)
    saved = []
    for recipe in ("research", "clock"):  # the second run with the clock recipe
        widget.recipe_combo.setCurrentText(recipe)
        widget.start_button.click()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
        assert widget.trained is not None, widget.status.text()
        assert widget.trained.meta.recipe["name"] == recipe
        saved.append(widget.trained.path)
    assert saved[0] != saved[1] and all(p.is_file() for p in saved)
    # heads-only trains on cached, un-augmented features: the checkpoint records that
    assert load_checkpoint(saved[1])[1].recipe == replace(CLOCK, augment="none").to_dict()
    assert saved[0].parent == tmp_path / "home" / "infection-clock-models"

    widget.canvas.draw()
    ax = widget.axes[0]
    line = widget.lines["train_loss"]
    assert list(line.get_xdata()) == [1] and line.get_marker() not in ("", "None", None)
    lo, hi = ax.get_xlim()
    assert lo < 1 < hi
    ticks = [t for t in widget.axes[-1].get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_training_on_from_a_native_tile_model_keeps_its_tiles(make_napari_viewer, qtbot, wells,
                                                               tmp_path):
    """A session model trained on native 16 px tiles (``train --native-tiles 16``) goes on
    learning from the labelled frames' 16 px tiles, as it was trained, not from whole frames
    shrunk to 16 px; the status line says so and the new checkpoint records the tiles."""
    viewer, widget = _widget(make_napari_viewer, tmp_path, epochs=1)
    widget.mode_combo.setCurrentText("heads")
    session = session_for(viewer)
    _label(session, wells)
    session.set_model(SessionModel(*native_model(16)))
    assert widget.start_combo.currentText() == "session model"
    widget.start_button.click()
    qtbot.waitUntil(lambda: "training on 16 px tiles, as the session model was trained"
                    in widget.status.text(), timeout=60_000)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert widget.trained is not None, widget.status.text()
    trained = widget.trained.meta
    assert trained.recipe["native_tiles"] == trained.tile_size == 16
    assert trained.preprocessing.image_size == 16
    items = session.validation_items  # what the evaluation dock gets: the frames' tiles
    assert items and {(i.box[2] - i.box[0], i.box[3] - i.box[1]) for i in items} == {(16, 16)}


def test_choosing_a_recipe_sets_its_learning_rate_and_metric_and_back(make_napari_viewer,
                                                                        tmp_path):
    """The clock recipe brings its learning rate and best-epoch metric into the form;
    choosing research again brings back SPEC 6's, so research never trains at clock's."""
    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.recipe_combo.setCurrentText("clock")
    assert (widget.lr_spin.value(), widget.best_combo.currentText()) == (1e-3, "loss")
    assert widget.train_config().lr == 1e-3
    widget.recipe_combo.setCurrentText("research")
    assert (widget.lr_spin.value(), widget.best_combo.currentText()) == (1e-4, "roc_auc")
    config = widget.train_config()
    assert (config.lr, config.best_metric, config.recipe) == (1e-4, "roc_auc", RESEARCH)


def test_retraining_and_using_the_new_model_keep_no_earlier_run(make_napari_viewer, qtbot,
                                                                 wells, tmp_path):
    """Heads-only retraining from the session model, then "Use new model" (which predicts
    again), run after run from the dock's buttons: what stays alive is the session's model
    and the dock's last trained one, not one more per run, and without waiting for a full
    garbage collection (rare while a dock is open: ui/gc_freeze.py)."""
    import gc

    from napari_infection_clock.core.model import MultitaskResNet
    from napari_infection_clock.ui.prediction_widget import PredictionWidget
    from napari_infection_clock.ui.workers import Run

    viewer, widget = _widget(make_napari_viewer, tmp_path, epochs=1)
    widget.mode_combo.setCurrentText("heads")
    viewer.add_image(generate_stack(True, seed=3, n_frames=2, size=32, dtype="uint8"), name="w",
                     metadata={"frame_interval_h": 0.5})
    predict = PredictionWidget(viewer)
    viewer.window.add_dock_widget(predict)
    predict.device.value = "cpu"
    _label(session_for(viewer), wells)
    predicted = []
    predict.finished.connect(predicted.append)

    def models():  # with weights: prediction folds BatchNorm on weightless ("meta") copies
        return sum(isinstance(o, MultitaskResNet) and not next(o.parameters()).is_meta
                   for o in gc.get_objects())

    alive = []
    gc.collect()
    gc.disable()  # what is freed must be freed when let go, not by the cyclic collector
    try:
        for i in range(4):
            widget.output_edit.setText(str(tmp_path / "out" / f"run{i}.pt"))
            widget.start_button.click()
            qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
            assert widget.use_button.isEnabled(), widget.status.text()
            widget.use_button.click()
            qtbot.waitUntil(lambda i=i: len(predicted) > i, timeout=60_000)
            qtbot.waitUntil(lambda: not widget.findChildren(Run)
                            and not predict.native.findChildren(Run), timeout=5_000)
            alive.append(models())
    finally:
        gc.enable()
    assert all(m.startswith("done") for m in predicted), predicted
    assert alive[1:] == alive[:1] * 3, alive  # not one more model per run


def test_using_the_new_model_is_said_in_the_dock_in_sight(make_napari_viewer, qtbot, wells,
                                                         tmp_path):
    """"Use new model" answers in the dock's status line, after the run's own answer; a
    notification (its slide-in repaints the canvas while the refresh predicts) only when
    the dock is out of sight: here a run that uses its model when it ends, with another
    dock tabbed in front meanwhile."""
    viewer, widget = _widget(make_napari_viewer, tmp_path, epochs=1, show=True)
    _label(session_for(viewer), wells)
    with notifications_said() as said:
        widget.start_button.click()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
        ended = widget.status.text()
        assert ended.startswith("done: best epoch 1"), ended
        widget.use_button.click()
        assert widget.status.text().startswith(ended), widget.status.text()
        assert "new model in use" in widget.status.text()
        assert said == []

        widget.auto_check.setChecked(True)  # the next run's model is used when it ends
        widget.start_button.click()
        # another dock, tabbed in front of this one
        viewer.window.add_plugin_dock_widget("napari-infection-clock", "Evaluate the model")
        qtbot.waitUntil(lambda: widget.status.visibleRegion().isEmpty(), timeout=5_000)
        qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
        assert [m for m in said if m.startswith("new model in use")], said

"""The annotation dock in a real viewer: buttons, shortcuts, crops, autosave and reload."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_infection_clock.core.annotations import AnnotationStore, sidecar_path
from napari_infection_clock.core.checkpoint import CheckpointMeta, save_checkpoint
from napari_infection_clock.core.labels import read_label_table
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.stack import open_stack, write_stack
from napari_infection_clock.core.synthetic import generate_stack
from napari_infection_clock.ui.annotation_widget import AnnotationWidget
from napari_infection_clock.ui.layer_roles import OUTPUT_OF, image_id, is_output, layer_stack_path
from napari_infection_clock.ui.state import session_for

from .layer_list import click_eye, click_layer, delete_selected, rename_layer

N_FRAMES = 20
PLUGIN = "napari-infection-clock"


@pytest.fixture
def stack_file(tmp_path):
    path = tmp_path / "images" / "well_p2_t0-19.tif"
    write_stack(path, generate_stack(True, seed=3, n_frames=N_FRAMES, size=48, dtype="uint8"),
                "TYX", 0.5)
    return path


def _open(make_napari_viewer, path, qtbot):
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-infection-clock")
    widget = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def _press(viewer, qtbot, key):
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, key, Qt.ShiftModifier)


def _bound(viewer) -> set[str]:
    """The viewer's key bindings as napari prints them ("Shift+I")."""
    return {str(k) for k in viewer.keymap}


def test_label_with_buttons_keys_and_crops_then_reopen(make_napari_viewer, qtbot, stack_file,
                                                       tmp_path):
    viewer, widget = _open(make_napari_viewer, stack_file, qtbot)
    assert widget.store is not None and widget.store.stack == str(stack_file.resolve())
    widget.condition_combo.setCurrentText("infected")
    widget.onset_spin.setValue(2.0)
    widget.onset_spin.editingFinished.emit()
    assert (widget.store.condition, widget.store.onset_h) == ("infected", 2.0)

    viewer.dims.set_current_step(0, 10)
    qtbot.mouseClick(widget.buttons["infected"], Qt.LeftButton)
    assert "infected" in widget.frame_info.text() and "infected for 3 h" in widget.frame_info.text()
    viewer.dims.set_current_step(0, 1)
    _press(viewer, qtbot, Qt.Key_U)  # Shift+U on the canvas
    viewer.dims.set_current_step(0, 0)
    _press(viewer, qtbot, Qt.Key_U)
    widget.range_check.setChecked(True)
    widget.range_from.setValue(12)
    widget.range_to.setValue(15)
    qtbot.mouseClick(widget.buttons["infected"], Qt.LeftButton)
    widget.range_check.setChecked(False)
    viewer.dims.set_current_step(0, 15)
    _press(viewer, qtbot, Qt.Key_C)  # clear frame 15
    assert widget.store.frames == {0: "uninfected", 1: "uninfected", 10: "infected",
                                   12: "infected", 13: "infected", 14: "infected"}

    # crops: draw two rectangles on frame 12, relabel one by shortcut
    viewer.dims.set_current_step(0, 12)
    crops = widget.show_crops_layer()
    crops.add_rectangles([np.array([[12, 2, 3], [12, 2, 20], [12, 18, 20], [12, 18, 3]]),
                          np.array([[12, 20, 20], [12, 20, 40], [12, 40, 40], [12, 40, 20]])])
    assert set(widget.store.crops.values()) == {"infected"}
    crops.selected_data = {1}
    _press(viewer, qtbot, Qt.Key_U)
    assert widget.store.crops == {(12, (2, 3, 18, 20)): "infected",
                                  (12, (20, 20, 40, 40)): "uninfected"}
    crops.selected_data = {0}
    widget.crop_label_combo.setCurrentText("uninfected")
    qtbot.mouseClick(widget.apply_crops_button, Qt.LeftButton)  # set from the widget
    assert set(widget.store.crops.values()) == {"uninfected"}
    _press(viewer, qtbot, Qt.Key_I)  # and back by shortcut
    assert "frames: 4 infected, 2 uninfected" in widget.counts_label.text()
    assert "crops: 1 infected, 1 uninfected" in widget.counts_label.text()

    # a contradiction is flagged
    viewer.dims.set_current_step(0, 16)
    qtbot.mouseClick(widget.buttons["uninfected"], Qt.LeftButton)
    flags = [widget.issues_list.item(i).text() for i in range(widget.issues_list.count())]
    assert any("frame 16" in f and "uninfected after frame 10" in f for f in flags)

    saved = sidecar_path(stack_file)
    assert saved.is_file()
    frames, crops_before = dict(widget.store.frames), dict(widget.store.crops)

    assert {"Shift+I", "Shift+U", "Shift+C"} <= _bound(viewer)
    widget.close()
    assert not {"Shift+I", "Shift+U", "Shift+C"} & _bound(viewer)
    viewer.close()
    session_for(viewer).annotations.clear()

    viewer2, widget2 = _open(make_napari_viewer, stack_file, qtbot)
    assert widget2.store.frames == frames and widget2.store.crops == crops_before
    assert widget2.condition_combo.currentText() == "infected"
    assert widget2.crops_layer is not None and len(widget2.crops_layer.data) == 2
    assert list(widget2.crops_layer.features["label"]) == ["infected", "uninfected"]


def test_bad_onset_export_import_and_unsaved_image(make_napari_viewer, qtbot, stack_file,
                                                   tmp_path):
    viewer, widget = _open(make_napari_viewer, stack_file, qtbot)
    widget.condition_combo.setCurrentText("infected")
    widget.onset_spin.setValue(50.0)  # the stack spans 0-9.5 h
    widget.onset_spin.editingFinished.emit()
    assert "outside the stack" in widget.status.text()
    assert widget.onset_spin.value() == widget.store.onset_h != 50.0

    viewer.dims.set_current_step(0, 8)
    widget.label_current("infected")
    out = widget.export_csv(tmp_path / "labels.csv")
    table = read_label_table(out)
    assert table[["frame", "label"]].values.tolist() == [[8, "infected"]]

    widget.label_current(None)
    assert widget.import_csv(out) == 1 and widget.store.frames == {8: "infected"}

    # an image with no file (sample data): kept in memory, then saved with a project folder
    data = generate_stack(False, seed=1, n_frames=6, size=32, dtype="uint8")
    viewer.add_image(data, name="mock (synthetic)",
                     metadata={"infected": False, "frame_interval_h": 0.5, "onset_h": 1.0})
    assert widget.layer.name == "mock (synthetic)"  # the new layer is the one in view
    assert widget.store.condition == "mock"
    viewer.dims.set_current_step(0, 2)
    widget.label_current("uninfected")
    assert "choose a project folder" in widget.status.text()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    widget.set_project_dir(blocker / "project")  # cannot be created: message, labels kept
    assert widget.store.frames == {2: "uninfected"}
    widget.set_project_dir(tmp_path / "project")
    widget.label_current("uninfected")
    copy = tmp_path / "project" / "mock_synthetic.tif"
    assert copy.is_file() and sidecar_path(copy, tmp_path / "project").is_file()
    assert widget.store.frames == {2: "uninfected"} and widget.store.stack == str(copy.resolve())
    assert "Shift+I" in _bound(viewer)
    widget.close()
    assert "Shift+I" not in _bound(viewer)


@pytest.mark.parametrize("title", ["Annotate frames and crops", "Retrain on labels",
                                   "Evaluate the model", "What to label next"])
def test_docks_open_from_the_plugin_menu(make_napari_viewer, title):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-infection-clock", title)
    assert widget is not None and dock.name.startswith(title)
    assert dock.widget() in (widget, getattr(widget, "native", None))
    viewer.window.remove_dock_widget(dock)  # the close button: each dock lets go without error
    assert title not in " ".join(viewer.window.dock_widgets)


def test_closing_the_dock_unbinds_the_keys(make_napari_viewer, qtbot, stack_file):
    viewer, widget = _open(make_napari_viewer, stack_file, qtbot)
    newer = AnnotationWidget(viewer)  # a second dock takes the keys over
    viewer.window.add_dock_widget(newer)
    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    assert "Shift+I" in _bound(viewer)  # the older dock leaves the newer one's keys alone
    viewer.window.remove_dock_widget(newer)
    assert not {"Shift+I", "Shift+U", "Shift+C"} & _bound(viewer)

    viewer.dims.set_current_step(0, 4)
    _press(viewer, qtbot, Qt.Key_I)
    assert widget.store.frames == {} and newer.store.frames == {}
    assert not sidecar_path(stack_file).exists()  # nothing labelled, nothing autosaved
    n_layers = len(viewer.layers)
    viewer.add_image(np.zeros((3, 8, 8), np.uint8), name="late")  # no longer listening
    assert len(viewer.layers) == n_layers + 1 and widget.layer.name != "late"


def test_project_copy_never_reuses_another_image(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    project = tmp_path / "project"
    widget.set_project_dir(project)
    first = generate_stack(True, seed=1, n_frames=4, size=32, dtype="uint8")
    second = generate_stack(False, seed=2, n_frames=4, size=32, dtype="uint8")
    layer = viewer.add_image(first, name="sample")
    assert not project.exists()  # nothing is written before a label exists
    widget.label_current("infected")
    assert widget.store.stack == str((project / "sample.tif").resolve())
    first_labels = dict(widget.store.frames)
    viewer.layers.remove(layer)
    viewer.add_image(second, name="sample")  # same name, other pixels: a name of its own
    widget.label_current("infected")
    assert widget.store.stack == str((project / "sample_2.tif").resolve())
    np.testing.assert_array_equal(read_stack_pixels(project / "sample.tif"), first)
    np.testing.assert_array_equal(read_stack_pixels(project / "sample_2.tif"), second)
    viewer.layers.remove("sample")
    viewer.add_image(first, name="sample")  # the first image again: its file and labels
    assert widget.store.stack == str((project / "sample.tif").resolve())
    assert widget.store.frames == first_labels
    assert sorted(p.name for p in project.glob("*.tif")) == ["sample.tif", "sample_2.tif"]


def read_stack_pixels(path):
    with open_stack(path) as stack:
        return stack.frames(range(stack.n_frames))


def _answer_next_question(button):
    """Click ``button`` in the next question dialog, as the user would."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    def click():
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            box.button(button).click()
        else:
            QTimer.singleShot(20, click)

    QTimer.singleShot(0, click)


def _two_wells(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    paths = []
    for name, infected in (("first", True), ("second", False)):
        path = tmp_path / f"{name}.tif"
        write_stack(path, generate_stack(infected, seed=len(paths), n_frames=N_FRAMES, size=48,
                                         dtype="uint8"), "TYX", 0.5)
        viewer.open(str(path), plugin="napari-infection-clock")
        paths.append(path)
    widget = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget, [viewer.layers[p.stem] for p in paths]


def test_labels_go_to_the_image_in_view_or_are_refused(make_napari_viewer, qtbot, tmp_path):
    viewer, widget, (first, second) = _two_wells(make_napari_viewer, tmp_path)
    session = session_for(viewer)
    first.visible = False  # the user looks at the second image only
    viewer.layers.selection.active = first  # even selected, a hidden image is not in view
    viewer.dims.set_current_step(0, 5)
    _press(viewer, qtbot, Qt.Key_U)
    assert session.annotations[layer_stack_path(second)].frames == {5: "uninfected"}
    assert session.annotations.get(layer_stack_path(first)) is None or \
        session.annotations[layer_stack_path(first)].frames == {}
    assert "second" in widget.target_label.text()

    first.visible = True  # both in view: the selected one gets the labels
    viewer.layers.selection.active = first
    _press(viewer, qtbot, Qt.Key_I)
    assert session.annotations[layer_stack_path(first)].frames == {5: "infected"}
    assert "first" in widget.target_label.text()

    points = viewer.add_points([[5, 1, 1]])  # both visible, neither selected: refused
    viewer.layers.selection.active = points
    _press(viewer, qtbot, Qt.Key_U)
    assert session.annotations[layer_stack_path(first)].frames == {5: "infected"}
    assert session.annotations[layer_stack_path(second)].frames == {5: "uninfected"}
    assert "2 images are visible" in widget.status.text()
    assert "select the one to label" in widget.target_label.text()

    # a selected rectangle of the second image's crops: the keys label the crop
    viewer.layers.selection.active = second
    crops = widget.show_crops_layer()
    crops.add_rectangles([np.array([[5, 2, 3], [5, 2, 20], [5, 18, 20], [5, 18, 3]])])
    crops.selected_data = {0}
    _press(viewer, qtbot, Qt.Key_I)
    store = session.annotations[layer_stack_path(second)]
    assert store.crops == {(5, (2, 3, 18, 20)): "infected"} and store.frames == {5: "uninfected"}


def test_labelled_frames_show_on_the_canvas_and_undo(make_napari_viewer, qtbot, stack_file):
    viewer, widget = _open(make_napari_viewer, stack_file, qtbot)
    for frame, key in ((0, Qt.Key_U), (1, Qt.Key_U), (3, Qt.Key_I), (4, Qt.Key_I)):
        viewer.dims.set_current_step(0, frame)
        _press(viewer, qtbot, key)
    marks = viewer.layers[f"{stack_file.stem} labelled frames"]
    assert sorted(int(v[0, 0]) for v in marks.data) == [0, 1, 3, 4]
    assert list(marks.features["label"]) == ["uninfected", "uninfected", "infected", "infected"]
    assert "0-1" in widget.labelled_info.text() and "3-4" in widget.labelled_info.text()

    qtbot.keyClick(widget.undo_button, Qt.Key_Z, Qt.ControlModifier)  # Ctrl+Z in the dock
    assert widget.store.frames == {0: "uninfected", 1: "uninfected", 3: "infected"}
    qtbot.mouseClick(widget.undo_button, Qt.LeftButton)
    assert widget.store.frames == {0: "uninfected", 1: "uninfected"}
    assert len(marks.data) == 2
    saved = AnnotationStore.from_json(sidecar_path(stack_file).read_text())
    assert saved.frames == {0: "uninfected", 1: "uninfected"}  # the undo is saved too


def test_a_condition_change_that_relabels_asks_first(make_napari_viewer, qtbot, stack_file):
    from qtpy.QtWidgets import QMessageBox

    viewer, widget = _open(make_napari_viewer, stack_file, qtbot)
    widget.condition_combo.setCurrentText("infected")  # nothing labelled: no question
    assert widget.store.condition == "infected"
    widget.range_check.setChecked(True)
    widget.range_from.setValue(6)
    widget.range_to.setValue(19)
    qtbot.mouseClick(widget.buttons["infected"], Qt.LeftButton)

    _answer_next_question(QMessageBox.StandardButton.No)
    widget.condition_combo.setCurrentText("mock")
    assert widget.store.condition == "infected"
    assert widget.condition_combo.currentText() == "infected"  # back to what holds
    assert set(widget.store.frames.values()) == {"infected"} and len(widget.store.frames) == 14

    _answer_next_question(QMessageBox.StandardButton.Yes)
    widget.condition_combo.setCurrentText("mock")
    assert widget.store.condition == "mock"
    assert widget.undo() and widget.store.condition == "infected"


def test_save_message_only_once_the_labels_are_on_disk(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.add_image(generate_stack(True, seed=1, n_frames=6, size=32, dtype="uint8"),
                     name="in memory", metadata={"frame_interval_h": 0.5})
    assert "labels saved" not in widget.status.text()  # no label yet
    assert not widget.status.text().startswith("saved")
    project = tmp_path / "project"
    widget.project_edit.setText(str(project))
    widget.project_edit.editingFinished.emit()
    assert not project.exists() and "saved:" not in widget.status.text()

    widget.project_edit.setText("")  # label first, choose the folder after
    widget.project_edit.editingFinished.emit()
    viewer.dims.set_current_step(0, 2)
    qtbot.mouseClick(widget.buttons["infected"], Qt.LeftButton)
    assert widget.status.text().startswith("Not saved")
    widget.project_edit.setText(str(project))
    widget.project_edit.editingFinished.emit()
    copy = project / "in_memory.tif"
    sidecar = sidecar_path(copy, project)
    assert sidecar.is_file(), sorted(project.iterdir())
    assert AnnotationStore.from_json(sidecar.read_text()).frames == {2: "infected"}
    assert widget.status.text().startswith("saved: 1 frame") and str(sidecar) in widget.status.text()


def test_labels_on_a_channel_layer_train_on_that_channel(make_napari_viewer, qtbot, tmp_path):
    """A Fiji hyperstack opens as one layer per channel; labels made on the DAPI layer
    carry channel 2 into the label table and the retraining items (issue 13)."""
    from napari_infection_clock.core.retrain import labels_of, plan_from_labels

    from .fiji import write_fiji

    infected = write_fiji(tmp_path / "a_p1_.tif", ["mito", "actin", "DAPI", "BF"], frames=6)
    mock = write_fiji(tmp_path / "b_p2_.tif", ["DAPI", "actin", "mito", "BF"], frames=6)
    viewer = make_napari_viewer()
    for path in (infected, mock):
        viewer.open(str(path), plugin="napari-infection-clock")
    assert "a_p1_ [ch 2 DAPI]" in viewer.layers and "b_p2_ [ch 0 DAPI]" in viewer.layers
    widget = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    for layer, condition in (("a_p1_ [ch 2 DAPI]", "infected"), ("b_p2_ [ch 0 DAPI]", "mock")):
        viewer.layers.selection.active = viewer.layers[layer]  # labels go to the image in view
        for other in viewer.layers:
            other.visible = other.name == layer
        assert widget.layer is viewer.layers[layer]
        widget.condition_combo.setCurrentText(condition)
        viewer.dims.set_current_step(0, 4)
        label = "infected" if condition == "infected" else "uninfected"
        qtbot.mouseClick(widget.buttons[label], Qt.LeftButton)
    table = labels_of(session_for(viewer).annotations.values())
    assert sorted(table["channel"]) == [0, 2]
    plan = plan_from_labels(table, val_fraction=0.0)
    assert {(it.channel, it.channel_desc) for it in plan.train} == {(2, "DAPI"), (0, "DAPI")}
    session_for(viewer).annotations.clear()


def _choose_project(widget, folder):
    widget.project_edit.setText(str(folder))
    widget.project_edit.editingFinished.emit()


def test_a_project_folders_saved_labels_are_read_never_overwritten(make_napari_viewer, qtbot,
                                                                   stack_file, tmp_path):
    """Yesterday's labels in a project folder come back when it is chosen, also for an image
    already shown (its labels so far are merged in, nothing is written over them)."""
    yesterday, other = tmp_path / "yesterday", tmp_path / "other"
    for folder, frame, label in ((yesterday, 3, "uninfected"), (other, 7, "infected")):
        saved = AnnotationStore(stack=str(stack_file.resolve()), n_frames=N_FRAMES)
        saved.set_condition("infected", 2.0, 0.5)
        saved.label_frames([frame], label)
        saved.save(sidecar_path(stack_file, folder))
    viewer, widget = _open(make_napari_viewer, stack_file, qtbot)  # shown once: no labels
    _choose_project(widget, yesterday)
    assert widget.store.frames == {3: "uninfected"}
    assert "1 frame" in widget.status.text() and "No labels yet" not in widget.status.text()
    viewer.dims.set_current_step(0, 5)
    _press(viewer, qtbot, Qt.Key_U)
    on_disk = AnnotationStore.from_json(sidecar_path(stack_file, yesterday).read_text())
    assert on_disk.frames == {3: "uninfected", 5: "uninfected"}

    _choose_project(widget, other)  # labels in view and labels in that folder: both kept
    both = {3: "uninfected", 5: "uninfected", 7: "infected"}
    assert widget.store.frames == both
    on_disk = AnnotationStore.from_json(sidecar_path(stack_file, other).read_text())
    assert on_disk.frames == both


def test_a_project_folder_saves_every_image_labelled_in_memory(make_napari_viewer, qtbot,
                                                               tmp_path):
    viewer = make_napari_viewer()
    widget = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    for name, seed in (("first", 1), ("second", 2)):
        viewer.add_image(generate_stack(True, seed=seed, n_frames=6, size=32, dtype="uint8"),
                         name=name, metadata={"frame_interval_h": 0.5})
        viewer.dims.set_current_step(0, seed)
        _press(viewer, qtbot, Qt.Key_U)  # each image labelled while in view
    assert widget.layer.name == "second"
    project = tmp_path / "project"
    _choose_project(widget, project)
    for name, seed in (("first", 1), ("second", 2)):
        copy = project / f"{name}.tif"
        assert copy.is_file(), sorted(project.iterdir())
        saved = AnnotationStore.from_json(sidecar_path(copy, project).read_text())
        assert saved.frames == {seed: "uninfected"}
    assert not [key for key in session_for(viewer).annotations if key.startswith("memory:")]
    out = widget.export_csv(tmp_path / "labels.csv")
    assert sorted(read_label_table(out)["frame"]) == [1, 2]


def test_removing_an_image_removes_its_layers_and_keeps_its_labels(make_napari_viewer, qtbot,
                                                                    stack_file, tmp_path):
    """Trash an image in the layer list: its crops, labelled-frame outlines and prediction
    layers go with it (no orphans), its labels stay on disk and come back with the file."""
    config = ModelConfig("resnet18", hidden_dim=16)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", build_model(config, init="random"),
                                 CheckpointMeta(model=config, preprocessing=Preprocessing(32)))
    other = tmp_path / "images" / "other_well.tif"
    write_stack(other, generate_stack(False, seed=4, n_frames=6, size=48, dtype="uint8"),
                "TYX", 0.5)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(other), plugin=PLUGIN)
    viewer.open(str(stack_file), plugin=PLUGIN)
    well, kept = viewer.layers[stack_file.stem], viewer.layers[other.stem]
    kept.visible = False  # the user looks at the new well only
    widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotate frames and crops")[1]
    predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")[1]
    for frame, key in ((0, Qt.Key_U), (3, Qt.Key_I)):
        viewer.dims.set_current_step(0, frame)
        _press(viewer, qtbot, key)
    crops = widget.show_crops_layer()
    crops.add_rectangles([np.array([[3, 2, 3], [3, 2, 20], [3, 18, 20], [3, 18, 3]])])
    crops.selected_data = {0}
    _press(viewer, qtbot, Qt.Key_U)  # the selected crop takes the key (through the menu's
    assert list(widget.store.crops.values()) == ["uninfected"]  # proxy of the viewer too)
    assert widget.store.frames == {0: "uninfected", 3: "infected"}
    predict.checkpoint.value, predict.device.value = checkpoint, "cpu"
    ended = []
    predict.finished.connect(ended.append)
    qtbot.mouseClick(predict.run_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: bool(ended), timeout=60_000)
    derived = [layer.name for layer in viewer.layers if is_output(layer)]
    assert {f"{well.name} crops", f"{well.name} labelled frames",
            f"{well.name} infection probability"} <= set(derived), derived
    frames, crop_labels = dict(widget.store.frames), dict(widget.store.crops)

    kept.visible = True  # the other well, labelled too: its layers must stay
    click_layer(viewer, kept)
    _press(viewer, qtbot, Qt.Key_I)
    assert f"{kept.name} labelled frames" in viewer.layers

    click_layer(viewer, well)
    delete_selected(viewer)  # the trash button
    qtbot.waitUntil(lambda: not any(is_output(layer) and layer.metadata[OUTPUT_OF] == image_id(well)
                                    for layer in viewer.layers), timeout=5_000)
    assert [layer.name for layer in viewer.layers] == [kept.name, f"{kept.name} labelled frames"]
    saved = AnnotationStore.from_json(sidecar_path(stack_file).read_text())
    assert (saved.frames, saved.crops) == (frames, crop_labels)

    viewer.open(str(stack_file), plugin=PLUGIN)  # the labels come back with the file
    assert widget.store.frames == frames and widget.store.crops == crop_labels
    assert len(viewer.layers[f"{well.name} crops"].data) == 1
    assert len(viewer.layers[f"{well.name} labelled frames"].data) == 2

    # the image and its outline layer selected together, then the trash: no error, no orphan
    click_layer(viewer, kept)
    click_layer(viewer, viewer.layers[f"{kept.name} labelled frames"], add=True)
    delete_selected(viewer)
    QApplication.processEvents()
    assert kept.name not in viewer.layers
    assert not any(layer.metadata.get(OUTPUT_OF) == image_id(kept) for layer in viewer.layers)


def test_a_renamed_image_keeps_its_layers_and_labels(make_napari_viewer, qtbot, tmp_path):
    """Rename an image in the layer list between two predictions: the layers made for it
    (crops, labelled-frame outlines, prediction outputs, the "label next" marker) stay its
    own, take its new name, are reused by the next run (no duplicates) and go with it when
    it is removed (no orphans); its labels (an image with no file) stay with it."""
    from napari_infection_clock.ui.prediction_widget import MODE_TILES

    config = ModelConfig("resnet18", hidden_dim=16)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", build_model(config, init="random"),
                                 CheckpointMeta(model=config, preprocessing=Preprocessing(32)))
    viewer = make_napari_viewer(show=True)
    well = viewer.add_image(generate_stack(True, seed=5, n_frames=4, size=48, dtype="uint8"),
                            name="well", metadata={"frame_interval_h": 0.5})
    annotate = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotate frames and crops")[1]
    predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")[1]
    plot = viewer.window.add_plugin_dock_widget(PLUGIN, "Infection time-series plot")[1]
    label_next = viewer.window.add_plugin_dock_widget(PLUGIN, "What to label next")[1]
    viewer.dims.set_current_step(0, 1)
    _press(viewer, qtbot, Qt.Key_U)
    crops = annotate.show_crops_layer()
    crops.add_rectangles([np.array([[2, 2, 3], [2, 2, 20], [2, 18, 20], [2, 18, 3]])])
    predict.checkpoint.value, predict.device.value = checkpoint, "cpu"
    predict.mode.value, predict.tile_size.value = MODE_TILES, 24
    ended = []
    predict.finished.connect(ended.append)

    def predict_and_rank(runs: int) -> None:
        qtbot.mouseClick(predict.run_button.native, Qt.LeftButton)
        qtbot.waitUntil(lambda: len(ended) == runs, timeout=60_000)
        assert ended[-1].startswith("done"), ended
        label_next.tile_spin.setValue(24)
        label_next.method_combo.setCurrentText("entropy")
        qtbot.mouseClick(label_next.rank_button, Qt.LeftButton)
        qtbot.waitUntil(lambda: label_next.worker is None and label_next.list.count() > 0,
                        timeout=60_000)
        qtbot.mouseClick(label_next.next_button, Qt.LeftButton)  # outlines the tile

    predict_and_rank(1)
    made = sorted(layer.name for layer in viewer.layers if is_output(layer))
    assert len(made) == 8 and all(name.startswith("well ") or name == "label next"
                                  for name in made), made

    rename_layer(viewer, well, "A1")
    assert well.name == "A1"
    renamed = sorted(layer.name for layer in viewer.layers if is_output(layer))
    assert renamed == sorted(name.replace("well ", "A1 ") for name in made), renamed
    assert "A1" in annotate.target_label.text() and annotate.store.frames == {1: "uninfected"}
    assert [plot.choice.itemText(i) for i in range(plot.choice.count())] == ["A1"]

    predict_and_rank(2)  # the same layers, refilled: none made twice, none left behind
    assert sorted(layer.name for layer in viewer.layers if is_output(layer)) == renamed
    assert all(layer.metadata[OUTPUT_OF] == image_id(well)
               for layer in viewer.layers if is_output(layer))
    assert [plot.choice.itemText(i) for i in range(plot.choice.count())] == ["A1"]
    assert annotate.store.frames == {1: "uninfected"} and len(annotate.store.crops) == 1

    click_layer(viewer, well)
    delete_selected(viewer)  # the trash button
    qtbot.waitUntil(lambda: len(viewer.layers) == 0, timeout=5_000)


def _a_well_under_another(make_napari_viewer, qtbot, stack_file, tmp_path):
    """The dock, its well, and another well opened after it: drawn over it on the canvas."""
    viewer, widget = _open(make_napari_viewer, stack_file, qtbot)
    other = tmp_path / "images" / "other_p3_t0-19.tif"
    write_stack(other, generate_stack(False, seed=4, n_frames=N_FRAMES, size=48,
                                      dtype="uint8"), "TYX", 0.5)
    [top] = viewer.open(str(other), plugin=PLUGIN)
    return viewer, widget, viewer.layers[stack_file.stem], top


def test_labelling_an_image_drawn_under_another_says_so(make_napari_viewer, qtbot, stack_file,
                                                        tmp_path):
    """The dock labels the selected image, also when another visible image lies over it on
    the canvas: the user saw the top image's frames and labelled the one under it, with
    only its name on screen. The labelling line says which image lies over it; hidden, or
    moved below it in the layer list, that one no longer does."""
    viewer, widget, well, top = _a_well_under_another(make_napari_viewer, qtbot, stack_file,
                                                      tmp_path)
    click_layer(viewer, well)
    _press(viewer, qtbot, Qt.Key_I)
    assert widget.layer.name == well.name and widget.store.frames
    assert "under 'other_p3_t0-19'" in widget.target_label.text()
    click_eye(viewer, top)  # hidden: the canvas shows the well
    _press(viewer, qtbot, Qt.Key_U)
    assert "under" not in widget.target_label.text()
    click_eye(viewer, top)
    viewer.layers.move(viewer.layers.index(top), 0)  # dragged below it in the layer list
    click_layer(viewer, well)
    _press(viewer, qtbot, Qt.Key_I)
    assert widget.layer.name == well.name and "under" not in widget.target_label.text()


def test_the_under_warning_follows_the_layer_list(make_napari_viewer, qtbot, stack_file,
                                                  tmp_path):
    """The "under X" warning was refreshed at a label or a change of target only: hiding
    the image above with its eye, making it see-through or moving it below in the layer
    list left the warning as it was until the next label. It follows the layer list."""
    viewer, widget, well, top = _a_well_under_another(make_napari_viewer, qtbot, stack_file,
                                                      tmp_path)
    click_layer(viewer, well)
    assert widget.layer.name == well.name
    assert "under 'other_p3_t0-19'" in widget.target_label.text()
    click_eye(viewer, top)  # hidden: the canvas shows the well
    assert "under" not in widget.target_label.text()
    click_eye(viewer, top)
    assert "under 'other_p3_t0-19'" in widget.target_label.text()
    top.opacity = 0.2  # its opacity slider: the well shows through
    assert "under" not in widget.target_label.text()
    top.opacity = 1.0
    assert "under 'other_p3_t0-19'" in widget.target_label.text()
    viewer.layers.move(viewer.layers.index(top), 0)  # dragged below the well
    assert "under" not in widget.target_label.text()
    assert widget.layer.name == well.name and not widget.store.frames  # nothing labelled


def _text_and_outline(viewer, marks):
    """Where ``marks``' text is drawn on the canvas (what changes when it is hidden) and
    the box of the outlines drawn (saturated colour over black images), on screen."""
    def shot():
        QApplication.processEvents()
        return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)

    marks.text.visible = False
    bare = shot()
    marks.text.visible = True
    text = (shot() != bare).any(-1)
    ys, xs = np.nonzero((bare.max(-1) - bare.min(-1)) > 100)
    return text, (ys.min(), xs.min(), ys.max(), xs.max())


def test_labelled_frames_say_which_image_inside_the_canvas(make_napari_viewer, qtbot,
                                                          tmp_path):
    """The outline's word ("infected") sat at the frame's upper-left corner, outside the
    image, and was cut by the canvas edge ("fected") when the frame filled the canvas's
    width; two images' outlines on one another wrote their words on one spot. The text is
    inside the frame on the canvas, names its image, and the image labelled alone has it."""
    black = np.zeros((N_FRAMES, 48, 48), np.uint8)
    paths = [write_stack(tmp_path / f"{name}.tif", black, "TYX", 0.5)
             for name in ("a_p1_t0-19", "b_p2_t0-19")]
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1000, 900)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Annotate frames and crops")
    a, b = (viewer.open(str(path), plugin=PLUGIN)[0] for path in paths)
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.height() > canvas.width()  # the frame fills the canvas's width
    click_layer(viewer, a)
    _press(viewer, qtbot, Qt.Key_I)
    click_layer(viewer, b)  # b lies on a: one frame on the canvas
    _press(viewer, qtbot, Qt.Key_U)
    viewer.reset_view()
    QApplication.processEvents()

    marks_a = viewer.layers["a_p1_t0-19 labelled frames"]
    marks_b = viewer.layers["b_p2_t0-19 labelled frames"]
    text, frame = _text_and_outline(viewer, marks_b)
    ty, tx = np.nonzero(text)
    assert len(ty) > 20, "no text on the canvas"
    assert frame[0] < ty.min() and ty.max() < frame[2], (frame, ty.min(), ty.max())
    assert frame[1] < tx.min() and tx.max() < frame[3], (frame, tx.min(), tx.max())

    assert marks_b.text.visible and list(marks_b.text.values) == ["b_p2_t0-19: uninfected"]
    assert not marks_a.text.visible  # its word would be written on b's

    click_layer(viewer, a)  # labelling a now: its outline says so, b's is quiet
    assert marks_a.text.visible and not marks_b.text.visible
    assert list(marks_a.text.values) == ["a_p1_t0-19: infected"]

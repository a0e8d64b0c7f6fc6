"""Evaluation and label-next docks in a real viewer, with a small model trained here."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from napari_infection_clock.core.annotations import open_annotations
from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.dataset import ItemDataset
from napari_infection_clock.core.items import FramePolicy, research_items
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.synthetic import write_research_dataset
from napari_infection_clock.core.targets import TimePolicy
from napari_infection_clock.core.trainer import TrainConfig, run_training
from napari_infection_clock.ui.annotation_widget import AnnotationWidget
from napari_infection_clock.ui.evaluation_widget import EvaluationWidget
from napari_infection_clock.ui.label_next_widget import MARKER_LAYER, LabelNextWidget
from napari_infection_clock.ui.layer_roles import layer_stack_path
from napari_infection_clock.ui.state import SessionModel, session_for

from .figures import points_under_legends
from .layer_list import click_layer
from .native_tiles import native_model

PREP = Preprocessing(image_size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    paths = write_research_dataset(root, n_infected=2, n_mock=2, n_frames=30, size=48, seed=4)
    items = research_items(root, FramePolicy())
    torch.manual_seed(0)
    config = ModelConfig(arch="resnet18", hidden_dim=32, dropout=0.3)
    model = build_model(config)
    meta = CheckpointMeta(model=config, preprocessing=PREP, time=TimePolicy())
    run_training(model, ItemDataset(items, PREP), None,
                 TrainConfig(epochs=4, batch_size=32, lr=1e-3, device="cpu"), meta)
    return SessionModel(model.eval(), meta, origin="trained in this session"), items, paths


def test_evaluation_dock_shows_metrics_figures_and_exports(make_napari_viewer, qtbot, trained,
                                                           tmp_path):
    model, items, _ = trained
    viewer = make_napari_viewer()
    widget = EvaluationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert not widget.evaluate() and "no model" in widget.status.text()
    session = session_for(viewer)
    session.set_model(model)
    assert not widget.evaluate() and "no labelled items" in widget.status.text()

    session.validation_items = items[::3]
    assert widget.evaluate()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    rows = {widget.metrics_table.item(i, 0).text(): widget.metrics_table.item(i, 1).text()
            for i in range(widget.metrics_table.rowCount())}
    assert {"accuracy", "roc_auc", "mae (all)", "slope (infected)",
            "consistent mae (infected)", "consistent slope (all)"} <= set(rows)
    assert len(widget.table) == len(items[::3])
    assert widget.table["consistent_time_h"].notna().all()
    assert "ROC AUC" in widget.status.text()
    # the figures of tabs not in view are made when the user first shows them (their
    # artists are made on the GUI thread: 80 ms of a 2-core machine for the four)
    assert widget.tabs.currentIndex() == 0  # the metrics
    assert all(not figure.axes for figure, _ in widget.figures.values())
    tab_of = {widget.tabs.tabText(i): i for i in range(widget.tabs.count())}
    for name in ("time", "ROC", "per bin"):
        widget.tabs.setCurrentIndex(tab_of[name])  # a click on the tab
    assert not widget.figures["confusion"][0].axes
    time_figure = widget.figures["time"][0]
    assert time_figure.axes[0].get_legend() is not None
    assert points_under_legends(time_figure) == 0  # the scatter's legend hides no point
    roc_fig = widget.figures["ROC"][0]
    assert roc_fig.axes and roc_fig.axes[0].get_title().startswith("ROC")
    assert len(widget.figures["per bin"][0].axes) == 2
    scatter = widget.figures["time"][0].axes[0]
    assert any("least squares" in t.get_text() for t in scatter.get_legend().get_texts())

    paths = widget.export(tmp_path / "report")
    assert {"metrics.json", "roc.png", "confusion.png", "time_scatter.png", "per_bin.png"} <= {
        p.name for p in paths.values()}
    written = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(written["per_class"]["infected"]) == {"regression", "consistent"}
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert widget.export(blocker / "report") is None and "export failed" in widget.status.text()


def test_label_next_ranks_ambiguous_first_and_steps_through(make_napari_viewer, qtbot, trained,
                                                           tmp_path):
    model, _, paths = trained
    viewer = make_napari_viewer()
    viewer.open(str(paths[0]), plugin="napari-infection-clock")  # an infected well
    widget = LabelNextWidget(viewer)
    viewer.window.add_dock_widget(widget)
    session = session_for(viewer)
    session.set_model(model)
    store, _ = open_annotations(paths[0], 30)
    store.label_frames([5], "infected")
    session.annotations[store.stack] = store

    assert widget.rank()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    order = widget.ranked["frame"].tolist()
    assert 5 not in order and len(order) == 29
    assert order.index(0) < order.index(29)  # frame 0 equals its mock twin: ambiguous
    widget.next_button.click()
    assert viewer.dims.current_step[0] == order[0]
    widget.next_button.click()
    assert viewer.dims.current_step[0] == order[1]

    widget.tile_spin.setValue(24)
    widget.method_combo.setCurrentText("mc_dropout")
    widget.passes_spin.setValue(3)
    assert widget.rank()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert len(widget.ranked) == 29 * 4
    widget.next_button.click()
    marker = viewer.layers[MARKER_LAYER]
    assert len(marker.data) == 1 and marker.data[0][0, 0] == widget.ranked.frame.iloc[0]
    # MC dropout ran on a copy: the session's model is still in eval mode throughout
    assert not any(m.training for m in session.model.model.modules())


def test_labelling_a_suggestion_takes_it_off_the_list(make_napari_viewer, qtbot, trained,
                                                      tmp_path):
    """Labels made in the annotation dock after ranking leave the list at once, without
    scoring again; Next then goes to the most uncertain item still unlabelled."""
    model, _, paths = trained
    image = tmp_path / paths[0].name
    image.write_bytes(paths[0].read_bytes())
    viewer = make_napari_viewer()
    viewer.open(str(image), plugin="napari-infection-clock")
    annotate, widget = AnnotationWidget(viewer), LabelNextWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    viewer.window.add_dock_widget(widget)
    session = session_for(viewer)
    session.set_model(model)
    assert widget.rank()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    order = widget.ranked["frame"].tolist()
    assert len(order) == 30 and widget.list.count() == 30

    widget.next_button.click()
    widget.next_button.click()  # on the second suggestion
    assert viewer.dims.current_step[0] == order[1]
    annotate.label_current("infected")
    assert widget.ranked["frame"].tolist() == order[:1] + order[2:]
    assert widget.list.count() == 29 and widget.list.currentRow() == -1
    widget.next_button.click()
    assert viewer.dims.current_step[0] == order[0]

    viewer.dims.set_current_step(0, order[2])
    annotate.label_current("infected")  # below the selected one: the selection stays
    assert widget.list.count() == 28 and widget.list.currentRow() == 0
    assert widget.ranked["frame"].iloc[0] == order[0]
    widget.list.setCurrentRow(2)  # order[4]: order[1] and order[2] are labelled
    assert viewer.dims.current_step[0] == order[4]
    viewer.dims.set_current_step(0, order[0])
    annotate.label_current("uninfected")  # above the selected one: it moves up a row
    assert widget.list.currentRow() == 1 and widget.ranked["frame"].iloc[1] == order[4]
    assert "press Rank" not in widget.status.text()

    session.set_model(SessionModel(copy.deepcopy(model.model), model.meta))
    assert "press Rank" in widget.status.text()
    viewer.dims.set_current_step(0, order[3])
    annotate.label_current("infected")
    assert widget.list.count() == 26 and "press Rank" in widget.status.text()


def test_label_next_says_a_native_tile_model_cannot_rank_smaller_frames(make_napari_viewer,
                                                                         qtbot):
    """Frames smaller than a native-tile model's tiles: Rank says, before any run, that this
    model cannot predict them and what to do, not an exception class nor "whole-frame mode"
    (which this model cannot take); a tile size other than the model's gets the warning the
    CLI gives (its tiles are resized to the model's)."""
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (4, 16, 16), np.uint8),
                     name="small well")
    label_next = LabelNextWidget(viewer)
    viewer.window.add_dock_widget(label_next)
    session_for(viewer).set_model(SessionModel(*native_model(24)))
    for _ in range(2):  # whole frames, then the model's 24 px tiles the dock switched to
        label_next.rank_button.click()
        said = label_next.status.text()
        assert label_next.worker is None, said
        assert "cannot predict frames smaller than 24 px: these are 16 x 16 px" in said, said
        assert "Error" not in said and "whole-frame mode" not in said
    label_next.tile_spin.setValue(16)
    label_next.rank_button.click()
    assert "16 px tiles are resized to 24 px" in label_next.status.text()
    qtbot.waitUntil(lambda: label_next.worker is None, timeout=120_000)
    said = label_next.status.text()
    assert "ranked" in said and "16 px tiles are resized to 24 px" in said, said


def test_torch_errors_end_with_a_message_not_results(make_napari_viewer, qtbot, trained):
    """A model whose class head no longer fits its backbone: torch raises a RuntimeError
    (shape mismatch) in the worker, which superqt would swallow; both docks say so and
    show no partial table or ranking."""
    from torch import nn

    good, items, paths = trained
    broken = copy.deepcopy(good.model)
    broken.classifier = nn.Sequential(nn.Linear(7, 2))
    viewer, evaluation, label_next = _docks(make_napari_viewer, paths[0],
                                            SessionModel(broken, good.meta))
    session = session_for(viewer)
    session.validation_items = items[:4]

    assert evaluation.evaluate()
    qtbot.waitUntil(lambda: evaluation.worker is None, timeout=60_000)
    assert evaluation.status.text().startswith("evaluation failed: RuntimeError")
    assert evaluation.table is None and evaluation.metrics_table.rowCount() == 0
    assert not evaluation.export_button.isEnabled()

    assert label_next.rank()
    qtbot.waitUntil(lambda: label_next.worker is None, timeout=60_000)
    assert label_next.status.text().startswith("ranking failed: RuntimeError")
    assert label_next.ranked.empty and label_next.list.count() == 0


def _docks(make_napari_viewer, path, model: SessionModel):
    """A viewer with ``path`` open, the Evaluate and Label next docks, ``model`` the session's."""
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-infection-clock")
    evaluation, label_next = EvaluationWidget(viewer), LabelNextWidget(viewer)
    viewer.window.add_dock_widget(evaluation)
    viewer.window.add_dock_widget(label_next)
    session_for(viewer).set_model(model)
    return viewer, evaluation, label_next


def test_a_native_tile_model_is_evaluated_and_ranked_on_its_tiles(make_napari_viewer, qtbot,
                                                                   trained):
    """A model trained on native 24 px tiles (``train --native-tiles 24``) would see whole
    48 px frames shrunk to 24 px and answer with confidence: Evaluate cuts each labelled
    frame into its 24 px tiles and says so; Rank, like Predict, refuses whole frames, switches
    to its tile size and says so, then ranks the tiles."""
    _, items, paths = trained
    viewer, evaluation, label_next = _docks(make_napari_viewer, paths[0],
                                            SessionModel(*native_model(24)))
    session = session_for(viewer)
    mock = next(p for p in paths if p.parent.name == "uninfected")
    for path, label, frames in ((paths[0], "infected", range(10, 15)),
                                (mock, "uninfected", range(5))):
        store, _ = open_annotations(path, 30)
        store.set_condition("infected" if label == "infected" else "mock", onset_h=1.0)
        store.label_frames(frames, label)
        session.annotations[store.stack] = store
    session.validation_items = items[:3]  # whole frames, as a whole-frame training left them

    for source, n_frames in ((1, 10), (0, 3)):  # all labelled frames; the validation items
        evaluation.source_combo.setCurrentIndex(source)
        evaluation.run_button.click()
        assert "24 px tiles of the labelled frames" in evaluation.status.text()
        qtbot.waitUntil(lambda: evaluation.worker is None, timeout=120_000)
        table = evaluation.table
        assert len(table) == 4 * n_frames, evaluation.status.text()
        assert set(table.y1 - table.y0) == set(table.x1 - table.x0) == {24}
        assert "24 px tiles" in evaluation.status.text() and "ROC AUC" in evaluation.status.text()

    assert label_next.tile_spin.value() == 0  # whole frames
    label_next.rank_button.click()
    assert label_next.worker is None and label_next.tile_spin.value() == 24
    said = label_next.status.text()
    assert "24 px tiles, not whole frames" in said and "Rank again" in said, said
    label_next.rank_button.click()
    qtbot.waitUntil(lambda: label_next.worker is None, timeout=120_000)
    assert len(label_next.ranked) == 30 * 4 - 5 * 4  # 5 frames of this well are labelled
    assert set(label_next.ranked.y1 - label_next.ranked.y0) == {24}


def test_next_shows_the_ranked_image_so_the_keys_label_it(make_napari_viewer, qtbot, trained,
                                                          tmp_path):
    """Ranking one well while another is selected: Next steps to a frame of the ranked
    well, and Shift+I then labels that frame of the ranked well, not of the selected one
    (the annotation dock labels the image selected in the layer list)."""
    model, _, paths = trained
    viewer = make_napari_viewer(show=True)
    ranked, other = (tmp_path / paths[0].name, tmp_path / paths[2].name)
    for path, source in ((ranked, paths[0]), (other, paths[2])):
        path.write_bytes(source.read_bytes())
        viewer.open(str(path), plugin="napari-infection-clock")
    ranked_layer, other_layer = viewer.layers[ranked.stem], viewer.layers[other.stem]
    annotate, widget = AnnotationWidget(viewer), LabelNextWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    viewer.window.add_dock_widget(widget)
    session_for(viewer).set_model(model)
    click_layer(viewer, other_layer)  # the user looks at the other well
    widget.image_combo.setCurrentText(ranked_layer.name)
    qtbot.mouseClick(widget.rank_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    qtbot.mouseClick(widget.next_button, Qt.LeftButton)
    frame = int(widget.ranked["frame"].iloc[0])
    assert viewer.dims.current_step[0] == frame
    assert ranked_layer.name in annotate.target_label.text()
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key_I, Qt.ShiftModifier)
    session = session_for(viewer)
    assert session.annotations[layer_stack_path(ranked_layer)].frames == {frame: "infected"}
    other_store = session.annotations.get(layer_stack_path(other_layer))
    assert other_store is None or not other_store.frames

"""The annotation store: labels, consistency flags, sidecar round trip, label table, and
the frame-block validation split."""

from __future__ import annotations

import pytest

from napari_infection_clock.core.annotations import (
    AnnotationError,
    AnnotationStore,
    open_annotations,
    sidecar_path,
)
from napari_infection_clock.core.atomic import OutputNotWritable
from napari_infection_clock.core.blocks import split_for_training, split_frame_blocks
from napari_infection_clock.core.items import label_table_items
from napari_infection_clock.core.labels import read_label_table, write_label_table
from napari_infection_clock.core.stack import write_stack
from napari_infection_clock.core.synthetic import generate_stack


@pytest.fixture
def stack_file(tmp_path):
    path = tmp_path / "well_p3_t0-19.tif"
    write_stack(path, generate_stack(True, seed=1, n_frames=20, size=32, dtype="uint8"),
                "TYX", 0.5)
    return path


def _store(path, n_frames=20) -> AnnotationStore:
    store, _ = open_annotations(path, n_frames, (32, 32))
    return store


def test_labels_counts_targets_and_clear(stack_file):
    store = _store(stack_file)
    store.set_condition("infected", onset_h=2.0, frame_interval_h=0.5)
    store.label_frames(range(10, 14), "infected")
    store.label_frames([0, 1], "uninfected")
    store.set_frame_crops(12, {(0, 0, 16, 16): "infected", (16, 16, 32, 32): "uninfected"})
    assert store.counts() == {"frames": {"uninfected": 2, "infected": 4},
                              "crops": {"uninfected": 1, "infected": 1}}
    assert store.target(12, "infected") == pytest.approx(4.0)  # 6 h - 2 h onset
    assert store.target(1, "uninfected") == pytest.approx(0.5)
    store.label_frames(13, None)
    assert 13 not in store.frames and store.issues() == []
    with pytest.raises(AnnotationError, match="outside the stack"):
        store.label_frames(20, "infected")


def test_consistency_flags(stack_file):
    store = _store(stack_file)
    store.label_frames(3, "infected")
    assert "condition" in str(store.issues()[0])
    store.set_condition("infected", onset_h=2.0)
    store.label_frames([2, 8], "infected")  # frame 2 = 1 h, before the 2 h onset
    store.label_frames(9, "uninfected")  # after infected frames
    messages = [str(i) for i in store.issues()]
    assert any("frame 2" in m and "before the onset" in m for m in messages)
    assert any("frame 9" in m and "uninfected after frame" in m for m in messages)
    store.set_condition("mock")
    assert any("infected in a mock stack" in m for m in map(str, store.issues()))


def test_onset_outside_the_stack_is_refused_and_nothing_changes(stack_file):
    store = _store(stack_file)
    store.set_condition("infected", onset_h=1.0)
    with pytest.raises(AnnotationError, match="outside the stack.*0-9.5 h"):
        store.set_condition("infected", onset_h=30.0)
    assert (store.condition, store.onset_h) == ("infected", 1.0)


def test_sidecar_round_trip_and_reload(stack_file, tmp_path):
    store, path = open_annotations(stack_file, 20, (32, 32))
    assert path == sidecar_path(stack_file) and path.name.endswith(".tif.infection-clock.json")
    store.set_condition("infected", onset_h=1.5, frame_interval_h=0.5)
    store.label_frames([5, 6], "infected")
    store.set_frame_crops(7, {(1, 2, 11, 12): "uninfected"})
    store.save(path)
    again, _ = open_annotations(stack_file, 20)
    assert again.frames == store.frames and again.crops == store.crops
    assert (again.condition, again.onset_h) == ("infected", 1.5)
    # the same image under a project folder: a separate, hashed file
    project = tmp_path / "project"
    other = sidecar_path(stack_file, project)
    assert other.parent == project and other != path
    with pytest.raises(AnnotationError, match="40 frames|20 frames"):
        open_annotations(stack_file, 40)


def test_label_table_round_trip_feeds_the_trainer(stack_file, tmp_path):
    store = _store(stack_file)
    store.set_condition("infected", onset_h=1.0)
    store.label_frames([0, 1], "uninfected")
    store.label_frames([4, 5], "infected")
    store.set_frame_crops(6, {(0, 0, 16, 16): "infected"})
    table = store.to_label_table()
    csv = write_label_table(table, tmp_path / "labels.csv")
    back = read_label_table(csv)
    items = label_table_items(back)
    assert [(i.frame, i.label) for i in items] == [(0, 0), (1, 0), (4, 1), (5, 1), (6, 1)]
    assert items[3].time_target == pytest.approx(1.5) and items[4].box == (0, 0, 16, 16)
    fresh = _store(stack_file)
    assert fresh.merge_label_table(back) == 5
    assert fresh.frames == store.frames and fresh.crops == store.crops
    assert fresh.condition == "infected" and fresh.onset_h == 1.0


def test_unwritable_folder_keeps_labels_in_memory_and_old_file(stack_file, tmp_path):
    store, path = open_annotations(stack_file, 20)
    store.label_frames(1, "uninfected")
    store.save(path)
    before = path.read_bytes()
    store.label_frames(2, "uninfected")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")  # unwritable even for root
    with pytest.raises(OutputNotWritable, match="cannot write"):
        store.save(sidecar_path(stack_file, blocker / "project"))
    assert path.read_bytes() == before and 2 in store.frames


def _items(n_frames=40, stack="s.tif", onset_frame=20):
    from napari_infection_clock.core.items import Item

    return [Item(stack, f, None, int(f >= onset_frame), f * 0.5, 0.0, "g") for f in range(n_frames)]


def test_frame_blocks_never_put_neighbours_on_both_sides():
    items = _items()
    split = split_frame_blocks(items, val_fraction=0.25, block_frames=5, gap_frames=1, seed=3)
    val = {i.frame for i in split.val}
    train = {i.frame for i in split.train}
    assert val and train and not val & train
    assert {i.label for i in split.val} == {0, 1}
    for f in train:
        assert f - 1 not in val and f + 1 not in val
    assert len(split.train) + len(split.val) + len(split.guard) == len(items)
    # one well per class: auto falls back to frame blocks
    assert split_for_training(items, 0.25).how.startswith("by frame blocks")
    assert split_for_training(items, 0.0).val == []


def test_undo_takes_back_each_change_and_a_refused_change_changes_nothing():
    store = AnnotationStore(stack="/x/well.tif", n_frames=10)
    assert not store.can_undo and not store.undo()
    store.set_condition("infected", 1.0, 0.5)
    store.label_frames([4, 5], "infected")
    store.set_frame_crops(6, {(0, 0, 8, 8): "uninfected"})
    store.label_frames([4], "uninfected")
    with pytest.raises(AnnotationError):
        store.set_all_crops({(1, (0, 0, 4, 4)): "infected", (2, (5, 5, 1, 1)): "infected"})
    assert store.crops == {(6, (0, 0, 8, 8)): "uninfected"}  # refused: left as it was
    store.label_frames([9], None)  # changes nothing: no undo step
    assert store.undo() and store.frames == {4: "infected", 5: "infected"}
    assert store.undo() and store.crops == {}
    assert store.undo() and store.frames == {}
    assert store.undo() and (store.condition, store.onset_h) == ("unknown", 1.0)
    assert not store.undo()


def test_relabelled_by_counts_labels_whose_meaning_changes():
    store = AnnotationStore(stack="/x/well.tif", n_frames=10)
    assert store.relabelled_by("mock") == 0  # nothing labelled yet
    store.set_condition("infected", 1.0, 0.5)
    store.label_frames([4, 5, 6], "infected")
    store.label_frames([0], "uninfected")
    assert store.relabelled_by("infected", 1.0, 0.5) == 0
    assert store.relabelled_by("mock") == 3  # three infected labels now contradict it
    assert store.relabelled_by("infected", 2.0) == 3  # their time since onset moves
    assert store.relabelled_by("infected", 1.0, 1.0) == 3  # hours move, except at frame 0
    assert store.condition == "infected" and store.onset_h == 1.0  # only a trial

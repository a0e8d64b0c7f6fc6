from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_infection_clock.core.items import (
    FramePolicy,
    Item,
    items_frame,
    kfold_by_group,
    label_table_items,
    research_items,
    split_by_group,
)
from napari_infection_clock.core.stack import write_stack
from napari_infection_clock.core.targets import INFECTED, UNINFECTED, time_target
from napari_infection_clock.core.tiles import TileSpec


def _stack(path: Path, n_frames=10, interval_h=0.5) -> Path:
    data = np.random.default_rng(0).integers(0, 255, (n_frames, 16, 16), dtype=np.uint8)
    return write_stack(path, data, frame_interval_h=interval_h)


@pytest.fixture
def research_root(tmp_path) -> Path:
    _stack(tmp_path / "infected" / "exp_s1_p1_t0-9.tif")
    _stack(tmp_path / "infected" / "exp_s1_p2_t0-9.TIFF")
    _stack(tmp_path / "uninfected" / "exp_s1_p3_t0-9.tif")
    _stack(tmp_path / "uninfected" / "nopos.tif", interval_h=1.0)
    (tmp_path / "uninfected" / "notes.txt").write_text("not a stack")
    return tmp_path


def test_research_items_windows_strides_targets_groups(research_root):
    policy = FramePolicy(
        frames_per_hour=2.0,
        infected_window_h=(1.0, 3.0),
        uninfected_window_h=(0.0, 48.0),
        infected_stride=2,
        uninfected_stride=3,
        onset_h=1.5,
        use_metadata_interval=False,
    )
    items = research_items(research_root, policy)
    table = items_frame(items)
    inf = table[table["label"] == INFECTED]
    mock = table[table["label"] == UNINFECTED]
    assert sorted(set(inf["group"])) == ["p1", "p2"]
    assert sorted(set(mock["group"])) == ["nopos", "p3"]
    for _, frames in inf.groupby("group")["frame"]:
        assert frames.tolist() == [2, 4, 6]  # hours 1, 2, 3 (window edges included)
    for _, frames in mock.groupby("group")["frame"]:
        assert frames.tolist() == [0, 3, 6, 9]
    # with use_metadata_interval=False the config's frames_per_hour beats the file's 1 h
    np.testing.assert_allclose(table["hours"], table["frame"] * 0.5)
    expected = time_target(table["hours"], table["label"] == INFECTED, 1.5, (0.0, 48.0))
    np.testing.assert_allclose(table["time_target"], expected)
    assert inf["time_target"].tolist()[:3] == [0.0, 0.5, 1.5]
    assert table["y0"].isna().all() and all(it.box is None for it in items)
    assert all(Path(it.stack).is_file() for it in items)


def test_research_items_metadata_interval_and_tiles(research_root):
    policy = FramePolicy(uninfected_window_h=(0.0, 2.0))  # the file's interval by default
    items = research_items(research_root, policy, TileSpec(tile_size=8))
    nopos = [it for it in items if it.group == "nopos"]
    assert sorted({it.frame for it in nopos}) == [0, 1, 2]  # 1 h per frame from the file
    assert {it.hours for it in nopos} == {0.0, 1.0, 2.0}
    assert len(nopos) == 3 * 4
    assert {it.box for it in nopos} == {(0, 0, 8, 8), (0, 8, 8, 16), (8, 0, 16, 8), (8, 8, 16, 16)}
    p3 = [it for it in items if it.group == "p3"]
    assert sorted({it.frame for it in p3}) == [0, 1, 2, 3, 4]


def test_research_items_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        research_items(tmp_path / "missing")
    (tmp_path / "infected").mkdir()
    with pytest.raises(ValueError, match="no uninfected/ folder"):
        research_items(tmp_path)
    (tmp_path / "uninfected").mkdir()
    with pytest.raises(ValueError, match="no .tif/.tiff files"):
        research_items(tmp_path)
    _stack(tmp_path / "infected" / "a_p1_.tif", n_frames=2)
    _stack(tmp_path / "uninfected" / "b_p2_.tif", n_frames=2)
    with pytest.raises(ValueError, match="no frame of the infected stacks lies in"):
        research_items(tmp_path, FramePolicy(infected_window_h=(5.0, 48.0)))


def test_frame_policy_validation():
    assert FramePolicy(frames_per_hour=4).frame_interval_h == 0.25
    with pytest.raises(ValueError, match="frames_per_hour"):
        FramePolicy(frames_per_hour=0)
    with pytest.raises(ValueError, match="infected_stride"):
        FramePolicy(infected_stride=0)
    with pytest.raises(ValueError, match="uninfected_window_h"):
        FramePolicy(uninfected_window_h=(5.0, 1.0))


def test_label_table_items(tmp_path):
    a = _stack(tmp_path / "run_p4_t0.tif", n_frames=6, interval_h=0.25)
    b = _stack(tmp_path / "other.tif", n_frames=6)
    df = pd.DataFrame(
        {
            "stack": [str(a), str(a), str(b)],
            "frame": [4, 2, 5],
            "y0": [2, None, None],
            "x0": [3, None, None],
            "y1": [10, None, None],
            "x1": [12, None, None],
            "label": ["infected", "mock", 1],
            "onset_h": [0.5, None, 1.0],
            "frame_interval_h": [None, None, 2.0],
        }
    )
    items = label_table_items(df, clamp=(0.0, 9.0))
    # Each item keeps its stack's clock as read: metadata 0.25 h for a, the row's 2 h for b.
    assert items[0] == Item(str(a), 4, (2, 3, 10, 12), INFECTED, 1.0, 0.5, "p4",
                            frame_interval_h=0.25, onset_h=0.5)
    assert items[1] == Item(str(a), 2, None, UNINFECTED, 0.5, 0.5, "p4", frame_interval_h=0.25)
    assert items[2] == Item(str(b), 5, None, INFECTED, 10.0, 9.0, str(b),  # clamped
                            frame_interval_h=2.0, onset_h=1.0)

    tiled = label_table_items(df, tiles=TileSpec(tile_size=8))
    assert [it.box for it in tiled if it.frame == 4] == [(2, 3, 10, 12)]
    assert len([it for it in tiled if it.frame == 2]) == 4


def test_label_table_items_default_interval_and_bad_frame(tmp_path):
    import tifffile

    plain = tmp_path / "plain.tif"
    # no interval metadata
    tifffile.imwrite(plain, np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    df = pd.DataFrame({"stack": [str(plain)], "frame": [2], "label": ["uninfected"]})
    (item,) = label_table_items(df, default_frame_interval_h=2.0)
    assert item.hours == 4.0 and item.time_target == 4.0
    df.loc[0, "frame"] = 4
    with pytest.raises(ValueError, match=r"row 1 .*frame 4 does not exist.*4 frames"):
        label_table_items(df)


def _items(n_inf=10, n_mock=10, frames=3) -> list[Item]:
    out = []
    for label, n, prefix in ((INFECTED, n_inf, "i"), (UNINFECTED, n_mock, "m")):
        for g in range(n):
            out += [Item(f"{prefix}{g}.tif", f, None, label, f * 0.5, f * 0.5, f"{prefix}{g}")
                    for f in range(frames)]
    return out


def _groups(items) -> set[str]:
    return {it.group for it in items}


def test_split_by_group_is_disjoint_stratified_and_deterministic():
    items = _items()
    train, val, test = split_by_group(items, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert len(train) + len(val) + len(test) == len(items)
    assert not (_groups(train) & _groups(val) or _groups(train) & _groups(test)
                or _groups(val) & _groups(test))
    assert (len(_groups(train)), len(_groups(val)), len(_groups(test))) == (14, 2, 4)
    for part in (train, val, test):
        assert {it.label for it in part} == {INFECTED, UNINFECTED}
    assert split_by_group(items, 0.1, 0.2, seed=3) == (train, val, test)
    assert split_by_group(items, 0.1, 0.2, seed=4) != (train, val, test)


def test_split_by_group_small_data_and_errors():
    train, val, test = split_by_group(_items(2, 2), 0.1, 0.2)
    assert [len(_groups(p)) for p in (train, val, test)] == [2, 1, 1]
    assert {it.label for it in train} == {INFECTED, UNINFECTED}
    train, val, test = split_by_group(_items(2, 2), val_fraction=0.0, test_fraction=0.2)
    assert val == [] and {it.label for it in test} == {INFECTED, UNINFECTED}
    with pytest.raises(ValueError, match=r"2 group\(s\): 1 infected, 1 uninfected.*at least 3"):
        split_by_group(_items(1, 1), 0.1, 0.2)
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_by_group(_items(), 0.5, 0.5)
    # One infected well: no split may take it from training.
    with pytest.raises(ValueError, match="last training group of a class"):
        split_by_group(_items(1, 2), 0.1, 0.2)


def test_kfold_by_group():
    items = _items()
    folds = kfold_by_group(items, k=5, seed=1)
    assert len(folds) == 5
    seen = []
    for train, val in folds:
        assert not _groups(train) & _groups(val)
        assert len(train) + len(val) == len(items)
        assert {it.label for it in val} == {INFECTED, UNINFECTED}
        seen += val
    assert sorted(seen, key=repr) == sorted(items, key=repr)  # each item validated once
    assert kfold_by_group(items, k=5, seed=1) == folds
    one_class = kfold_by_group(_items(4, 0), k=2)
    assert all(not _groups(t) & _groups(v) for t, v in one_class)
    with pytest.raises(ValueError, match=r"at least 5 groups; there are 3 group\(s\)"):
        kfold_by_group(_items(2, 1), k=5)

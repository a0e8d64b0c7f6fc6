"""Real multichannel ImageJ files (tests/fiji.py): the channel is chosen, checked and
recorded; a label table's clock is kept; padded tiles are marked (issue 13)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from napari_infection_clock.core.channels import channel_mismatch
from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.dataset import ItemDataset
from napari_infection_clock.core.items import (
    FramePolicy,
    items_frame,
    items_time_policy,
    label_table_items,
    research_items,
    stack_records,
)
from napari_infection_clock.core.labels import LabelTableError, read_label_table
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.stack import ChannelNotChosen, StackError, open_stack
from napari_infection_clock.core.tiles import TileSpec
from napari_infection_clock.core.trainer import TrainConfig, best_epoch_note, run_training

from .fiji import DYES, write_fiji

ORDER_A = ["mito", "actin", "DAPI", "BF"]  # DAPI is channel 2 in three files...
ORDER_B = ["DAPI", "actin", "mito", "BF"]  # ...and channel 0 in the fourth
DAPI = DYES["DAPI"][0]


def level(frame: np.ndarray) -> float:
    """The dye level of a frame, ignoring its masked zeros."""
    return float(np.median(frame[frame > 0]))


@pytest.fixture
def wells(tmp_path):
    """Four TCYX wells (6 frames each, 0.5 h), DAPI at channel 2, 2, 2 and 0."""
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [
        write_fiji(folder / f"w_p{i}_.tif", ORDER_B if i == 3 else ORDER_A, frames=6,
                   frame_interval_s=1800, seed=i)
        for i in range(4)
    ]
    return tmp_path, paths


def test_channel_names_come_from_labels_ome_and_luts(tmp_path):
    import tifffile

    labelled = write_fiji(tmp_path / "labels.tif", ORDER_A)
    with pytest.raises(ChannelNotChosen, match="0 'mito', 1 'actin', 2 'DAPI', 3 'BF'"):
        open_stack(labelled)
    lut_only = write_fiji(tmp_path / "luts.tif", ORDER_B, names=False)
    with open_stack(lut_only, channel="blue") as stack:
        assert (stack.channel, stack.channel_desc) == (0, "blue")
        assert level(stack.frame(0)) == pytest.approx(DAPI, abs=5)
    bare = write_fiji(tmp_path / "bare.tif", ["DAPI", "BF"], names=False, luts=False)
    with pytest.raises(ChannelNotChosen, match=r"0, 1 \(the file's metadata names none\)"):
        open_stack(bare)
    ome = tmp_path / "ome.ome.tif"
    data = np.stack([np.full((3, 16, 16), v, np.uint8) for v in (60, 200)], axis=1)
    tifffile.imwrite(ome, data, ome=True,
                     metadata={"axes": "TCYX", "Channel": {"Name": ["mito", "DAPI"]}})
    with open_stack(ome, channel="DAPI") as stack:
        assert (stack.channel, stack.n_frames, int(stack.frame(2)[0, 0])) == (1, 3, 200)
    with pytest.raises(StackError, match="no channel is named 'GFP'|channel 'GFP' does not"):
        open_stack(ome, channel="GFP")


def test_axes_contradicting_imagej_metadata_are_refused_unless_forced(tmp_path):
    path = write_fiji(tmp_path / "cyx.tif", ORDER_A)
    with pytest.raises(StackError, match=r"its C axis \(size 4\) would be read as T"):
        open_stack(path, axes="TYX")
    with open_stack(path, axes="TYX", force_axes=True) as stack:
        assert stack.n_frames == 4  # the user's word, taken as asked


def test_label_table_needs_a_channel_and_reads_it_per_stack(wells):
    root, paths = wells
    rows = [(p.name, f, "infected" if i % 2 else "uninfected", 1.0 if i % 2 else "")
            for i, p in enumerate(paths) for f in (0, 5)]
    table = pd.DataFrame(rows, columns=["stack", "frame", "label", "onset_h"])
    table.to_csv(root / "images" / "labels.csv", index=False)
    df = read_label_table(root / "images" / "labels.csv")
    with pytest.raises(StackError, match=r"row 1 .*no channel was chosen.*2 'DAPI'"):
        label_table_items(df)
    by_name = label_table_items(df, channel="DAPI")  # the run's choice, by name
    per_row = df.assign(channel=[0 if "p3" in s else 2 for s in df["stack"]])
    by_row = label_table_items(per_row)  # the table's choice, by index, per stack
    for items in (by_name, by_row):
        assert [it.channel for it in items] == [2] * 6 + [0] * 2
        assert {it.channel_desc for it in items} == {"DAPI"}
        ds = ItemDataset(items, Preprocessing(image_size=32))
        assert all(level(ds.raw_crop(i)) == pytest.approx(DAPI, abs=5) for i in range(8))
    frame = items_frame(by_row)
    assert list(frame["channel"]) == [2] * 6 + [0] * 2
    records = stack_records(by_row)
    assert [(r["channel"], r["channel_desc"]) for r in records] == [(2, "DAPI")] * 3 + [
        (0, "DAPI")]


def test_research_layout_takes_the_run_channel_by_name(tmp_path):
    for sub, order in (("infected", ORDER_A), ("uninfected", ORDER_B)):
        (tmp_path / sub).mkdir()
        write_fiji(tmp_path / sub / f"{sub}_p1_.tif", order, frames=3, frame_interval_s=1800)
    with pytest.raises(StackError, match="no channel was chosen"):
        research_items(tmp_path, FramePolicy(infected_window_h=(0, 48)))
    items = research_items(tmp_path, FramePolicy(infected_window_h=(0, 48)), channel="dapi")
    assert {(it.label, it.channel) for it in items} == {(1, 2), (0, 0)}


def test_label_table_clock_is_kept_or_refused_when_ambiguous(wells):
    root, paths = wells
    table = pd.DataFrame({
        "stack": [str(p) for p in paths], "frame": 4, "channel": "DAPI",
        "label": ["uninfected", "infected", "uninfected", "infected"],
        "onset_h": [None, 0.5, None, 0.5], "frame_interval_h": 0.25,
    })
    items = label_table_items(table)
    policy = items_time_policy(items)
    assert (policy.frame_interval_h, policy.onset_h) == (0.25, 0.5)  # not the 0.5/1.0 defaults
    assert stack_records(items)[1]["onset_h"] == 0.5
    differing = table.assign(onset_h=[None, 0.5, None, 2.0])
    with pytest.raises(LabelTableError, match=r"different infection onsets.*--onset"):
        items_time_policy(label_table_items(differing))
    assert items_time_policy(label_table_items(differing), onset_h=1.0).onset_h == 1.0
    one_stack_two_clocks = pd.concat([table, table.iloc[[1]].assign(frame=5, onset_h=3.0)])
    with pytest.raises(LabelTableError, match=r"rows of .*w_p1_.tif give different infection"):
        items_time_policy(label_table_items(one_stack_two_clocks), onset_h=1.0)


def test_missing_relative_stack_names_the_folder_it_was_looked_for_in(tmp_path):
    (tmp_path / "labels").mkdir()
    table = tmp_path / "labels" / "t.csv"
    pd.DataFrame({"stack": ["images/w1.tif"], "frame": [0], "label": ["mock"]}).to_csv(
        table, index=False)
    with pytest.raises(StackError, match=r"row 1 .*labels/images/w1.tif does not exist; relative"
                       r" stack paths .* resolved against the table's folder \(.*labels\)"):
        label_table_items(read_label_table(table))


def test_prediction_table_records_channel_and_padded_tiles(wells):
    _, paths = wells
    model = build_model(ModelConfig("resnet18", hidden_dim=0), init="random")
    meta = CheckpointMeta(model=ModelConfig("resnet18", hidden_dim=0),
                          preprocessing=Preprocessing(image_size=32))
    predictor = Predictor(model, meta, device="cpu", precision="fp32")
    with open_stack(paths[3], channel="DAPI") as stack:
        table = predictor.predict_stack(stack, tiles=TileSpec(20, border="pad"), frames=[0])
        shifted = predictor.predict_stack(stack, tiles=TileSpec(20, border="shift"), frames=[0])
    assert set(table["channel"]) == {0} and set(table["channel_name"]) == {"DAPI"}
    # 32 px frame, 20 px tiles: the second row and column reach to 40 px, half invented.
    assert list(table["padded"]) == [False, True, True, True]
    assert table.loc[table["padded"], ["y1", "x1"]].max().max() == 40
    assert not shifted["padded"].any() and shifted[["y1", "x1"]].max().max() == 32
    assert TileSpec(20).border == "shift"  # the default makes up no pixels


def test_checkpoint_channel_mismatch_is_worded():
    trained = [{"channel_desc": "DAPI"}]
    assert channel_mismatch(trained, "DAPI") is None
    assert "trained on DAPI" in channel_mismatch(trained, "mito")
    assert channel_mismatch([], "mito") is None  # older checkpoints record none


def test_training_without_validation_says_the_best_epoch_is_by_training_loss(wells):
    _, paths = wells
    table = pd.DataFrame({"stack": [str(p) for p in paths], "frame": 1, "channel": "DAPI",
                          "label": ["mock", "infected"] * 2, "onset_h": [None, 0.0] * 2})
    items = label_table_items(table)
    config = ModelConfig("resnet18", hidden_dim=0)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=32))
    torch.manual_seed(0)
    last = run_training(build_model(config, init="random"),
                        ItemDataset(items, meta.preprocessing), None,
                        TrainConfig(epochs=2, batch_size=4, device="cpu", augment=False), meta)
    assert last.best_by == last.meta.best_epoch_by == "train_loss"
    assert "training loss" in best_epoch_note(last.best_by)
    assert best_epoch_note("val_roc_auc") is None


# --- the command line ------------------------------------------------------------------

TRAIN = ["--arch", "resnet18", "--init", "random", "--image-size", "32", "--hidden-dim", "8",
         "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--val-fraction", "0",
         "--test-fraction", "0"]


@pytest.fixture
def labels_csv(wells):
    """A label table beside its images, relative paths, clock 0.25 h / onset 0.5 h."""
    root, paths = wells
    table = root / "labels.csv"
    pd.DataFrame({
        "stack": [f"images/{p.name}" for p in paths for _ in (0, 1)],
        "frame": [1, 4] * 4,
        "label": [lab for lab in ("mock", "infected") * 2 for _ in (0, 1)],
        "onset_h": [v for v in ("", 0.5) * 2 for _ in (0, 1)],
        "frame_interval_h": 0.25,
    }).to_csv(table, index=False)
    return table


def test_cli_train_refuses_unchosen_channel_then_records_it(labels_csv, tmp_path, capsys):
    from napari_infection_clock.cli import main
    from napari_infection_clock.core.checkpoint import load_checkpoint

    out = tmp_path / "run"
    assert main(["train", str(labels_csv), "--out", str(out), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "no channel was chosen" in err and "2 'DAPI'" in err and "Traceback" not in err
    assert main(["train", str(labels_csv), "--out", str(out), "--channel", "DAPI", *TRAIN]) == 0
    captured = capsys.readouterr()
    # said at the start (before the first epoch) and at the end
    assert captured.err.count("best epoch is chosen by training loss") == 2
    assert "best epoch 1 (by train_loss)" in captured.out
    _, meta = load_checkpoint(out / "model.pt")
    assert {(r["channel"], r["channel_desc"]) for r in meta.stacks} == {(2, "DAPI"), (0, "DAPI")}
    assert (meta.time.frame_interval_h, meta.time.onset_h) == (0.25, 0.5)
    assert meta.best_epoch_by == "train_loss"
    splits = pd.read_csv(out / "splits.csv")
    assert set(zip(splits.channel, splits.channel_desc)) == {(2, "DAPI"), (0, "DAPI")}


def test_cli_predict_channel_column_mismatch_warning_and_axes(labels_csv, wells, tmp_path,
                                                              capsys):
    from napari_infection_clock.cli import main

    root, paths = wells
    out = tmp_path / "run"
    assert main(["train", str(labels_csv), "--out", str(out), "--channel", "DAPI", *TRAIN]) == 0
    capsys.readouterr()
    ckpt, table = str(out / "model.pt"), tmp_path / "p.csv"
    args = ["--out", str(table), "--device", "cpu", "--tile-size", "20"]
    assert main(["predict", ckpt, str(paths[0]), *args]) == 2
    assert "no channel was chosen" in capsys.readouterr().err
    assert main(["predict", ckpt, str(paths[0]), str(paths[3]), "--channel", "dapi", *args]) == 0
    assert "warning" not in capsys.readouterr().err
    result = pd.read_csv(table)
    assert list(result.groupby("stack").channel.first()) == [2, 0]
    assert set(result.channel_name) == {"DAPI"}
    assert not result.padded.any() and result.x1.max() == 32  # default border: shift
    assert main(["predict", ckpt, str(paths[0]), "--channel", "mito", *args]) == 0
    assert "trained on DAPI, but this stack is read as mito" in capsys.readouterr().err
    assert main(["predict", ckpt, str(paths[0]), "--channel", "2", "--border", "pad", *args]) == 0
    assert pd.read_csv(table).padded.sum() == 6 * 3  # 3 of 4 tiles per frame reach past 32 px
    cyx = write_fiji(tmp_path / "cyx.tif", ORDER_A)
    assert main(["predict", ckpt, str(cyx), "--axes", "TYX", *args]) == 2
    assert "its C axis (size 4) would be read as T" in capsys.readouterr().err
    assert main(["predict", ckpt, str(cyx), "--axes", "TYX", "--force-axes", *args]) == 0


def test_cli_evaluate_takes_channel_and_reports_the_table_folder(labels_csv, tmp_path, capsys):
    from napari_infection_clock.cli import main

    moved = tmp_path / "elsewhere" / "labels.csv"
    moved.parent.mkdir()
    moved.write_text(labels_csv.read_text())
    out = tmp_path / "run"
    assert main(["train", str(moved), "--out", str(out), "--channel", "DAPI", *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "resolved against the table's folder" in err and str(moved.parent) in err
    assert main(["train", str(labels_csv), "--out", str(out), "--channel", "DAPI", *TRAIN]) == 0
    assert main(["evaluate", str(out / "model.pt"), str(labels_csv), "--out",
                 str(tmp_path / "ev"), "--device", "cpu", "--channel", "DAPI"]) == 0
    predictions = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert set(predictions.channel_name) == {"DAPI"} and len(predictions) == 8

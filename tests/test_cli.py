import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import tifffile

from napari_infection_clock.cli import main
from napari_infection_clock.core.results import RESULT_COLUMNS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    assert (
        main(
            [
                "sample",
                str(root),
                "--n-infected",
                "3",
                "--n-mock",
                "3",
                "--frames",
                "12",
                "--size",
                "48",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    code = main(
        [
            "train",
            str(data),
            "--out",
            str(out),
            "--arch",
            "resnet18",
            "--init",
            "random",
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--hidden-dim",
            "16",
            "--device",
            "cpu",
            "--val-fraction",
            "0.2",
            "--test-fraction",
            "0.3",
        ]
    )
    assert code == 0
    return out


def test_sample_writes_research_layout(data):
    assert len(list((data / "infected").glob("*_p*_*.tif"))) == 3
    assert len(list((data / "uninfected").glob("*.tif"))) == 3
    assert json.loads((data / "dataset.json").read_text())["onset_h"] == 1.0


def test_train_writes_checkpoint_history_and_report(trained):
    assert (trained / "model.pt").is_file()
    history = pd.read_csv(trained / "history.csv")
    assert list(history.epoch) == [1, 2] and "val_roc_auc" in history
    splits = pd.read_csv(trained / "splits.csv")
    groups = splits.groupby("split").group.apply(set)
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
    metrics = json.loads((trained / "report" / "metrics.json").read_text())
    assert metrics["overall"]["classification"]["n"] == (splits.split == "test").sum()
    for name in ("roc.png", "confusion.png", "time_scatter.png", "per_bin.png", "per_bin.csv"):
        assert (trained / "report" / name).stat().st_size > 0


def test_kfold_holds_out_one_fold_of_wells(data, tmp_path):
    code = main(["train", str(data), "--out", str(tmp_path), "--arch", "resnet18", "--init",
                 "random", "--image-size", "32", "--epochs", "1", "--hidden-dim", "8",
                 "--device", "cpu", "--folds", "3", "--fold", "1"])
    assert code == 0
    splits = pd.read_csv(tmp_path / "splits.csv")
    held_out = set(splits[splits.split == "val"].group)
    assert len(held_out) == 2 and not held_out & set(splits[splits.split == "train"].group)
    assert set(splits[splits.split == "test"].group) == held_out


def test_predict_tiles_and_maps(trained, data, tmp_path):
    stack = next((data / "infected").glob("*.tif"))
    out = tmp_path / "pred.csv"
    maps = tmp_path / "maps"
    code = main(
        [
            "predict",
            str(trained / "model.pt"),
            str(stack),
            "--out",
            str(out),
            "--tile-size",
            "24",
            "--maps",
            str(maps),
            "--frames",
            "2:6",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    table = pd.read_csv(out)
    assert list(table.columns) == list(RESULT_COLUMNS)
    assert sorted(table.frame.unique()) == [2, 3, 4, 5] and len(table) == 4 * 4
    prob = tifffile.imread(maps / f"{stack.stem}_p_infected.tif")
    assert prob.shape == (4, 2, 2)
    row = table[(table.frame == 4) & (table.tile_row == 1) & (table.tile_col == 0)].iloc[0]
    assert prob[2, 1, 0] == pytest.approx(row.p_infected, abs=1e-6)


def test_evaluate_writes_report(trained, data, tmp_path):
    code = main(
        [
            "evaluate",
            str(trained / "model.pt"),
            str(data),
            "--out",
            str(tmp_path),
            "--bin-hours",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    bins = pd.read_csv(tmp_path / "per_bin.csv")
    assert bins.bin_start_h.tolist()[:3] == [0.0, 2.0, 4.0]
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert {"true_class", "true_time_h"} <= set(predictions.columns)


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "{ckpt}", "{missing}", "--out", "{out}"], "stack file not found"),
        (["predict", "{bad}", "{stack}", "--out", "{out}"], "not a readable PyTorch checkpoint"),
        (
            ["predict", "{ckpt}", "{stack}", "--out", "{out}", "--tile-size", "999"],
            "larger than the frame",
        ),
        (["train", "{empty}", "--out", "{out}"], "no infected/ folder"),
        (["predict", "{ckpt}", "{stack}", "--out", "{out}", "--frames", "x:y"], "START:STOP"),
    ],
)
def test_user_mistakes_exit_2_without_traceback(trained, data, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    (tmp_path / "empty").mkdir()
    values = {
        "ckpt": trained / "model.pt",
        "missing": tmp_path / "nope.tif",
        "out": tmp_path / "o.csv",
        "bad": bad,
        "stack": next((data / "infected").glob("*.tif")),
        "empty": tmp_path / "empty",
    }
    assert main([a.format(**values) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_is_installed():
    exe = shutil.which("infection-clock", path=str(Path(sys.executable).parent))
    assert exe, "the infection-clock console script is not installed next to this Python"
    result = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, check=True)
    assert "--mode" in result.stdout and "--checkpoint" in result.stdout

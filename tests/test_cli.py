import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_infection_clock.cli import main
from napari_infection_clock.core.calibration import INTERVAL_COLUMNS
from napari_infection_clock.core.checkpoint import load_checkpoint
from napari_infection_clock.core.clock import CLOCK_COLUMNS
from napari_infection_clock.core.novelty import NOVELTY_COLUMNS
from napari_infection_clock.core.results import RESULT_COLUMNS

from .native_tiles import native_checkpoint

#: A calibrated model's whole table: the clock per region, calibrated p and intervals.
CALIBRATED_COLUMNS = [*RESULT_COLUMNS, *NOVELTY_COLUMNS, *CLOCK_COLUMNS, "p_calibrated",
                      *INTERVAL_COLUMNS]


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
    _, meta = load_checkpoint(trained / "model.pt")  # calibrated, and still the run's record
    assert meta.calibration and len(meta.history) == 2 and meta.epoch in (1, 2)
    assert "val_roc_auc" in meta.val_metrics
    splits = pd.read_csv(trained / "splits.csv")
    groups = splits.groupby("split").group.apply(set)
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
    metrics = json.loads((trained / "report" / "metrics.json").read_text())
    assert metrics["overall"]["classification"]["n"] == (splits.split == "test").sum()
    for name in ("roc.png", "confusion.png", "time_scatter.png", "per_bin.png", "per_bin.csv",
                 "reliability.png"):
        assert (trained / "report" / name).stat().st_size > 0
    # calibrated on the validation wells, stored in the checkpoint, used on the test wells
    _, meta = load_checkpoint(trained / "model.pt")
    assert meta.calibration["level"] == 0.9 and meta.calibration["temperature"] > 0
    assert meta.calibration["n_validation"] == (splits.split == "val").sum()
    assert meta.calibration["novelty"]["threshold"] >= 0
    # the consistent clock over validation regions: 1-2 wells, whole frames, too few for 90 %
    block = meta.calibration["consistent"]
    assert sum(block["n_regions"].values()) == splits[splits.split == "val"].group.nunique()
    assert block["halfwidth_h"] == {"infected": np.inf, "uninfected": np.inf}
    assert len(meta.history) == 2 and meta.epoch in (1, 2)  # the re-save kept the run
    infected = metrics["per_class"]["infected"]
    assert set(infected) == {"regression", "consistent"}
    assert infected["regression"]["interval"]["n"] == infected["regression"]["n"]
    assert "temperature_scaled" in metrics["overall"]["calibration"]


def test_clock_recipe_on_native_tiles_is_recorded_and_reported(data, tmp_path, capsys):
    """--native-tiles: each labelled frame gives its tiles, as they are, with its label and
    time; the checkpoint records the recipe, and evaluate names it and the tiles to use."""
    out = tmp_path / "run"
    code = main(["train", str(data), "--out", str(out), "--arch", "resnet18", "--init",
                 "random", "--epochs", "2", "--batch-size", "16", "--hidden-dim", "8",
                 "--device", "cpu", "--test-fraction", "0", "--recipe", "clock",
                 "--native-tiles", "24", "--ema", "0.9"])
    assert code == 0
    assert "recipe clock: augment microscopy" in capsys.readouterr().out
    splits = pd.read_csv(out / "splits.csv")
    per_frame = splits.groupby(["stack", "frame"])
    assert (per_frame.size() == 4).all()  # 48 px frames: 2 x 2 tiles of 24 px
    assert (per_frame.label.nunique() == 1).all() and (per_frame.time_target.nunique() == 1).all()
    assert ((splits.y1 - splits.y0 == 24) & (splits.x1 - splits.x0 == 24)).all()
    _, meta = load_checkpoint(out / "model.pt")
    assert meta.tile_size == meta.preprocessing.image_size == 24
    assert meta.recipe["name"] == "clock" and meta.recipe["native_tiles"] == 24
    assert meta.recipe["ema"] == 0.9 and (meta.recipe["lr"], meta.recipe["best_metric"]) == (1e-3, "loss")
    assert main(["evaluate", str(out / "model.pt"), str(data), "--out", str(tmp_path / "ev"),
                 "--device", "cpu", "--tile-size", "24"]) == 0
    printed = capsys.readouterr()
    assert "recipe clock, native tiles 24, ema 0.9" in printed.out
    assert "--tile-size" not in printed.err


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A checkpoint as ``train --native-tiles 24`` writes it."""
    return native_checkpoint(tmp_path_factory.mktemp("native") / "native.pt", 24)


def test_a_native_tile_model_refuses_frames_smaller_than_its_tiles(native, tmp_path, capsys):
    """A 24 px native-tile model cannot take 16 px frames (nor whole frames): predict and
    evaluate say so, and what to do, not "use whole-frame mode", which it cannot."""
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.random.default_rng(0).integers(0, 255, (3, 16, 16), np.uint8),
                     photometric="minisblack")
    assert main(["predict", str(native), str(small), "--out", str(tmp_path / "p.csv"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot predict frames smaller than 24 px: these are 16 x 16 px" in err, err
    assert "model trained on whole frames or on smaller tiles" in err
    assert "whole-frame mode" not in err and not (tmp_path / "p.csv").exists()
    labels = tmp_path / "labels.csv"
    labels.write_text(f"stack,frame,label,onset_h\n{small},0,infected,0\n{small},1,uninfected,\n")
    assert main(["evaluate", str(native), str(labels), "--out", str(tmp_path / "ev"),
                 "--device", "cpu", "--frames-per-hour", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot predict frames smaller than 24 px: these are 16 x 16 px" in err, err


def test_a_native_tile_checkpoint_predicts_and_evaluates_on_its_tiles(native, data, tmp_path,
                                                                      capsys):
    """Without --tile-size, predict and evaluate cut the 48 px frames into the model's own
    24 px tiles and say so in one line; a --tile-size given still wins, with a warning when
    it differs (its tiles are resized to the model's 24 px)."""
    stack = next((data / "infected").glob("*.tif"))
    run = ["predict", str(native), str(stack), "--frames", "0:2", "--device", "cpu"]
    assert main([*run, "--out", str(tmp_path / "own.csv")]) == 0
    printed = capsys.readouterr()
    assert "tiles: 24 px, as the model was trained on native 24 px tiles" in printed.out
    assert "warning" not in printed.err, printed.err
    table = pd.read_csv(tmp_path / "own.csv")
    assert len(table) == 2 * 4 and set(table.y1 - table.y0) == {24}
    assert main([*run, "--out", str(tmp_path / "16.csv"), "--tile-size", "16"]) == 0
    printed = capsys.readouterr()
    assert "--tile-size 16 tiles are resized to 24 px" in printed.err
    assert "tiles:" not in printed.out
    assert len(pd.read_csv(tmp_path / "16.csv")) == 2 * 9

    assert main(["evaluate", str(native), str(data), "--out", str(tmp_path / "ev"),
                 "--device", "cpu"]) == 0
    assert "tiles: 24 px" in capsys.readouterr().out
    predictions = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert set(predictions.y1 - predictions.y0) == set(predictions.x1 - predictions.x0) == {24}
    assert (predictions.groupby(["stack", "frame"]).size() == 4).all()


def test_fine_tuning_a_native_tile_checkpoint_keeps_its_tiles(native, data, tmp_path, capsys):
    """``train --checkpoint`` from a native-tile model trains on its tiles (whole frames
    shrunk to 24 px would be another input), records them and says so; --tile-size that
    contradicts them is refused."""
    out = tmp_path / "tuned"
    tune = ["train", str(data), "--checkpoint", str(native), "--mode", "heads", "--epochs", "1",
            "--batch-size", "32", "--device", "cpu", "--test-fraction", "0"]
    assert main([*tune, "--out", str(out)]) == 0
    assert f"native tiles: 24 px, as {native} was trained" in capsys.readouterr().out
    splits = pd.read_csv(out / "splits.csv")
    assert ((splits.y1 - splits.y0 == 24) & (splits.x1 - splits.x0 == 24)).all()
    assert (splits.groupby(["stack", "frame"]).size() == 4).all()
    _, meta = load_checkpoint(out / "model.pt")
    assert meta.recipe["native_tiles"] == meta.tile_size == meta.preprocessing.image_size == 24
    assert main([*tune, "--out", str(tmp_path / "no"), "--tile-size", "16"]) == 2
    assert "fine-tuning keeps them" in capsys.readouterr().err


def test_kfold_holds_out_one_fold_of_wells(data, tmp_path):
    code = main(["train", str(data), "--out", str(tmp_path), "--arch", "resnet18", "--init",
                 "random", "--image-size", "32", "--epochs", "1", "--hidden-dim", "8",
                 "--device", "cpu", "--folds", "3", "--fold", "1"])
    assert code == 0
    groups = pd.read_csv(tmp_path / "splits.csv").groupby("split").group.apply(set)
    # The held-out fold is reported on; the best epoch is chosen on other wells.
    assert len(groups["test"]) == 2
    assert not groups["test"] & (groups["train"] | groups["val"])
    assert groups["val"] and not groups["val"] & groups["train"]


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
    assert list(table.columns) == CALIBRATED_COLUMNS
    assert sorted(table.frame.unique()) == [2, 3, 4, 5] and len(table) == 4 * 4
    for _, tile in table.groupby(["tile_row", "tile_col"]):
        assert tile.onset_h.nunique(dropna=False) == 1  # one onset per region
        if tile.onset_h.notna().all():
            expected = np.clip(tile.hours - tile.onset_h, 0, 48)
            np.testing.assert_allclose(tile.consistent_time_h, expected)
    known = table[~table.out_of_distribution]  # flagged tiles get no interval
    assert (known.time_low_h <= known.pred_time_h).all()
    assert (known.pred_time_h <= known.time_high_h).all()
    assert table[table.out_of_distribution].time_low_h.isna().all()
    prob = tifffile.imread(maps / f"{stack.stem}_p_infected.tif")
    assert prob.shape == (12, 2, 2)  # map frame i is stack frame i
    assert np.isnan(prob[:2]).all() and np.isnan(prob[6:]).all()
    row = table[(table.frame == 4) & (table.tile_row == 1) & (table.tile_col == 0)].iloc[0]
    assert prob[4, 1, 0] == pytest.approx(row.p_infected, abs=1e-6)


def test_predict_compiled_gives_the_same_table(trained, data, tmp_path):
    stack = next((data / "infected").glob("*.tif"))
    common = ["predict", str(trained / "model.pt"), str(stack), "--frames", "0:4", "--device",
              "cpu", "--precision", "fp32"]
    assert main(common + ["--out", str(tmp_path / "eager.csv")]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(common + ["--out", str(tmp_path / "compiled.csv"), "--compile"]) == 0
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]  # it compiled
    eager, compiled = (pd.read_csv(tmp_path / f"{n}.csv") for n in ("eager", "compiled"))
    np.testing.assert_allclose(compiled.p_infected, eager.p_infected, atol=1e-4)
    np.testing.assert_allclose(compiled.pred_time_h, eager.pred_time_h, atol=1e-3)


def test_evaluate_writes_report(trained, data, tmp_path, capsys):
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
    assert {"true_class", "true_time_h", *CLOCK_COLUMNS, *INTERVAL_COLUMNS} <= set(predictions)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    consistent = metrics["per_class"]["infected"]["consistent"]
    assert consistent["n"] == (predictions.true_class == 1).sum()
    # too few validation regions: the widest interval, and evaluate says so
    interval = consistent["interval"]
    assert interval["calibrated"] is True and interval["note"].startswith("unbounded: ")
    assert interval["coverage"] == 1.0 and interval["halfwidth_h"] is None
    said = capsys.readouterr().out
    assert "consistent clock, calibrated over regions: infected unbounded" in said


def test_evaluate_says_how_many_items_had_no_information(trained, data, tmp_path, capsys):
    """Issue 11 item 4: a frame the camera dropped (constant) in a test stack is left out of
    evaluate's metrics, and evaluate says so with the count, as predict does."""
    copy = shutil.copytree(data, tmp_path / "data")
    stack = sorted((copy / "infected").glob("*.tif"))[0]
    frames = tifffile.imread(stack)
    frames[-1] = frames[-1].max()  # the last frame: inside the infected window
    tifffile.imwrite(stack, frames, imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "report"
    assert main(["evaluate", str(trained / "model.pt"), str(copy), "--out", str(out),
                 "--device", "cpu"]) == 0
    n_items = len(pd.read_csv(out / "predictions.csv"))
    printed = capsys.readouterr().out
    assert (f"1 of {n_items} items had no information: left out of the metrics "
            "(constant or under 8 px a side)") in printed, printed
    assert json.loads((out / "metrics.json").read_text())["n_no_information"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "{ckpt}", "{missing}", "--out", "{out}"], "stack file not found"),
        (["predict", "{bad}", "{stack}", "--out", "{out}"], "not a PyTorch checkpoint"),
        (
            ["predict", "{ckpt}", "{stack}", "--out", "{out}", "--tile-size", "999"],
            "larger than the frame",
        ),
        (["train", "{empty}", "--out", "{out}"], "no infected/ folder"),
        (["predict", "{ckpt}", "{stack}", "--out", "{empty}"], "is a folder"),
        (["evaluate", "{ckpt}", "{empty}", "--out", "{empty}", "--bin-hours", "0"], "positive"),
        (["predict", "{ckpt}", "{stack}", "--out", "{out}", "--frames", "x:y"], "START:STOP"),
        (["predict", "{ckpt}", "{stack}", "--out", "{stack}"], "is an input"),
        (["predict", "{ckpt}", "{stack}", "--out", "{ckpt}"], "is an input"),
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
    assert message in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("infection-clock", path=str(Path(sys.executable).parent))
    assert exe, "the infection-clock console script is not installed next to this Python"
    result = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, check=True)
    assert "--mode" in result.stdout and "--checkpoint" in result.stdout


#: What the commands import and the parser must not: ~9 s of imports on 2 cores.
HEAVY = {"torch", "torchvision", "scipy", "sklearn", "matplotlib", "pandas"}


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["--help"], 0, "merge-predictions"),
        (["evaluate", "--help"], 0, "--bin-hours"),
        (["predict", "model.pt", "well.tif"], 2, "the following arguments are required: --out"),
    ],
)
def test_help_and_argument_errors_import_nothing_heavy(args, code, said):
    """A user typing ``infection-clock --help`` or a wrong option waited for torch,
    torchvision, scipy and matplotlib before seeing a line: the parser imports none of them."""
    exe = shutil.which("infection-clock", path=str(Path(sys.executable).parent))
    run = subprocess.run([exe, *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert run.returncode == code and said in run.stdout + run.stderr, run.stderr[-2000:]
    imported = {line.rpartition("|")[2].strip().split(".")[0]
                for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "argparse" in imported  # the import times were written
    assert not imported & HEAVY, sorted(imported & HEAVY)


def test_training_without_validation_from_a_calibrated_model_drops_it(trained, tmp_path):
    """The start checkpoint's temperature, intervals and novelty model describe its errors,
    not the new model's: without validation items the new checkpoint has none."""
    _, start = load_checkpoint(trained / "model.pt")
    assert start.calibration
    labels = Path(__file__).parent.parent / "sample_data" / "labels_example.csv"
    out = tmp_path / "tuned"
    code = main(["train", str(labels), "--out", str(out), "--checkpoint", str(trained / "model.pt"),
                 "--mode", "heads", "--epochs", "1", "--device", "cpu", "--val-fraction", "0",
                 "--test-fraction", "0"])
    assert code == 0
    assert load_checkpoint(out / "model.pt")[1].calibration == {}


def test_fine_tuning_takes_the_label_tables_clock(trained, tmp_path):
    """A research checkpoint trained with a 2 h onset, fine-tuned on a table whose rows say
    1 h: the new checkpoint holds the table's clock (issue 13), not the old one's."""
    from .research import ResearchMultitask, research_config, save_research_checkpoint

    research = tmp_path / "research.pth"
    config = research_config("resnet18", hidden=16, image_size=32, onset=2.0)
    save_research_checkpoint(research, ResearchMultitask("resnet18", hidden=16), config)
    labels = Path(__file__).parent.parent / "sample_data" / "labels_example.csv"
    out = tmp_path / "tuned"
    code = main(["train", str(labels), "--out", str(out), "--checkpoint", str(research),
                 "--mode", "heads", "--epochs", "1", "--device", "cpu", "--val-fraction", "0",
                 "--test-fraction", "0"])
    assert code == 0
    _, meta = load_checkpoint(out / "model.pt")
    assert (meta.time.onset_h, meta.time.frame_interval_h) == (1.0, 0.5)
    assert meta.model.hidden_dim == 16
    assert meta.source == "napari-infection-clock" and meta.package_version != "research pipeline"
    code = main(["evaluate", str(out / "model.pt"), str(labels), "--out", str(tmp_path / "ev"),
                 "--device", "cpu"])
    assert code == 0
    predictions = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert len(predictions) == 6
    # The label table's own onset (1 h) wins for its rows: frame 10 (5 h) is 4 h after it.
    infected = predictions[(predictions.true_class == 1) & (predictions.frame == 10)]
    assert infected.true_time_h.tolist() == [4.0]


def test_demo_runs_the_whole_loop(tmp_path):
    """The README's main command, shortened: every step writes what it announces."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--image-size", "32",
                 "--device", "cpu"]) == 0
    assert (out / "training" / "model.pt").is_file()
    assert (out / "training" / "report" / "metrics.json").is_file()
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == CALIBRATED_COLUMNS and len(table) == 48
    maps = sorted(p.name for p in (out / "maps").glob("*.tif"))
    assert len(maps) == 2 and maps[0].endswith("_duration_h.tif")
    assert maps[1].endswith("_p_infected.tif")


def test_every_option_reaches_its_command():
    """An option the parser accepts but the command's options lack would be dropped."""
    from dataclasses import fields

    from napari_infection_clock.cli.parser import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, (options_type, _) in COMMANDS.items():
        dests = {a.dest for a in sub.choices[name]._actions if a.dest != "help"}
        assert dests <= {f.name for f in fields(options_type)}, name


def test_python_dash_m_is_the_cli():
    result = subprocess.run([sys.executable, "-m", "napari_infection_clock", "predict", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--maps" in result.stdout


def test_zero_interval_names_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "m.pt", "s.tif", "--out", str(tmp_path / "o.csv"), "--interval", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--interval: must be a positive number of hours, got '0'" in err
    assert "frame_interval_h" not in err


def test_two_channel_stack_needs_its_channel_named(trained, data, tmp_path, capsys):
    """Issue 13: no channel 0 taken silently (nor with a warning): refused, channels listed."""
    import tifffile

    one = tifffile.imread(next((data / "infected").glob("*.tif")))
    two = tmp_path / "two.tif"
    tifffile.imwrite(two, np.stack([one, one[:, ::-1]], axis=1), imagej=True,
                     metadata={"axes": "TCYX"})
    out = tmp_path / "o.csv"
    assert main(["predict", str(trained / "model.pt"), str(two), "--out", str(out)]) == 2
    assert "no channel was chosen; it has 2 channels: 0, 1" in capsys.readouterr().err
    assert main(["predict", str(trained / "model.pt"), str(two), "--out", str(out),
                 "--channel", "1"]) == 0
    assert set(pd.read_csv(out).channel) == {1}


def test_nan_weights_stop_predict_with_a_message(trained, data, tmp_path, capsys):
    import torch

    raw = torch.load(trained / "model.pt", weights_only=True)
    conv1 = next(v for k, v in raw["model_state"].items() if k.endswith("conv1.weight"))
    conv1.fill_(float("nan"))
    broken = tmp_path / "diverged.pt"
    torch.save(raw, broken)
    stack = next((data / "infected").glob("*.tif"))
    assert main(["predict", str(broken), str(stack), "--out", str(tmp_path / "o.csv")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_predict_names_its_own_flag_for_what_the_checkpoint_lacks(tmp_path, capsys):
    """A research file without its config: predict has --interval, not --onset or
    --frames-per-hour, so its warning must name that flag."""
    import torch

    from tests.research import ResearchMultitask

    bare = tmp_path / "bare.pth"
    torch.save({"model_state_dict": ResearchMultitask("resnet18", hidden=16).state_dict()}, bare)
    stack = tmp_path / "well.tif"
    tifffile.imwrite(stack, np.random.default_rng(0).integers(0, 255, (2, 32, 32), np.uint8))
    assert main(["predict", str(bare), str(stack), "--out", str(tmp_path / "o.csv")]) == 0
    err = capsys.readouterr().err
    assert "does not record its" in err and "--interval" in err, err
    assert "--frames-per-hour" not in err and "--onset" not in err, err


def test_train_refuses_to_replace_its_start_checkpoint_before_training(data, tmp_path, capsys):
    """`train --checkpoint run/model.pt --out run` would write over the model it starts
    from: refused at once, before an epoch is spent."""
    from napari_infection_clock.core.checkpoint import CheckpointMeta, save_checkpoint
    from napari_infection_clock.core.model import ModelConfig, build_model
    from napari_infection_clock.core.preprocess import Preprocessing

    config = ModelConfig("resnet18", hidden_dim=16)
    start = tmp_path / "run" / "model.pt"
    save_checkpoint(start, build_model(config, init="random"),
                    CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=32)))
    before = start.read_bytes()
    code = main(["train", str(data), "--checkpoint", str(start), "--out", str(start.parent),
                 "--epochs", "1", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2 and "is an input" in err, err
    assert "training on" not in out
    assert start.read_bytes() == before


def test_a_no_augment_run_state_from_before_recipes_resumes_with_the_same_command(
        data, tmp_path, capsys):
    """States saved before recipes say ``augment False`` and no recipe; today's
    ``--no-augment`` is the research recipe with ``augment none``: the same run."""
    from napari_infection_clock.core.run_state import load_run_state, save_run_state

    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--arch", "resnet18", "--init", "random",
            "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--hidden-dim", "16",
            "--device", "cpu", "--no-augment", "--resume"]
    assert main(args) == 0
    state = load_run_state(out / "run_state.pt")
    state["config"].pop("recipe")
    state["config"]["augment"] = False
    save_run_state(out / "run_state.pt", state)
    capsys.readouterr()
    code = main(args)
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert "resuming after epoch 1" in printed


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_header_only_label_table_names_the_file(trained, tmp_path, capsys, command):
    """Issue 11: a label CSV with a header and no rows said "No objects to concatenate"."""
    from napari_infection_clock.core.labels import LABEL_COLUMNS

    table = tmp_path / "labels.csv"
    table.write_text(",".join(LABEL_COLUMNS) + "\n")
    out = tmp_path / "out"
    args = {"train": ["train", str(table), "--out", str(out), "--device", "cpu"],
            "evaluate": ["evaluate", str(trained / "model.pt"), str(table), "--out", str(out)]}
    assert main(args[command]) == 2
    err = capsys.readouterr().err
    assert f"label table {table} has no rows" in err and "add labels" in err
    assert not out.exists() or not any(out.iterdir())


def _truncated_single_frame(path):
    """An uncompressed one-frame TIFF cut inside its pixel data (tifffile: "failed to read
    2048 bytes, got 44")."""
    tifffile.imwrite(path, np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    path.write_bytes(path.read_bytes()[:300])


def _truncated_compressed_stack(path):
    """A zlib-compressed stack cut inside its last frame."""
    frames = np.random.default_rng(0).integers(0, 4000, (8, 32, 32), dtype=np.uint16)
    tifffile.imwrite(path, frames, compression="zlib")
    path.write_bytes(path.read_bytes()[:-200])


@pytest.mark.parametrize("damage", [_truncated_single_frame, _truncated_compressed_stack])
def test_damaged_tiff_stops_predict_naming_the_file(trained, tmp_path, damage):
    """Issue 11: a damaged TIFF gives one line naming the file and what to do, exit 2, no
    table (was a zlib traceback, or "failed to read 2048 bytes, got 0" naming no file)."""
    stack = tmp_path / "damaged.tif"
    damage(stack)
    out = tmp_path / "o.csv"
    run = subprocess.run(
        [sys.executable, "-m", "napari_infection_clock", "predict", str(trained / "model.pt"),
         str(stack), "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True,
    )
    assert run.returncode == 2, run.stderr
    error = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "Traceback" not in run.stderr, run.stderr
    assert error[0].startswith("infection-clock predict: error:") and str(stack) in error[0]
    assert "damaged" in error[0] and "export it again" in error[0]
    assert not out.exists()


def test_one_class_training_error_starts_its_own_line(data, tmp_path):
    """Issue 11: the one-class error was printed after the progress bar, on its line."""
    stacks = sorted(data.glob("*/*.tif"))
    table = tmp_path / "labels.csv"
    table.write_text("stack,frame,label\n" + "".join(
        f"{s},{f},uninfected\n" for s in stacks for f in range(12)))
    run = subprocess.run(
        [sys.executable, "-m", "napari_infection_clock", "train", str(table), "--out",
         str(tmp_path / "out"), "--arch", "resnet18", "--init", "random", "--image-size", "32",
         "--epochs", "1", "--hidden-dim", "16", "--device", "cpu"],
        capture_output=True, text=True,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    error = [line for line in lines if "error:" in line]
    assert error == [error[0]] and error[0].startswith("infection-clock train: error: all "), lines
    assert "uninfected" in error[0]


def test_frames_without_information_are_marked_not_classified(tmp_path, capsys):
    """Issue 11 item 4: a dropped (constant) frame in a Fiji-style TIFF and a stack of 1x1
    frames, predicted with a research checkpoint (numpy scalars in val_metrics, no novelty
    model): marked "no information", with no class, probability or time, and counted."""
    import torch

    from tests.research import ResearchMultitask, research_config, save_research_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "best_model.pth"
    save_research_checkpoint(ckpt, ResearchMultitask("resnet18", hidden=16),
                             research_config("resnet18", hidden=16, image_size=32))
    frames = np.random.default_rng(0).integers(100, 4000, (4, 48, 48), dtype=np.uint16)
    frames[2] = 1234  # the camera dropped this frame
    well = tmp_path / "well.tif"
    tifffile.imwrite(well, frames, imagej=True, metadata={"axes": "TYX"})
    tiny = tmp_path / "tiny.tif"
    tifffile.imwrite(tiny, np.arange(3, dtype=np.uint16).reshape(3, 1, 1),
                     photometric="minisblack", metadata={"axes": "TYX"})
    out = tmp_path / "o.csv"
    assert main(["predict", str(ckpt), str(well), str(tiny), "--out", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "well: 1 of 4 items had no information" in printed, printed
    assert "tiny: 3 of 3 items had no information" in printed, printed

    table = pd.read_csv(out)
    empty = (table["stack"] == "tiny") | (table.frame == 2)
    assert table["no_information"].tolist() == empty.tolist()
    blank = table[empty]
    assert (blank.pred_label == "no information").all()
    assert (blank.pred_class == -1).all()
    for column in ("p_infected", "pred_time_h", "est_onset_h", "consistent_time_h"):
        assert blank[column].isna().all(), column
    assert table.loc[~empty, "p_infected"].notna().all()
    assert set(table.loc[~empty, "pred_label"]) <= {"infected", "uninfected"}


def test_predict_does_not_import_scikit_learn(tmp_path):
    """Issue 14: prediction needs no scikit-learn (~18 MB resident); the CLI imported it
    through the training and evaluation modules."""

    from tests.research import ResearchMultitask, research_config, save_research_checkpoint

    ckpt = tmp_path / "best_model.pth"
    save_research_checkpoint(ckpt, ResearchMultitask("resnet18", hidden=16),
                             research_config("resnet18", hidden=16, image_size=32))
    stack = tmp_path / "well.tif"
    tifffile.imwrite(stack, np.random.default_rng(0).integers(0, 4000, (2, 32, 32), np.uint16))
    code = (
        "import sys\n"
        "from napari_infection_clock.cli import main\n"
        f"code = main(['predict', {str(ckpt)!r}, {str(stack)!r}, '--out', "
        f"{str(tmp_path / 'o.csv')!r}, '--device', 'cpu'])\n"
        "print('exit', code, 'sklearn' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "exit 0 False" in run.stdout, (run.stdout, run.stderr)

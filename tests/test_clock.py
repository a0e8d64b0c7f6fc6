"""The per-region clock: a robust onset, its interval, and a duration that grows with time."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.clock import CLOCK_COLUMNS, fit_region, region_clocks, with_clock
from napari_infection_clock.core.evaluation import predict_items
from napari_infection_clock.core.items import Item
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.results import result_rows
from napari_infection_clock.core.stack import write_stack
from napari_infection_clock.core.synthetic import generate_stack

HOURS = np.arange(96) * 0.5


def noisy_region(onset, rng, outliers=0.0, noise=1.0, clamp=(0.0, 48.0)):
    """An infected region's frames: durations t - onset with noise and some wild frames."""
    duration = np.clip(HOURS - onset + rng.normal(0, noise, HOURS.size), *clamp)
    wild = rng.random(HOURS.size) < outliers
    duration[wild] = rng.uniform(*clamp, wild.sum())
    p = np.where(HOURS >= onset, rng.uniform(0.7, 1.0, HOURS.size), rng.uniform(0, 0.3, HOURS.size))
    return p, duration


def test_outliers_do_not_drag_the_onset():
    rng = np.random.default_rng(1)
    p, duration = noisy_region(5.0, rng, outliers=0.3)
    fit = fit_region(HOURS, p, duration)
    naive = np.mean((HOURS - duration)[p >= 0.5])  # what a mean of the votes would say
    assert abs(naive - 5.0) > 1.0
    assert fit.infected
    assert fit.onset_h == pytest.approx(5.0, abs=0.6)
    assert fit.onset_low_h <= 5.0 <= fit.onset_high_h
    assert fit.onset_high_h - fit.onset_low_h < 3.0


def test_interval_narrows_with_cleaner_frames():
    rng = np.random.default_rng(2)
    widths = []
    for noise in (0.5, 4.0):
        fit = fit_region(HOURS, *noisy_region(10.0, rng, noise=noise))
        widths.append(fit.onset_high_h - fit.onset_low_h)
    assert widths[0] < widths[1]


def test_clamped_durations_are_censored_not_votes():
    hours = np.arange(140) * 0.5  # 70 h: past the 48 h clamp, durations sit at 48
    duration = np.clip(hours - 2.0, 0, 48)
    fit = fit_region(hours, np.ones_like(hours), duration)
    assert fit.onset_h == pytest.approx(2.0, abs=1e-9)


def test_late_infection_keeps_its_onset_and_false_alarms_do_not_make_one():
    rng = np.random.default_rng(3)
    late = fit_region(HOURS, *noisy_region(30.0, rng, noise=0.5))
    assert late.infected and late.onset_h == pytest.approx(30.0, abs=0.5)

    p = np.full(HOURS.size, 0.1)
    p[[10, 40, 70]] = 0.9  # three false alarms in a mock well
    mock_time = HOURS + 1.0 + rng.normal(0, 0.5, HOURS.size)  # experiment time, 1 h late
    mock = fit_region(HOURS, p, mock_time)
    assert not mock.infected and np.isnan(mock.onset_h)
    assert mock.start_h == pytest.approx(-1.0, abs=0.3)


def table_of(regions):
    """A prediction table with one tile per region (tile col = index)."""
    parts = []
    for frame, hours in enumerate(HOURS):
        boxes = [(0, 8 * i, 8, 8 * i + 8) for i in range(len(regions))]
        grid = [(0, i) for i in range(len(regions))]
        parts.append(result_rows("well", frame, hours, boxes, grid,
                                 [r[0][frame] for r in regions], [r[1][frame] for r in regions]))
    return pd.concat(parts, ignore_index=True)


def test_table_gets_a_consistent_clock_per_region():
    rng = np.random.default_rng(4)
    infected = noisy_region(6.0, rng, outliers=0.2, noise=2.0)
    mock = (np.full(HOURS.size, 0.05), HOURS + rng.normal(0, 2.0, HOURS.size))
    table = table_of([infected, mock]).sample(frac=1.0, random_state=0)  # any row order
    out = with_clock(table)
    assert list(out.columns[-4:]) == list(CLOCK_COLUMNS)
    assert (out.index == table.index).all()
    tile0 = out[out["tile_col"] == 0].sort_values("frame")
    consistent = tile0["consistent_time_h"].to_numpy()
    steps = np.diff(consistent)
    assert np.all((steps >= 0) & (steps <= 0.5 + 1e-9))  # never more than one interval
    assert np.allclose(steps[HOURS[1:] > tile0["onset_h"].iloc[0] + 0.5], 0.5)
    truth = np.maximum(HOURS - 6.0, 0)
    raw_err = np.mean(np.abs(tile0["pred_time_h"] - truth)[HOURS >= 6])
    assert np.mean(np.abs(consistent - truth)[HOURS >= 6]) < raw_err / 2
    assert tile0["onset_h"].nunique() == 1
    tile1 = out[out["tile_col"] == 1]
    assert tile1["onset_h"].isna().all()
    mock_clock = tile1.sort_values("frame")["consistent_time_h"].to_numpy()
    assert np.allclose(np.diff(mock_clock[4:]), 0.5)  # (the first frames clamp at 0 h)
    again = with_clock(out)  # recomputing replaces, and the bootstrap is seeded
    pd.testing.assert_frame_equal(again, out)


def test_evaluate_reports_the_consistent_clock_next_to_the_raw_one():
    from napari_infection_clock.core.metrics import evaluate_table, metrics_json

    rng = np.random.default_rng(5)
    table = with_clock(table_of([noisy_region(3.0, rng, outliers=0.2, noise=2.0)]))
    table["true_class"] = 1
    table["true_time_h"] = np.clip(table["hours"] - 3.0, 0, 48)
    metrics = evaluate_table(table)
    infected = metrics["per_class"]["infected"]
    assert set(infected) == {"regression", "consistent"}
    assert set(infected["consistent"]) == set(infected["regression"])
    assert infected["consistent"]["mae"] < infected["regression"]["mae"] / 2
    assert infected["consistent"]["slope"] == pytest.approx(1.0, abs=0.02)
    assert json.loads(metrics_json(metrics))["overall"]["consistent"]["n"] == len(table)
    # A table without the clock keeps the old layout.
    plain = evaluate_table(table.drop(columns=list(CLOCK_COLUMNS)))
    assert set(plain["per_class"]["infected"]) == {"regression"}


def test_one_late_false_alarm_does_not_make_a_region_infected():
    p = np.full(HOURS.size, 0.1)
    p[-1] = 0.8  # one false alarm on the last frame, saying 0.4 h
    mock = fit_region(HOURS, p, np.where(p > 0.5, 0.4, HOURS))
    assert not mock.infected and np.isnan(mock.onset_h)
    late = p.copy()
    late[-3:] = 0.9  # three frames in a row: a late infection, kept
    fit = fit_region(HOURS, late, np.where(late > 0.5, HOURS - 46.5, HOURS))
    assert fit.infected and fit.onset_h == pytest.approx(46.5)
    single = fit_region(HOURS[:1], [0.9], [0.0])  # one frame is all the evidence there is
    assert single.infected


def test_same_named_stacks_in_two_folders_are_two_regions(tmp_path):
    items = []
    for plate, infected in (("plate1", True), ("plate2", False)):
        path = write_stack(tmp_path / plate / "well_p7.tif",
                           generate_stack(infected, seed=1, n_frames=4, size=32))
        items += [Item(str(path), f, None, int(infected), f * 0.5, f * 0.5, plate) for f in range(4)]
    config = ModelConfig("resnet18", hidden_dim=8)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=32))
    predictor = Predictor(build_model(config, init="random"), meta, device="cpu", precision="fp32")
    table = pd.concat(predict_items(predictor, items), ignore_index=True)
    assert len(region_clocks(table)) == 2  # one clock per well, not one for both

"""Calibrated probabilities and split-conformal time intervals, fitted on validation data."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_infection_clock.core.calibration import (
    ClockInterval,
    apply_calibration,
    clock_interval,
    conformal_halfwidth,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    interval_text,
    region_conformal_halfwidth,
    regions_needed,
    scaled_probability,
)
from napari_infection_clock.core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from napari_infection_clock.core.clock import with_clock
from napari_infection_clock.core.model import ModelConfig, build_model


def overconfident(n, rng, temperature=3.0):
    """Labels drawn from true probabilities, and a model that reports them too sharply."""
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-z * temperature))


def test_temperature_scaling_undoes_overconfidence_and_keeps_decisions():
    rng = np.random.default_rng(0)
    y, p = overconfident(4000, rng)
    t = fit_temperature(p, y)
    assert t == pytest.approx(3.0, rel=0.15)
    y_test, p_test = overconfident(4000, rng)
    calibrated = scaled_probability(p_test, t)
    assert np.array_equal(calibrated >= 0.5, p_test >= 0.5)
    before = expected_calibration_error(y_test, p_test)["ece"]
    after = expected_calibration_error(y_test, calibrated)["ece"]
    assert after < before / 2 and after < 0.03
    assert fit_temperature([0.9, 0.8], [1, 1]) == 1.0  # one class cannot say


def test_conformal_intervals_cover_new_items_at_their_level():
    rng = np.random.default_rng(1)
    half = conformal_halfwidth(np.abs(rng.standard_t(3, 500)), 0.9)
    covered = np.mean(np.abs(rng.standard_t(3, 20000)) <= half)
    assert 0.88 <= covered <= 0.93
    assert conformal_halfwidth([1.0, 2.0], 0.9) == np.inf  # too few errors to promise 90 %


def table(n, rng, overconfident_p=False):
    hours = rng.uniform(0, 48, n)
    true_class, p = overconfident(n, rng) if overconfident_p else (rng.integers(0, 2, n), None)
    truth = np.where(true_class == 1, np.maximum(hours - 2, 0), hours)
    noise = np.where(true_class == 1, 1.0, 4.0)  # mock times are much less sure
    return pd.DataFrame({
        "hours": hours, "true_class": true_class, "true_time_h": truth,
        "p_infected": np.where(true_class == 1, 0.9, 0.1) if p is None else p,
        "pred_time_h": truth + rng.normal(0, 1, n) * noise,
    })


def test_intervals_per_class_in_the_checkpoint_and_the_table(tmp_path):
    rng = np.random.default_rng(2)
    cal = fit_calibration(table(600, rng), level=0.9)
    widths = cal["time_halfwidth_h"]
    assert widths["uninfected"] > 2 * widths["infected"]

    config = ModelConfig("resnet18", hidden_dim=8)
    path = save_checkpoint(tmp_path / "m.pt", build_model(config, init="random"),
                           CheckpointMeta(model=config, calibration=cal))
    _, meta = load_checkpoint(path)  # weights_only=True: plain data only
    assert meta.calibration == cal

    test = apply_calibration(table(4000, rng), meta.calibration)
    inside = (test["time_low_h"] <= test["true_time_h"]) & (test["true_time_h"] <= test["time_high_h"])
    for c in (0, 1):
        assert 0.87 <= inside[test["true_class"] == c].mean() <= 0.94
    assert (test["time_low_h"] >= 0).all() and (test["time_high_h"] <= 48).all()
    assert "p_calibrated" in test and apply_calibration(test, {}) is test
    assert interval_text(7.5, 5.94, 9.06, 0.9) == "7.5 h (5.9-9.1 h, 90 %)"


def test_evaluate_reports_coverage_ece_and_a_reliability_plot(tmp_path):
    from matplotlib.image import imread

    from napari_infection_clock.core.report import save_report

    rng = np.random.default_rng(3)
    val, test = table(1000, rng, overconfident_p=True), table(2000, rng, overconfident_p=True)
    for t in (val, test):
        t["stack"], t["frame"] = "w", np.arange(len(t))
        t[["y0", "x0", "y1", "x1", "tile_row", "tile_col"]] = (0, 0, 8, 8, 0, 0)
    test = apply_calibration(test, fit_calibration(val))
    paths = save_report(test, tmp_path)
    metrics = json.loads(paths["metrics.json"].read_text())
    interval = metrics["per_class"]["infected"]["regression"]["interval"]
    assert interval["coverage"] >= 0.88 and interval["n"] == (test["true_class"] == 1).sum()
    ece = metrics["overall"]["calibration"]
    assert ece["temperature_scaled"]["ece"] < ece["raw"]["ece"]
    assert imread(paths["reliability.png"]).shape[0] > 100


def regions(n_infected, n_mock, rng, frames=96, interval_h=0.5, bias_h=2.0):
    """A labelled prediction table of whole regions (``evaluate``'s columns) with known
    onsets: each region's raw times are off by one bias of its own plus frame noise, so its
    frames' errors are strongly correlated, as on a well the model never saw."""
    parts, hours = [], np.arange(frames) * interval_h
    for r in range(n_infected + n_mock):
        infected = r < n_infected
        onset = rng.uniform(1, 10)
        truth = np.maximum(hours - onset, 0) if infected else hours
        sick = infected & (hours >= onset)
        parts.append(pd.DataFrame({
            "stack": f"well{r}", "frame": np.arange(frames), "hours": hours,
            "y0": 0, "x0": 0, "y1": 64, "x1": 64, "tile_row": 0, "tile_col": 0,
            "true_class": int(infected), "true_time_h": truth,
            "p_infected": np.where(sick, 0.95, 0.05),
            "pred_time_h": np.clip(truth + rng.normal(0, bias_h) + rng.normal(0, 0.5, frames),
                                   0, 48),
        }))
    return pd.concat(parts, ignore_index=True)


def inside(table, name):
    return ((table[f"{name}_low_h"] <= table["true_time_h"])
            & (table["true_time_h"] <= table[f"{name}_high_h"]))


def test_region_conformal_is_split_conformal_over_regions():
    rng = np.random.default_rng(4)
    errors = np.abs(rng.normal(size=40))
    # one frame per region: the plain split-conformal quantile
    assert region_conformal_halfwidth(errors, np.arange(40)) == conformal_halfwidth(errors)
    # a region's many frames count as one region, not as many items
    assert regions_needed(0.9) == 9 and regions_needed(0.8) == 4
    many = np.repeat(np.arange(8), 96)
    assert region_conformal_halfwidth(rng.random(many.size), many, 0.9) == np.inf
    assert np.isfinite(region_conformal_halfwidth(rng.random(9 * 96), np.repeat(np.arange(9), 96)))
    # each region weighs the same, however many frames it has
    long_small = np.r_[np.full(1000, 0.1), np.arange(1.0, 20.0)]
    labels = np.r_[np.zeros(1000), np.arange(1, 20)]
    assert region_conformal_halfwidth(long_small, labels, 0.9) == 18.0


def test_consistent_intervals_cover_frames_of_new_regions_at_their_level():
    """Marginal coverage over many draws of a validation set of 12 + 12 regions: at least
    the level, not far above; treating the frames as independent (what the calibration
    did before) promises the same from 2 regions and covers far less."""
    rng = np.random.default_rng(5)
    pool = with_clock(regions(600, 600, rng), n_resamples=9)
    by_region = {key: part for key, part in pool.groupby("stack")}
    names = np.array(sorted(by_region))
    infected = np.array([by_region[n]["true_class"].iloc[0] == 1 for n in names])
    coverage, frame_level = [], []
    for _ in range(150):
        pick = np.r_[rng.choice(names[infected], 12, replace=False),
                     rng.choice(names[~infected], 12, replace=False)]
        rest = np.setdiff1d(names, pick)
        test = pd.concat([by_region[n] for n in rng.choice(rest, 200, replace=False)])
        cal = fit_calibration(pd.concat([by_region[n] for n in pick]))
        assert cal["consistent"]["n_regions"] == {"infected": 12, "uninfected": 12}
        coverage.append(inside(apply_calibration(test, cal), "consistent").mean())
        few = pd.concat([by_region[n] for n in pick[:2]])  # 2 infected regions
        half = conformal_halfwidth(np.abs(few["consistent_time_h"] - few["true_time_h"]))
        sick = test[np.isfinite(test["onset_h"])]
        frame_level.append(np.mean(np.abs(sick["consistent_time_h"] - sick["true_time_h"]) <= half))
    assert 0.89 <= np.mean(coverage) <= 0.96
    assert np.mean(frame_level) < 0.8


def test_too_few_validation_regions_give_the_widest_interval_and_say_so(tmp_path):
    rng = np.random.default_rng(6)
    val = with_clock(regions(2, 1, rng), n_resamples=9)  # 1-2 wells per class, whole frames
    cal = fit_calibration(val)
    block = cal["consistent"]
    assert block["n_regions"] == {"infected": 2, "uninfected": 1}
    assert block["halfwidth_h"] == {"infected": np.inf, "uninfected": np.inf}
    state = clock_interval(cal)
    assert (state.calibrated, state.bounded) == (True, False)
    assert state.note == "unbounded: 2 validation regions, 9 needed"
    assert clock_interval(cal, "uninfected").note == "unbounded: 1 validation region, 9 needed"
    test = apply_calibration(with_clock(regions(3, 3, rng), n_resamples=9), cal)
    assert (test["consistent_low_h"] == 0).all() and (test["consistent_high_h"] == 48).all()
    # plain data: a weights_only checkpoint keeps it, infinite half-widths included
    config = ModelConfig("resnet18", hidden_dim=8)
    path = save_checkpoint(tmp_path / "m.pt", build_model(config, init="random"),
                           CheckpointMeta(model=config, calibration=cal))
    assert load_checkpoint(path)[1].calibration == cal


def test_an_older_calibration_keeps_its_intervals_and_is_said_uncalibrated():
    rng = np.random.default_rng(7)
    table = with_clock(regions(2, 2, rng), n_resamples=9)
    old = {"temperature": 1.0, "level": 0.9,
           "time_halfwidth_h": {"infected": 1.0, "uninfected": 3.0},
           "consistent_halfwidth_h": {"infected": 0.5, "uninfected": 2.0}}
    out = apply_calibration(table, old)
    sick = np.isfinite(out["onset_h"])
    np.testing.assert_allclose(out["consistent_high_h"][sick],
                               np.clip(out["consistent_time_h"][sick] + 0.5, 0, 48))
    assert clock_interval(old) == ClockInterval(calibrated=False, bounded=True, note="uncalibrated")
    assert not clock_interval({}).calibrated


def test_evaluate_reports_the_consistent_clocks_coverage_and_how_it_was_made(tmp_path):
    from napari_infection_clock.core.report import save_report

    rng = np.random.default_rng(8)
    cal = fit_calibration(with_clock(regions(30, 30, rng), n_resamples=9))
    test = apply_calibration(with_clock(regions(20, 20, rng), n_resamples=9), cal)
    metrics = json.loads(save_report(test, tmp_path, calibration=cal)["metrics.json"].read_text())
    interval = metrics["per_class"]["infected"]["consistent"]["interval"]
    sick = test["true_class"] == 1
    assert interval["coverage"] == pytest.approx(inside(test, "consistent")[sick].mean())
    assert interval["calibrated"] is True and interval["n_regions"] == 30
    assert interval["halfwidth_h"] == pytest.approx(cal["consistent"]["halfwidth_h"]["infected"])
    assert "regions" in interval["method"] and interval["note"] == ""
    assert metrics["overall"]["consistent"]["interval"]["calibrated"] is True
    # too few regions: the widest interval, its half-width null in JSON, and why
    few = fit_calibration(with_clock(regions(1, 1, rng), n_resamples=9))
    metrics = json.loads(save_report(apply_calibration(test, few), tmp_path / "few",
                                     calibration=few)["metrics.json"].read_text())
    interval = metrics["per_class"]["infected"]["consistent"]["interval"]
    assert interval["coverage"] == 1.0 and interval["halfwidth_h"] is None
    assert interval["note"] == "unbounded: 1 validation region, 9 needed"

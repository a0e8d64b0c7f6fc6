"""Calibrated probabilities and split-conformal time intervals, fitted on validation data."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_infection_clock.core.calibration import (
    apply_calibration,
    conformal_halfwidth,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    interval_text,
    scaled_probability,
)
from napari_infection_clock.core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
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

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from napari_infection_clock.core.metrics import (
    classification_metrics,
    evaluate_table,
    metrics_json,
    per_bin_table,
    regression_metrics,
    roc_curve_points,
)
from napari_infection_clock.core.results import RESULT_COLUMNS, TRUTH_COLUMNS

# Hand-made example: 8 items, threshold 0.5.
Y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
P = np.array([0.9, 0.8, 0.4, 0.3, 0.6, 0.1, 0.7, 0.2])
# predictions:  1    1    0    0    1    0    1    0  -> tp=3 fn=1 fp=1 tn=3


def labelled_table(n=40, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hours = rng.uniform(0, 24, n)
    true_class = rng.integers(0, 2, n)
    p = np.clip(true_class * 0.6 + rng.uniform(0, 0.4, n), 0, 1)
    true_t = np.where(true_class == 1, np.maximum(hours - 1, 0), hours)
    df = pd.DataFrame({c: 0 for c in RESULT_COLUMNS}, index=range(n))
    df["hours"] = hours
    df["p_infected"] = p
    df["pred_time_h"] = true_t + rng.normal(0, 1, n)
    df["true_class"] = true_class
    df["true_time_h"] = true_t
    return df


def test_classification_hand_computed():
    m = classification_metrics(Y, P)
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    assert (m["n"], m["n_infected"], m["n_uninfected"]) == (8, 4, 4)
    # AUC = fraction of (positive, negative) pairs ranked correctly.
    pos, neg = P[Y == 1], P[Y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean()
    assert m["roc_auc"] == pytest.approx(pairs)


def test_threshold_changes_predictions():
    m = classification_metrics(Y, P, threshold=0.35)
    # 0.4 now infected (tp), 0.3 still not: tp=4, fp=1, tn=3
    assert m["confusion_matrix"] == [[3, 1], [0, 4]]


def test_one_class_auc_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics([1, 1, 1], [0.9, 0.2, 0.7])
        roc = roc_curve_points([1, 1, 1], [0.9, 0.2, 0.7])
    assert math.isnan(m["roc_auc"])
    assert m["confusion_matrix"] == [[0, 0], [1, 2]]
    assert roc == {"fpr": [], "tpr": [], "thresholds": []}


def test_roc_points_are_finite_and_span_corners():
    roc = roc_curve_points(Y, P)
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0
    assert roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    assert all(math.isfinite(t) for t in roc["thresholds"])
    json.dumps(roc)


def test_regression_hand_computed():
    t = np.array([0.0, 2.0, 4.0, 6.0, 10.0])
    pred = np.array([1.0, 1.5, 5.0, 6.0, 8.0])
    m = regression_metrics(t, pred)
    err = pred - t
    assert m["mae"] == pytest.approx(np.mean(np.abs(err)))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert m["r2"] == pytest.approx(1 - np.sum(err**2) / np.sum((t - t.mean()) ** 2))
    assert m["pearson_r"] == pytest.approx(np.corrcoef(t, pred)[0, 1])
    slope, intercept = np.polyfit(t, pred, 1)
    assert m["slope"] == pytest.approx(slope)
    assert m["intercept"] == pytest.approx(intercept)
    assert m["n"] == 5


def test_regression_perfect_line():
    x = np.arange(10.0)
    m = regression_metrics(x, 2 * x + 1)
    assert m["slope"] == pytest.approx(2.0)
    assert m["intercept"] == pytest.approx(1.0)
    assert m["pearson_r"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "t, pred",
    [([], []), ([3.0], [4.0]), ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]), ([1.0, np.nan], [1.0, 2.0])],
)
def test_regression_degenerate_is_nan_not_error(t, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = regression_metrics(t, pred)
    assert math.isnan(m["slope"]) and math.isnan(m["pearson_r"]) and math.isnan(m["r2"])


def test_regression_ignores_nan_pairs():
    m = regression_metrics([0.0, 1.0, np.nan, 3.0], [0.0, 2.0, 5.0, np.nan])
    assert m["n"] == 2
    assert m["mae"] == pytest.approx(0.5)


def test_evaluate_per_class_split_by_true_class():
    df = labelled_table()
    m = evaluate_table(df)
    for cls, name in ((1, "infected"), (0, "uninfected")):
        sub = df[df["true_class"] == cls]
        reg = m["per_class"][name]["regression"]
        assert reg["n"] == len(sub)
        assert reg["mae"] == pytest.approx(np.mean(np.abs(sub["pred_time_h"] - sub["true_time_h"])))
    assert m["overall"]["regression"]["n"] == len(df)
    assert m["overall"]["classification"]["n"] == len(df)


def test_per_bin_edges_and_counts():
    df = labelled_table()
    df.loc[0, "hours"] = 0.0  # first bin starts at 0
    df.loc[1, "hours"] = 18.0  # exactly on an edge: belongs to [18, 24)
    bins = per_bin_table(df, bin_hours=6.0)
    assert list(bins["bin_start_h"]) == [0.0, 6.0, 12.0, 18.0]
    assert list(bins["bin_end_h"]) == [6.0, 12.0, 18.0, 24.0]
    expected = np.bincount(np.floor(df["hours"] / 6).astype(int), minlength=4)
    assert list(bins["n"]) == list(expected)
    assert bins["n"].sum() == len(df)
    first = df[df["hours"] < 6]
    assert bins.loc[0, "mae"] == pytest.approx(np.mean(np.abs(first["pred_time_h"] - first["true_time_h"])))
    assert evaluate_table(df, bin_hours=6.0)["per_bin"] == bins.to_dict("records")


def test_per_bin_keeps_empty_middle_bin():
    df = labelled_table(n=4)
    df["hours"] = [0.5, 1.0, 13.0, 14.0]
    bins = per_bin_table(df, bin_hours=6.0)
    assert list(bins["n"]) == [2, 0, 2]
    assert math.isnan(bins.loc[1, "mae"])


def test_whole_result_is_json_and_nan_becomes_null():
    df = labelled_table()
    df["true_class"] = 1  # one class: AUC undefined
    m = evaluate_table(df)
    json.dumps(m)  # plain Python numbers throughout (NaN allowed by the default encoder)
    back = json.loads(metrics_json(m))
    assert back["overall"]["classification"]["roc_auc"] is None
    assert back["overall"]["classification"]["confusion_matrix"] == m["overall"]["classification"]["confusion_matrix"]
    assert back["overall"]["regression"]["mae"] == pytest.approx(m["overall"]["regression"]["mae"])
    assert back["per_class"]["uninfected"]["regression"]["mae"] is None
    assert "NaN" not in metrics_json(m)


def test_missing_truth_columns_error():
    df = labelled_table().drop(columns=list(TRUTH_COLUMNS))
    with pytest.raises(ValueError, match="true_class.*true_time_h") as err:
        evaluate_table(df)
    assert "evaluate" in str(err.value)


def test_empty_table_gives_nan_metrics():
    m = evaluate_table(labelled_table().iloc[:0])
    assert m["overall"]["classification"]["n"] == 0
    assert math.isnan(m["overall"]["regression"]["mae"])
    assert m["per_bin"] == []

"""SPEC 7 metrics: classification, time regression, per class and per time bin.

Every function returns plain Python numbers and lists so results are JSON-ready; metrics
that are undefined for the data at hand (one class, fewer than two points, constant
inputs) are NaN rather than an exception, because small or one-sided evaluation sets
(a single mock stack, one time bin) are normal, not errors.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .calibration import clock_interval, expected_calibration_error
from .clock import CONSISTENT_COLUMN
from .information import lacks_information
from .results import TRUTH_COLUMNS
from .targets import CLASS_NAMES, INFECTED, UNINFECTED

NAN = float("nan")

#: Columns ``evaluate_table`` reads: predictions, experiment time and the truth.
REQUIRED_COLUMNS = ("hours", "p_infected", "pred_time_h", *TRUTH_COLUMNS)

#: Scalar metrics copied into each per-bin row, in order.
_BIN_CLS = ("n_infected", "n_uninfected", "accuracy", "precision", "recall", "f1", "roc_auc")
_BIN_REG = ("mae", "rmse", "r2", "pearson_r", "slope", "intercept")
PER_BIN_COLUMNS = ("bin_start_h", "bin_end_h", "n", *_BIN_CLS, *_BIN_REG)


def _finite_pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both as float arrays, keeping only positions where both are finite (unlabelled or
    failed rows carry NaN and must not count)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def _both_classes(y_true: np.ndarray) -> bool:
    return bool(np.any(y_true == INFECTED) and np.any(y_true == UNINFECTED))


def classification_metrics(y_true, p_infected, threshold: float = 0.5) -> dict:
    """Infected-vs-mock metrics at ``threshold`` (p >= threshold is infected, as in results),
    on the rows where both the truth and the probability are known."""
    y_true, p = _finite_pairs(y_true, p_infected)
    y_true = y_true.astype(np.int64)
    from sklearn import metrics as skm  # here: prediction imports this module, needs no sklearn

    y_pred = (p >= threshold).astype(np.int64)
    n = int(y_true.size)
    out = {
        "n": n,
        "n_infected": int(np.sum(y_true == INFECTED)),
        "n_uninfected": int(np.sum(y_true == UNINFECTED)),
        "threshold": float(threshold),
    }
    if n == 0:
        out.update(accuracy=NAN, precision=NAN, recall=NAN, f1=NAN, roc_auc=NAN,
                   confusion_matrix=[[0, 0], [0, 0]])
        return out
    # zero_division=nan: a precision with no predicted positives is undefined, not 0.
    kw = dict(labels=[UNINFECTED, INFECTED], pos_label=INFECTED, zero_division=np.nan)
    out["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
    out["precision"] = float(skm.precision_score(y_true, y_pred, **kw))
    out["recall"] = float(skm.recall_score(y_true, y_pred, **kw))
    out["f1"] = float(skm.f1_score(y_true, y_pred, **kw))
    out["roc_auc"] = float(skm.roc_auc_score(y_true, p)) if _both_classes(y_true) else NAN
    cm = skm.confusion_matrix(y_true, y_pred, labels=[UNINFECTED, INFECTED])
    out["confusion_matrix"] = [[int(v) for v in row] for row in cm]
    return out


def roc_curve_points(y_true, p_infected) -> dict:
    """ROC curve as lists; empty when the data holds only one class (no curve exists)."""
    from sklearn.metrics import roc_curve

    y_true, p = _finite_pairs(y_true, p_infected)
    if not _both_classes(y_true):
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thr = roc_curve(y_true, p, pos_label=INFECTED)
    # sklearn's first threshold is +inf, which JSON cannot hold: cap it just above max(p).
    thr = np.where(np.isfinite(thr), thr, np.nextafter(p.max(), np.inf))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}


def regression_metrics(t_true, t_pred) -> dict:
    """Predicted vs true hours on the finite pairs; slope ~1 and intercept ~0 mean unbiased."""
    x, y = _finite_pairs(t_true, t_pred)
    n = int(x.size)
    out = dict(n=n, mae=NAN, rmse=NAN, r2=NAN, pearson_r=NAN, slope=NAN, intercept=NAN)
    if n == 0:
        return out
    err = y - x
    out["mae"] = float(np.mean(np.abs(err)))
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    x_varies = n >= 2 and np.ptp(x) > 0
    if x_varies:
        from scipy import stats  # imported when used: the Evaluate dock opens without it
        from sklearn.metrics import r2_score

        out["r2"] = float(r2_score(x, y))
        fit = stats.linregress(x, y)
        out["slope"], out["intercept"] = float(fit.slope), float(fit.intercept)
        if np.ptp(y) > 0:
            out["pearson_r"] = float(fit.rvalue)
    return out


def interval_metrics(t_true, low, high) -> dict:
    """Empirical coverage and mean width of intervals, on rows where all three are known."""
    t = np.asarray(t_true, dtype=np.float64)
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(lo) & np.isfinite(hi)
    n = int(ok.sum())
    if n == 0:
        return {"n": 0, "coverage": NAN, "mean_width_h": NAN}
    inside = (lo[ok] <= t[ok]) & (t[ok] <= hi[ok])
    return {"n": n, "coverage": float(inside.mean()), "mean_width_h": float(np.mean(hi[ok] - lo[ok]))}


def _time_metrics(df: pd.DataFrame, column: str, interval: str) -> dict:
    """Regression metrics of one time column, with its intervals' coverage when present."""
    out = regression_metrics(df["true_time_h"], df[column])
    if f"{interval}_low_h" in df.columns:
        out["interval"] = interval_metrics(
            df["true_time_h"], df[f"{interval}_low_h"], df[f"{interval}_high_h"])
    return out


def _check_table(df: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"prediction table lacks column(s) {', '.join(missing)}; metrics need the truth "
            f"({', '.join(TRUTH_COLUMNS)}): predict on labelled data / use evaluate"
        )


def _row_metrics(df: pd.DataFrame, threshold: float) -> tuple[dict, dict]:
    cls = classification_metrics(df["true_class"], df["p_infected"], threshold)
    reg = regression_metrics(df["true_time_h"], df["pred_time_h"])
    return cls, reg


def per_bin_table(df: pd.DataFrame, bin_hours: float = 6.0, threshold: float = 0.5) -> pd.DataFrame:
    """Metrics per experiment-time bin ``[k*bin, (k+1)*bin)`` from ``hours``; empty bins
    between the first and last occupied one are kept (n = 0) so the time axis is regular."""
    _check_table(df)
    if not bin_hours > 0:
        raise ValueError(f"bin_hours must be positive, got {bin_hours!r}")
    hours = pd.to_numeric(df["hours"], errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(hours)
    if not finite.any():
        return pd.DataFrame(columns=list(PER_BIN_COLUMNS))
    k = np.floor(hours / bin_hours)
    rows = []
    for b in range(int(k[finite].min()), int(k[finite].max()) + 1):
        cls, reg = _row_metrics(df[k == b], threshold)
        row = {"bin_start_h": b * bin_hours, "bin_end_h": (b + 1) * bin_hours, "n": cls["n"]}
        row.update({m: cls[m] for m in _BIN_CLS})
        row.update({m: reg[m] for m in _BIN_REG})
        rows.append(row)
    return pd.DataFrame(rows, columns=list(PER_BIN_COLUMNS))


def _plain(value):
    """numpy scalars -> Python numbers, so the metrics dict serialises as is."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def evaluate_table(df: pd.DataFrame, *, bin_hours: float = 6.0, threshold: float = 0.5,
                   calibration: dict | None = None) -> dict:
    """All SPEC 7 metrics of a labelled prediction table. The class comes from thresholding
    ``p_infected`` (not ``pred_class``) so a different threshold can be evaluated; per-class
    regression splits rows by their TRUE class.

    A table with the per-region clock (``consistent_time_h``, :mod:`.clock`) also gets a
    ``consistent`` block, the same regression metrics of the consistent times, next to
    every ``regression`` block; a table with calibrated intervals (:mod:`.calibration`)
    gets their empirical ``coverage`` in each block, and ``calibration`` holds the ECE and
    reliability curve of the raw (and temperature-scaled) probabilities. Given the model's
    ``calibration``, each ``consistent`` block's interval also says how it was made
    (:func:`.calibration.clock_interval`: calibrated over validation regions or not, the
    half-width and how many regions it came from). Items without
    information (:mod:`.information`) have no answer to score: they are left out, and
    ``n_no_information`` counts them."""
    _check_table(df)
    missing = lacks_information(df)
    df = df[~missing]
    cls, _ = _row_metrics(df, threshold)
    cls["roc_curve"] = roc_curve_points(df["true_class"], df["p_infected"])
    true_class = pd.to_numeric(df["true_class"], errors="coerce").to_numpy()
    columns = {"regression": ("pred_time_h", "time")}
    if CONSISTENT_COLUMN in df.columns:
        columns["consistent"] = (CONSISTENT_COLUMN, "consistent")
    per_class = {
        CLASS_NAMES[c]: {
            block: _time_metrics(df[true_class == c], *cols) for block, cols in columns.items()
        }
        for c in (INFECTED, UNINFECTED)
    }
    overall = {"classification": cls}
    overall.update({block: _time_metrics(df, *cols) for block, cols in columns.items()})
    if calibration is not None:
        _describe_clock_intervals(overall, per_class, calibration)
    overall["calibration"] = {"raw": expected_calibration_error(df["true_class"], df["p_infected"])}
    if "p_calibrated" in df.columns:
        overall["calibration"]["temperature_scaled"] = expected_calibration_error(
            df["true_class"], df["p_calibrated"])
    bins = per_bin_table(df, bin_hours, threshold)
    per_bin = [{k: _plain(v) for k, v in row.items()} for row in bins.to_dict("records")]
    return {
        "bin_hours": float(bin_hours),
        "overall": overall,
        "per_class": per_class,
        "per_bin": per_bin,
        "n_no_information": int(missing.sum()),
    }


def _describe_clock_intervals(overall: dict, per_class: dict, calibration: dict) -> None:
    """Next to each ``consistent`` coverage: how its intervals were made (per class: the
    half-width and the validation regions behind it)."""
    block = calibration.get("consistent", {})
    for name, metrics in [(None, overall), *per_class.items()]:
        interval = metrics.get("consistent", {}).get("interval")
        if interval is None:
            continue
        state = clock_interval(calibration, name or CLASS_NAMES[INFECTED])
        interval["calibrated"] = state.calibrated
        interval["method"] = block.get("method", "split conformal over frames taken as "
                                       "independent (calibrated before regions were)")
        if name is None:
            continue
        interval["note"] = state.note
        if block:
            interval["halfwidth_h"] = block["halfwidth_h"][name]
            interval["n_regions"] = block["n_regions"][name]


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    obj = _plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def metrics_json(metrics: dict) -> str:
    """Strict JSON (NaN/inf written as null, which every JSON reader accepts)."""
    return json.dumps(_nan_to_none(metrics), indent=2, allow_nan=False)

"""How sure each answer is: probabilities and time intervals calibrated on validation data.

- Probabilities: temperature scaling (Guo et al. 2017). The two-class softmax is a sigmoid
  of the logit difference ``logit(p)``; dividing it by one temperature fitted by maximum
  likelihood on validation items keeps every decision (p = 0.5 stays 0.5) and makes
  "p = 0.8" mean right about 80 % of the time.
- Times: split conformal prediction. The absolute errors on validation items, per class
  (predicted class for the raw time, the region's class for the clock), give one half-width
  whose ``level`` quantile guarantees that coverage on exchangeable new items is at least
  ``level``: "7.5 h (5.9-9.1 h, 90 %)".

The result is plain data stored in the checkpoint (``CheckpointMeta.calibration``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize, special

from .clock import CONSISTENT_COLUMN, with_clock
from .novelty import add_novelty
from .targets import CLASS_NAMES, DEFAULT_CLAMP, INFECTED

DEFAULT_LEVEL = 0.9
#: Columns :func:`apply_calibration` adds (the consistent pair only to a table with a clock).
INTERVAL_COLUMNS = ("time_low_h", "time_high_h", "consistent_low_h", "consistent_high_h")
_P_EPS = 1e-7


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _P_EPS, 1 - _P_EPS)
    return special.logit(p)


def fit_temperature(p_infected, true_class) -> float:
    """The temperature minimising the validation negative log-likelihood (1.0 if the data
    cannot say: empty or one class only)."""
    z = logit(p_infected)
    y = np.asarray(true_class, dtype=np.float64)
    ok = np.isfinite(z) & np.isfinite(y)
    z, y = z[ok], y[ok]
    if z.size == 0 or y.min() == y.max():
        return 1.0

    def nll(log_t):
        s = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0, s) - y * s))

    res = optimize.minimize_scalar(nll, bounds=(math.log(0.01), math.log(100.0)), method="bounded")
    return float(math.exp(res.x))


def scaled_probability(p_infected, temperature: float) -> np.ndarray:
    return special.expit(logit(p_infected) / temperature)


def conformal_halfwidth(abs_errors, level: float = DEFAULT_LEVEL) -> float:
    """The split-conformal quantile: the ``ceil((n + 1) level)``-th smallest error; infinite
    when there are too few errors for that level (an honest "cannot say")."""
    e = np.sort(np.asarray(abs_errors, dtype=np.float64)[np.isfinite(abs_errors)])
    k = math.ceil((e.size + 1) * level)
    return float(e[k - 1]) if 0 < k <= e.size else math.inf


def expected_calibration_error(true_class, p_infected, n_bins: int = 10) -> dict:
    """ECE over ``n_bins`` equal-width bins of p, and the reliability curve behind it."""
    y = np.asarray(true_class, dtype=np.float64)
    p = np.asarray(p_infected, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_p = np.bincount(which, p, n_bins) / count
        frac = np.bincount(which, y, n_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(frac[filled] - mean_p[filled])) / max(y.size, 1))
    return {"ece": ece if y.size else math.nan, "n_bins": n_bins, "count": count.tolist(),
            "mean_p": mean_p.tolist(), "fraction_infected": frac.tolist()}


def _halfwidths(table, time_column, by, level) -> dict[str, float]:
    err = np.abs(table[time_column].to_numpy(np.float64) - table["true_time_h"].to_numpy(np.float64))
    return {CLASS_NAMES[c]: conformal_halfwidth(err[by == c], level) for c in (0, 1)}


def fit_calibration(table: pd.DataFrame, level: float = DEFAULT_LEVEL) -> dict:
    """Calibration from a labelled validation table (``evaluate``'s columns, with the clock
    of :mod:`.clock` if consistent intervals are wanted), as checkpoint-ready plain data."""
    p = table["p_infected"].to_numpy(np.float64)
    out = {
        "method": "temperature scaling; split conformal absolute errors per class",
        "level": float(level),
        "n_validation": int(len(table)),
        "temperature": fit_temperature(p, table["true_class"]),
        "time_halfwidth_h": _halfwidths(table, "pred_time_h", (p >= 0.5).astype(int), level),
    }
    if CONSISTENT_COLUMN in table.columns:
        region = np.isfinite(table["onset_h"].to_numpy(np.float64)).astype(int)
        out["consistent_halfwidth_h"] = _halfwidths(table, CONSISTENT_COLUMN, region, level)
    return out


def apply_calibration(table: pd.DataFrame, calibration: dict, clamp=DEFAULT_CLAMP) -> pd.DataFrame:
    """``table`` with ``p_calibrated`` and the interval columns of a stored calibration
    (nothing added when ``calibration`` is empty: an uncalibrated model claims no interval).
    Items flagged ``out_of_distribution`` (core.novelty) get none: NaN, not a confident answer."""
    if not calibration or "temperature" not in calibration:
        return table
    out = table.copy()
    p = out["p_infected"].to_numpy(np.float64)
    out["p_calibrated"] = scaled_probability(p, calibration["temperature"])
    pairs = [("time", "pred_time_h", "time_halfwidth_h", p >= 0.5)]
    if CONSISTENT_COLUMN in out.columns and "consistent_halfwidth_h" in calibration:
        pairs.append(("consistent", CONSISTENT_COLUMN, "consistent_halfwidth_h",
                      np.isfinite(out["onset_h"].to_numpy(np.float64))))
    for name, column, key, infected in pairs:
        widths = calibration[key]
        half = np.where(infected, widths[CLASS_NAMES[INFECTED]], widths[CLASS_NAMES[0]])
        centre = out[column].to_numpy(np.float64)
        out[f"{name}_low_h"] = np.clip(centre - half, *clamp)
        out[f"{name}_high_h"] = np.clip(centre + half, *clamp)
    if "out_of_distribution" in out:
        unknown = out["out_of_distribution"].to_numpy(bool)
        blank = ["p_calibrated", *(c for c in INTERVAL_COLUMNS if c in out)]
        out.loc[unknown, blank] = np.nan
    return out


def interval_text(value: float, low: float, high: float, level: float) -> str:
    """"7.5 h (5.9-9.1 h, 90 %)", the way the table and the viewer state a time."""
    return f"{value:.1f} h ({low:.1f}-{high:.1f} h, {level * 100:.0f} %)"


def finish_table(table: pd.DataFrame, meta, stack=None) -> pd.DataFrame:
    """A whole prediction table as users get it: with ``stack``, each item's novelty
    (:mod:`.novelty`, when the checkpoint has a novelty model); the regions' clocks
    (:mod:`.clock`); the checkpoint's calibrated probabilities and intervals, if any."""
    clamp = meta.time.clamp
    if stack is not None:
        table = add_novelty(table, stack, meta.calibration.get("novelty", {}))
    return apply_calibration(with_clock(table, clamp=clamp), meta.calibration, clamp)

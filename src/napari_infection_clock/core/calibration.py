"""How sure each answer is: probabilities and time intervals calibrated on validation data.

- Probabilities: temperature scaling (Guo et al. 2017). The two-class softmax is a sigmoid
  of the logit difference ``logit(p)``; dividing it by one temperature fitted by maximum
  likelihood on validation items keeps every decision (p = 0.5 stays 0.5) and makes
  "p = 0.8" mean right about 80 % of the time.
- Times: split conformal prediction. The absolute errors on validation items, per
  predicted class, give one half-width whose ``level`` quantile guarantees that coverage on
  exchangeable new items is at least ``level``: "7.5 h (5.9-9.1 h, 90 %)".
- The consistent clock: its frames are not exchangeable items. A region's consistent times
  all follow one fitted onset, so their errors are nearly one number per region, and the
  frames of one validation well say about as much as one frame. Its half-width is split
  conformal over validation *regions* (hierarchical conformal prediction, Lee, Barber &
  Willett 2023, "Distribution-free inference with hierarchical data"), per region class:
  each of the n regions weighs 1/(n + 1), shared equally by its frames, the new region's
  1/(n + 1) sits at +inf, and the ``level`` quantile of that distribution covers a frame of
  a new exchangeable region with probability at least ``level`` however correlated its
  frames are. Fewer than ``level / (1 - level)`` regions (9 at 90 %) cannot promise that:
  the half-width is then infinite and the interval the whole clamp range, said as
  "unbounded". Checkpoints calibrated before this (``consistent_halfwidth_h``, frames
  taken as independent) keep their intervals, said to be uncalibrated.

The result is plain data stored in the checkpoint (``CheckpointMeta.calibration``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .clock import CONSISTENT_COLUMN, REGION_KEYS, with_clock
from .novelty import add_novelty
from .targets import CLASS_NAMES, DEFAULT_CLAMP, INFECTED

DEFAULT_LEVEL = 0.9
#: Columns :func:`apply_calibration` adds (the consistent pair only to a table with a clock).
INTERVAL_COLUMNS = ("time_low_h", "time_high_h", "consistent_low_h", "consistent_high_h")
_P_EPS = 1e-7
#: What ``fit_calibration`` stores about the consistent clock's intervals.
REGION_METHOD = ("split conformal over validation regions per region class: |consistent - "
                 "true| per frame, each region weighing 1/(n + 1) shared by its frames "
                 "(hierarchical conformal, Lee, Barber & Willett 2023)")


def logit(p) -> np.ndarray:
    from scipy import special  # scipy's modules load when used: a dock opens without them

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

    from scipy import optimize

    res = optimize.minimize_scalar(nll, bounds=(math.log(0.01), math.log(100.0)), method="bounded")
    return float(math.exp(res.x))


def scaled_probability(p_infected, temperature: float) -> np.ndarray:
    from scipy import special

    return special.expit(logit(p_infected) / temperature)


def conformal_halfwidth(abs_errors, level: float = DEFAULT_LEVEL) -> float:
    """The split-conformal quantile: the ``ceil((n + 1) level)``-th smallest error; infinite
    when there are too few errors for that level (an honest "cannot say")."""
    e = np.sort(np.asarray(abs_errors, dtype=np.float64)[np.isfinite(abs_errors)])
    k = math.ceil((e.size + 1) * level)
    return float(e[k - 1]) if 0 < k <= e.size else math.inf


def regions_needed(level: float = DEFAULT_LEVEL) -> int:
    """Validation regions a class needs for a finite region-conformal bound at ``level``."""
    return math.ceil(level / (1 - level) - 1e-9)


def region_conformal_halfwidth(abs_errors, regions, level: float = DEFAULT_LEVEL) -> float:
    """The hierarchical split-conformal quantile (module docstring): the smallest error at
    which the regions' equal shares, split over their frames, reach ``level`` with the new
    region's share at +inf; infinite with fewer than :func:`regions_needed` regions.
    ``regions``: one label per error (rows with a non-finite error are left out)."""
    e = np.asarray(abs_errors, dtype=np.float64)
    ok = np.isfinite(e)
    if not ok.any():
        return math.inf
    codes = np.unique(np.asarray(regions)[ok], return_inverse=True)[1].ravel()
    sizes = np.bincount(codes)
    weight = 1.0 / ((sizes.size + 1) * sizes[codes])
    order = np.argsort(e[ok], kind="stable")
    reached = np.cumsum(weight[order]) >= level - 1e-12
    return float(e[ok][order][np.argmax(reached)]) if reached.any() else math.inf


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
        out["consistent"] = _region_halfwidths(table, level)
    return out


def _region_halfwidths(table: pd.DataFrame, level: float) -> dict:
    """The consistent clock's half-width per region class (infected: the clock fitted an
    onset), from the validation regions of that class (module docstring)."""
    err = np.abs(table[CONSISTENT_COLUMN].to_numpy(np.float64)
                 - table["true_time_h"].to_numpy(np.float64))
    region = table.groupby(list(REGION_KEYS), sort=False, dropna=False).ngroup().to_numpy()
    infected = np.isfinite(table["onset_h"].to_numpy(np.float64))
    out = {"method": REGION_METHOD, "halfwidth_h": {}, "n_regions": {},
           "regions_needed": regions_needed(level)}
    for c in (0, 1):
        rows = (infected == bool(c)) & np.isfinite(err)
        out["halfwidth_h"][CLASS_NAMES[c]] = region_conformal_halfwidth(
            err[rows], region[rows], level)
        out["n_regions"][CLASS_NAMES[c]] = int(np.unique(region[rows]).size)
    return out


@dataclass(frozen=True)
class ClockInterval:
    """What a calibration's intervals on the consistent clock are, for the fronts to say:
    ``calibrated`` over validation regions, ``bounded`` (a finite half-width for infected
    regions) and ``note``, the words that go with the interval ("" when both hold)."""

    calibrated: bool
    bounded: bool
    note: str


def clock_interval(calibration: dict, class_name: str = CLASS_NAMES[INFECTED]) -> ClockInterval:
    """How a checkpoint's consistent-clock intervals of ``class_name`` regions stand."""
    block = (calibration or {}).get("consistent")
    if block is None:  # older: frames as independent, or no calibration at all
        return ClockInterval(False, "consistent_halfwidth_h" in (calibration or {}),
                             "uncalibrated")
    n, needed = block["n_regions"][class_name], block["regions_needed"]
    if not math.isfinite(block["halfwidth_h"][class_name]):
        return ClockInterval(True, False, f"unbounded: {n} validation "
                             f"region{'s' if n != 1 else ''}, {needed} needed")
    return ClockInterval(True, True, "")


def apply_calibration(table: pd.DataFrame, calibration: dict, clamp=DEFAULT_CLAMP) -> pd.DataFrame:
    """``table`` with ``p_calibrated`` and the interval columns of a stored calibration
    (nothing added when ``calibration`` is empty: an uncalibrated model claims no interval).
    Items flagged ``out_of_distribution`` (core.novelty) get none: NaN, not a confident answer."""
    if not calibration or "temperature" not in calibration:
        return table
    out = table.copy()
    p = out["p_infected"].to_numpy(np.float64)
    out["p_calibrated"] = scaled_probability(p, calibration["temperature"])
    pairs = [("time", "pred_time_h", calibration["time_halfwidth_h"], p >= 0.5)]
    clock = (calibration["consistent"]["halfwidth_h"] if "consistent" in calibration
             else calibration.get("consistent_halfwidth_h"))  # older: frames as independent
    if CONSISTENT_COLUMN in out.columns and clock is not None:
        pairs.append(("consistent", CONSISTENT_COLUMN, clock,
                      np.isfinite(out["onset_h"].to_numpy(np.float64))))
    for name, column, widths, infected in pairs:
        half = np.where(infected, widths[CLASS_NAMES[INFECTED]], widths[CLASS_NAMES[0]])
        centre = out[column].to_numpy(np.float64)
        out[f"{name}_low_h"] = np.clip(centre - half, *clamp)
        out[f"{name}_high_h"] = np.clip(centre + half, *clamp)
    if "out_of_distribution" in out:
        unknown = out["out_of_distribution"].to_numpy(bool)
        blank = ["p_calibrated", *(c for c in INTERVAL_COLUMNS if c in out)]
        out.loc[unknown, blank] = np.nan
    return out


def interval_text(value: float, low: float, high: float, level: float, note: str = "") -> str:
    """"7.5 h (5.9-9.1 h, 90 %)", the way the table and the viewer state a time; ``note``
    (e.g. "uncalibrated") goes after the level."""
    after = f", {note}" if note else ""
    return f"{value:.1f} h ({low:.1f}-{high:.1f} h, {level * 100:.0f} %{after})"


def finish_table(table: pd.DataFrame, meta, stack=None) -> pd.DataFrame:
    """A whole prediction table as users get it: with ``stack``, each item's novelty
    (:mod:`.novelty`, when the checkpoint has a novelty model); the regions' clocks
    (:mod:`.clock`); the checkpoint's calibrated probabilities and intervals, if any."""
    clamp = meta.time.clamp
    if stack is not None:
        table = add_novelty(table, stack, meta.calibration.get("novelty", {}))
    return apply_calibration(with_clock(table, clamp=clamp), meta.calibration, clamp)

"""Per-frame summaries of a prediction table, and the onset they imply (no Qt here).

The plot dock draws these; keeping them apart makes the numbers testable and the CSV
export the same numbers the plot shows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.calibration import INTERVAL_COLUMNS, ClockInterval, interval_text
from ..core.clock import CLOCK_COLUMNS, RegionClock, fit_region
from ..core.information import lacks_information
from ..core.targets import INFECTED

SUMMARY_COLUMNS = ("frame", "hours", "mean_p_infected", "fraction_infected", "median_duration_h")
#: Bootstrap resamples of the whole image's onset interval, fitted on the GUI thread (5x fewer
#: than core.clock's default: 8 vs 31 ms for 96 frames here; the interval is a display).
ESTIMATE_RESAMPLES = 199


def frame_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per predicted frame: mean probability, fraction infected, median duration.

    The duration is the median predicted time over the items classified infected (the
    time output means infection duration only for those); NaN where none is. Items
    without information (core.information) are left out, and frames with nothing else.
    """
    table = table[~lacks_information(table)]
    if table.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    infected = table["pred_class"].to_numpy() == INFECTED
    work = pd.DataFrame(
        {
            "frame": table["frame"].to_numpy(int),
            "hours": table["hours"].to_numpy(float),
            "p": table["p_infected"].to_numpy(float),
            "infected": infected.astype(float),
            "duration": np.where(infected, table["pred_time_h"].to_numpy(float), np.nan),
        }
    )
    grouped = work.groupby("frame", sort=True)
    return pd.DataFrame(
        {
            "frame": grouped["frame"].first().to_numpy(),
            "hours": grouped["hours"].first().to_numpy(),
            "mean_p_infected": grouped["p"].mean().to_numpy(),
            "fraction_infected": grouped["infected"].mean().to_numpy(),
            "median_duration_h": grouped["duration"].median().to_numpy(),
        },
        columns=list(SUMMARY_COLUMNS),
    )


def item_series(table: pd.DataFrame, item: tuple[int, int]) -> pd.DataFrame:
    """The frames of one item (tile row, col): hours, probability, duration (NaN if mock),
    and the item's clock (onset and its interval) when the table has been fitted."""
    rows = table[(table["tile_row"] == item[0]) & (table["tile_col"] == item[1])]
    rows = rows.sort_values("frame")
    infected = rows["pred_class"].to_numpy() == INFECTED
    series = pd.DataFrame(
        {
            "frame": rows["frame"].to_numpy(int),
            "hours": rows["hours"].to_numpy(float),
            "p_infected": rows["p_infected"].to_numpy(float),
            "duration_h": np.where(infected, rows["pred_time_h"].to_numpy(float), np.nan),
        }
    )
    for column in (*CLOCK_COLUMNS, *INTERVAL_COLUMNS):
        if column in rows.columns:
            series[column] = rows[column].to_numpy(float)
    for flag in ("no_information", "out_of_distribution"):
        if flag in rows.columns:
            series[flag] = rows[flag].fillna(False).to_numpy(bool)  # NaN: written before it
    return series


def estimate_onset(summary: pd.DataFrame) -> RegionClock | None:
    """The clock of the whole image from its per-frame summary (core.clock's robust fit of
    ``duration = t - onset``, frames weighted by their mean probability); None when no
    frame is classified infected. It runs on the GUI thread, so with fewer resamples than
    the tables' clocks (``ESTIMATE_RESAMPLES``)."""
    if summary.empty:
        return None
    fit = fit_region(summary["hours"], summary["mean_p_infected"], summary["median_duration_h"],
                     n_resamples=ESTIMATE_RESAMPLES)
    return fit if fit.infected else None


def answer_at(series: pd.DataFrame, frame: int, level: float | None,
              interval: ClockInterval | None = None) -> str:
    """What an item's clock says at ``frame``: "infected for 7.5 h (5.9-9.1 h, 90 %)" (the
    interval when the model is calibrated; ``interval`` says whether over regions, else
    "uncalibrated", or that too few validation regions leave it unbounded), "not infected",
    "no answer: ..." for an item flagged out of distribution (core.novelty), or "" before
    the clock is fitted."""
    rows = series[series["frame"] == frame]
    if rows.empty or "consistent_time_h" not in rows:
        return ""
    row = rows.iloc[0]
    if row.get("no_information", False):
        return "no answer: the frame shows nothing here"
    if row.get("out_of_distribution", False):
        return "no answer: unlike the training data"
    if not np.isfinite(row["onset_h"]):
        return "not infected"
    bounds = [row.get("consistent_low_h", np.nan), row.get("consistent_high_h", np.nan)]
    if level is not None and interval is not None and not interval.bounded:
        return (f"infected for {row['consistent_time_h']:.1f} h ({level * 100:.0f} % interval "
                f"{interval.note})")
    if level is not None and np.isfinite(bounds).all():
        return "infected for " + interval_text(row["consistent_time_h"], row["consistent_low_h"],
                                               row["consistent_high_h"], level,
                                               interval.note if interval else "")
    return f"infected for {row['consistent_time_h']:.1f} h"

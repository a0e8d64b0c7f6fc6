"""Per-frame summaries of a prediction table, and the onset they imply (no Qt here).

The plot dock draws these; keeping them apart makes the numbers testable and the CSV
export the same numbers the plot shows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.targets import INFECTED, onset_estimate

#: A frame counts as infected when at least this fraction of its items is.
INFECTED_FRAME_FRACTION = 0.5
SUMMARY_COLUMNS = ("frame", "hours", "mean_p_infected", "fraction_infected", "median_duration_h")


def frame_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per predicted frame: mean probability, fraction infected, median duration.

    The duration is the median predicted time over the items classified infected (the
    time output means infection duration only for those); NaN where none is.
    """
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
    """The frames of one item (tile row, col): hours, probability, duration (NaN if mock)."""
    rows = table[(table["tile_row"] == item[0]) & (table["tile_col"] == item[1])]
    rows = rows.sort_values("frame")
    infected = rows["pred_class"].to_numpy() == INFECTED
    return pd.DataFrame(
        {
            "frame": rows["frame"].to_numpy(int),
            "hours": rows["hours"].to_numpy(float),
            "p_infected": rows["p_infected"].to_numpy(float),
            "duration_h": np.where(infected, rows["pred_time_h"].to_numpy(float), np.nan),
        }
    )


def estimate_onset(summary: pd.DataFrame) -> tuple[float, int] | None:
    """Onset implied by the infected frames: the median of ``t - duration``, and how many.

    With the slope of duration against time fixed at 1 (the clock's definition), the
    median is the robust least-absolute-deviation fit of ``duration = t - onset``.
    None when no frame is classified infected.
    """
    infected = summary[
        (summary["fraction_infected"] >= INFECTED_FRAME_FRACTION)
        & summary["median_duration_h"].notna()
    ]
    if infected.empty:
        return None
    onsets = onset_estimate(infected["hours"], infected["median_duration_h"])
    return float(np.median(onsets)), len(infected)

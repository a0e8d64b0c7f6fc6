"""A consistent infection clock per region: the onset all its frames agree on.

Frame by frame the network answers independently, so a region's predicted duration can
jump by hours between neighbouring frames, although once infected it can only grow by one
frame interval per frame: ``duration = t - onset``. Each frame classified infected votes
``t - duration`` for the onset; the median of the votes weighted by p(infected) is the
least-absolute-deviation fit of that line with its slope fixed at 1, so fewer than half
of the weight in wild frames cannot drag it. Its interval comes from a bootstrap over
the frames (scipy). The consistent duration of every frame is then ``max(t - onset, 0)``.

A region is infected when, from its fitted onset on, at least half of its frames are
classified infected (a region stays infected once it is) and at least ``MIN_VOTES`` of
them are (fewer only when the stack has fewer frames), so a region infected late in the
experiment keeps its onset while a mock region with a few false alarms, or one on its last
frame, does not get one. Mock regions get the same treatment for experiment time: ``time = t - start`` with
``start`` the weighted median of their votes (weights 1 - p), so their clock also
advances one interval per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .information import lacks_information
from .targets import DEFAULT_CLAMP

#: The per-frame time of the region's clock (metrics evaluate it next to the raw one).
CONSISTENT_COLUMN = "consistent_time_h"
#: Columns the clock adds to a prediction table (NaN onset: region not infected).
CLOCK_COLUMNS = ("onset_h", "onset_low_h", "onset_high_h", CONSISTENT_COLUMN)
#: What identifies a region across frames: its stack and its pixel box.
REGION_KEYS = ("stack", "y0", "x0", "y1", "x1")
#: One row per region, as :func:`region_clocks` returns.
REGION_COLUMNS = (*REGION_KEYS, "tile_row", "tile_col", "infected", "onset_h", "onset_low_h",
                  "onset_high_h", "start_h", "n_votes", "n_frames")

DEFAULT_LEVEL = 0.9
DEFAULT_RESAMPLES = 999
#: Infected frames from the onset on that a region needs to be called infected (one late
#: false alarm is all the frames after its own onset, so the 50 % rule alone would pass it).
MIN_VOTES = 3
#: Predicted times this close to a clamp bound are censored (the truth may lie beyond).
_CENSOR_ATOL_H = 1e-3


def weighted_median(values, weights, axis=-1):
    """The value below which half of the weight lies (numpy's weighted inverted-CDF quantile)."""
    return np.quantile(values, 0.5, axis=axis, weights=weights, method="inverted_cdf")


@dataclass(frozen=True)
class RegionClock:
    """The clock of one region. ``onset_h`` is NaN when the region is not infected;
    ``start_h`` is the experiment start that mock frames imply (NaN without mock frames)."""

    infected: bool
    onset_h: float
    onset_low_h: float
    onset_high_h: float
    start_h: float
    n_votes: int


def consistent_time(hours, infected, onset_h, start_h, clamp=DEFAULT_CLAMP) -> np.ndarray:
    """Per frame: the duration ``max(t - onset, 0)`` where the region is infected, else the
    experiment time ``t - start``; clamped like the network's outputs. Broadcasts."""
    hours = np.asarray(hours, dtype=np.float64)
    time = np.where(infected, np.maximum(hours - onset_h, 0.0), hours - start_h)
    return np.clip(time, clamp[0], clamp[1])


def _robust_fit(votes, weights, level, n_resamples, rng) -> tuple[float, float, float]:
    """Weighted median of the votes and its percentile-bootstrap interval over frames."""
    keep = np.isfinite(votes) & (weights > 0)
    votes, weights = votes[keep], weights[keep]
    if votes.size == 0:
        return np.nan, np.nan, np.nan
    centre = float(weighted_median(votes, weights))
    if votes.size < 2 or np.ptp(votes) < 1e-9:
        # One vote has no spread to resample; identical votes have none to report.
        return (centre, np.nan, np.nan) if votes.size < 2 else (centre, centre, centre)
    from scipy import stats  # loads when used: a dock opens without it (ui.torch_ahead)

    res = stats.bootstrap(
        (votes, weights), weighted_median, paired=True, vectorized=True,
        n_resamples=n_resamples, confidence_level=level, method="percentile", rng=rng,
    )
    return centre, float(res.confidence_interval.low), float(res.confidence_interval.high)


def fit_region(hours, p_infected, pred_time_h, *, threshold: float = 0.5, clamp=DEFAULT_CLAMP,
               level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
               rng=None) -> RegionClock:
    """The clock of one region from its frames' hours, probabilities and raw times.

    Infected frames whose duration sits on a clamp bound are censored votes (the onset is
    only known to be before or after them); they are set aside unless nothing else is left.
    """
    hours = np.asarray(hours, dtype=np.float64)
    p = np.asarray(p_infected, dtype=np.float64)
    time = np.asarray(pred_time_h, dtype=np.float64)
    votes = hours - time
    sick = (p >= threshold) & np.isfinite(votes)
    censored = np.isclose(time, clamp[0], atol=_CENSOR_ATOL_H) | np.isclose(
        time, clamp[1], atol=_CENSOR_ATOL_H)
    use = sick & ~censored if np.any(sick & ~censored) else sick
    rng = np.random.default_rng(0) if rng is None else rng
    onset, low, high = _robust_fit(votes[use], p[use], level, n_resamples, rng)
    well = ~sick & np.isfinite(votes) & np.isfinite(p)
    start = float(weighted_median(votes[well], 1 - p[well])) if np.any(well & (p < 1)) else np.nan
    after = np.isfinite(p) & (hours >= onset) if np.isfinite(onset) else np.zeros(p.shape, bool)
    votes_after = np.count_nonzero(p[after] >= threshold)
    enough = min(MIN_VOTES, np.count_nonzero(np.isfinite(p)))
    infected = bool(after.any() and votes_after >= enough and votes_after >= 0.5 * after.sum())
    if not infected:
        onset = low = high = np.nan
    if not infected and not np.isfinite(start):
        start = 0.0  # a mock region with no usable frame: experiment time as the frames say
    return RegionClock(infected, onset, low, high, start, int(np.count_nonzero(use)))


def region_clocks(table: pd.DataFrame, *, threshold: float = 0.5, clamp=DEFAULT_CLAMP,
                  level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
                  seed: int = 0) -> pd.DataFrame:
    """One row per region of a prediction table (``REGION_COLUMNS``), fitted independently;
    rows flagged ``out_of_distribution`` are left out of the fit.

    The bootstrap is seeded, so the same table always gives the same intervals.
    """
    if table.empty:
        return pd.DataFrame(columns=list(REGION_COLUMNS))
    rng = np.random.default_rng(seed)
    rows = []
    for key, part in table.groupby(list(REGION_KEYS), sort=True):
        p = part["p_infected"].to_numpy(np.float64)
        if "out_of_distribution" in part:  # flagged items (core.novelty) do not vote
            p = np.where(part["out_of_distribution"].to_numpy(bool), np.nan, p)
        fit = fit_region(part["hours"], p, part["pred_time_h"],
                         threshold=threshold, clamp=clamp, level=level,
                         n_resamples=n_resamples, rng=rng)
        rows.append((*key, int(part["tile_row"].iloc[0]), int(part["tile_col"].iloc[0]),
                     fit.infected, fit.onset_h, fit.onset_low_h, fit.onset_high_h, fit.start_h,
                     fit.n_votes, len(part)))
    return pd.DataFrame(rows, columns=list(REGION_COLUMNS))


def with_clock(table: pd.DataFrame, *, clamp=DEFAULT_CLAMP, **kwargs) -> pd.DataFrame:
    """``table`` with :data:`CLOCK_COLUMNS` added (replaced if present), rows in their order.
    Items without information (``no_information``) have no votes and no ``consistent_time_h``.

    ``consistent_time_h`` follows the region's class as ``pred_time_h`` follows the frame's:
    an infection duration where ``onset_h`` is set, experiment time elsewhere.
    """
    return apply_clocks(table, region_clocks(table, clamp=clamp, **kwargs), clamp)


def apply_clocks(table: pd.DataFrame, regions: pd.DataFrame, clamp=DEFAULT_CLAMP) -> pd.DataFrame:
    """``table`` with the clock columns of already fitted ``regions`` (cheap: a merge), so a
    viewer can fit in a worker thread and attach the result on the GUI thread."""
    out = table.drop(columns=[c for c in CLOCK_COLUMNS if c in table.columns])
    if out.empty:
        return out.reindex(columns=[*out.columns, *CLOCK_COLUMNS])
    merged = out[list(REGION_KEYS)].merge(regions, on=list(REGION_KEYS), how="left")
    out = out.copy()
    for column in ("onset_h", "onset_low_h", "onset_high_h"):
        out[column] = merged[column].to_numpy(np.float64)
    out[CONSISTENT_COLUMN] = consistent_time(
        out["hours"], merged["infected"].eq(True).to_numpy(), out["onset_h"].to_numpy(),
        merged["start_h"].to_numpy(np.float64), clamp)
    # A frame that showed nothing gets no time (core.information).
    out.loc[lacks_information(out), CONSISTENT_COLUMN] = np.nan
    return out

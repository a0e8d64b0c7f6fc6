"""Items unlike anything the model was trained on are flagged, not answered with confidence.

A network answers every input, also a constant frame, a saturated one or another imaging
modality, and its softmax is often sure of itself there. Each crop is described by a few
intensity and texture statistics that such inputs move far (after the same per-crop
min-max scaling the model sees): the fraction of pixels stuck at the crop's extremes, the
mean and spread of the scaled intensities, and the mean gradient. Its novelty is how far the furthest statistic lies outside the range of
the training crops (1st-99th percentile), in units of their interquartile range; the
flagging threshold is the split-conformal ``level`` quantile of the validation crops'
scores (at least Tukey's 1.5), so at most about ``1 - level`` of in-distribution items are
flagged by chance. A constant
crop carries no information at all and is always flagged, also by a checkpoint without a
novelty model.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

STATISTICS = ("at_extremes", "mean", "std", "gradient")
DEFAULT_LEVEL = 0.99
#: Smallest spread of a statistic (all are fractions of the scaled range, 0..1).
MIN_SCALE = 0.01
#: The threshold is never below Tukey's outlier fence (1.5 interquartile ranges outside),
#: so a small validation set that happens to sit inside the training range flags no
#: ordinary item.
MIN_THRESHOLD = 1.5
#: Columns :func:`add_novelty` adds to a prediction table.
NOVELTY_COLUMNS = ("novelty", "out_of_distribution")


def crop_statistics(crop: np.ndarray) -> np.ndarray:
    """The statistics of one crop (H, W) or (H, W, C); NaN for a constant crop."""
    x = np.asarray(crop, dtype=np.float32)
    if x.ndim == 3:
        x = x.mean(axis=-1)
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        return np.full(len(STATISTICS), np.nan)
    at_extremes = float(np.mean((x == lo) | (x == hi)))
    x = (x - lo) / (hi - lo)
    gy, gx = np.gradient(x)
    return np.array([at_extremes, float(x.mean()), float(x.std()), float(np.mean(np.hypot(gy, gx)))])


def novelty_scores(stats: np.ndarray, model: dict) -> np.ndarray:
    """Per row of ``stats`` (N, len(STATISTICS)): the furthest distance outside the training
    range, in interquartile ranges (0 inside it); inf for a constant crop."""
    x = np.atleast_2d(stats)
    low, high, scale = (np.asarray(model[k]) for k in ("low", "high", "scale"))
    outside = np.maximum(np.maximum(low - x, x - high), 0.0) / scale
    return np.nan_to_num(outside, nan=np.inf).max(axis=1)


def fit_novelty(reference: np.ndarray, validation: np.ndarray, level: float = DEFAULT_LEVEL) -> dict:
    """The novelty model from the statistics of training crops (``reference``) and the
    threshold from held-out validation crops, as checkpoint-ready plain data."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref).all(axis=1)]
    if len(ref) < 2:
        return {}
    low, q1, q3, high = np.percentile(ref, [1, 25, 75, 99], axis=0)
    scale = np.maximum(q3 - q1, MIN_SCALE)  # a statistic constant in training still varies
    model = {"statistics": list(STATISTICS), "low": low.tolist(), "high": high.tolist(),
             "scale": scale.tolist()}
    scores = np.sort(novelty_scores(np.asarray(validation, dtype=np.float64), model))
    k = math.ceil((len(scores) + 1) * level)
    quantile = float(scores[k - 1]) if 0 < k <= len(scores) else float(scores.max())
    model["threshold"] = max(quantile, MIN_THRESHOLD)
    model["level"] = float(level)
    return model


def novelty_columns(stats: np.ndarray, model: dict) -> tuple[np.ndarray, np.ndarray]:
    """``novelty`` and ``out_of_distribution`` of crops with statistics ``stats``. Without a
    model (research checkpoints, models trained without validation) only constant crops
    are scored (inf) and flagged; the others' novelty is unknown (NaN)."""
    stats = np.atleast_2d(stats)
    if model:
        scores = novelty_scores(stats, model)
        return scores, scores > model["threshold"]
    constant = ~np.isfinite(stats).all(axis=1)
    return np.where(constant, np.inf, np.nan), constant


def add_novelty(table: pd.DataFrame, stack, model: dict) -> pd.DataFrame:
    """``table`` with each item's ``novelty`` and ``out_of_distribution`` flag
    (:func:`novelty_columns`), its crops read again from ``stack`` (one frame at a time)."""
    if table.empty:
        return table
    stats = np.empty((len(table), len(STATISTICS)))
    boxes = table[["y0", "x0", "y1", "x1"]].to_numpy(np.int64)
    frames = table["frame"].to_numpy(np.int64)
    for frame in np.unique(frames):
        image = stack.frame(int(frame))
        rows = np.flatnonzero(frames == frame)
        stats[rows] = [crop_statistics(image[y0:y1, x0:x1]) for y0, x0, y1, x1 in boxes[rows]]
    out = table.copy()
    out["novelty"], out["out_of_distribution"] = novelty_columns(stats, model)
    return out

"""The one tidy prediction table: its columns, and how rows are made from model outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .information import NO_INFORMATION, NO_INFORMATION_LABEL, NO_TIME
from .targets import CLASS_NAMES, INFECTED, TIME_MEANING, onset_estimate

#: Columns of every prediction table, in order. ``channel`` is the index read from a
#: multichannel stack (empty for single-channel ones), ``channel_name`` its name where the
#: file names it (see :mod:`.channels`). Boxes are pixel coordinates in the frame,
#: half-open: rows y0:y1, columns x0:x1; whole-frame items span the frame. ``padded``
#: marks boxes that reach past the frame, whose outside pixels were made up by reflection
#: (``--border pad``); it is empty where the frame size was not known. ``no_information``
#: marks items that carry none (:mod:`.information`): class ``NO_INFORMATION``, labelled
#: "no information", NaN probability and times.
RESULT_COLUMNS = (
    "stack",
    "channel",
    "channel_name",
    "frame",
    "hours",
    "tile_row",
    "tile_col",
    "y0",
    "x0",
    "y1",
    "x1",
    "padded",
    "no_information",
    "p_infected",
    "pred_class",
    "pred_label",
    "pred_time_h",
    "time_meaning",
    "est_onset_h",
)

#: Extra columns when the truth is known (evaluation).
TRUTH_COLUMNS = ("true_class", "true_time_h")


def result_rows(stack, frame, hours, boxes, grid_rc, p_infected, pred_time_h, threshold=0.5,
                frame_shape=None, channel=None, channel_name="single channel", informative=None):
    """Rows for one frame's items: ``boxes`` (N, 4) as y0, x0, y1, x1; ``grid_rc`` (N, 2);
    ``frame_shape`` (height, width) tells which boxes were padded; ``informative`` (N,)
    which items carry information (all, when not given): the others get no answer."""
    p = np.asarray(p_infected, dtype=np.float64)
    t = np.asarray(pred_time_h, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    grid_rc = np.asarray(grid_rc, dtype=np.int64).reshape(-1, 2)
    empty = np.zeros(len(p), bool) if informative is None else ~np.asarray(informative, bool)
    p = np.where(empty, np.nan, p)
    t = np.where(empty, np.nan, t)
    cls = np.where(empty, NO_INFORMATION, p >= threshold).astype(np.int64)
    hours_arr = np.full(len(p), float(hours))
    onset = np.where(cls == INFECTED, onset_estimate(hours_arr, t), np.nan)
    if frame_shape is None:
        padded = pd.array([pd.NA] * len(p), dtype="boolean")
    else:
        height, width = frame_shape
        outside = (boxes[:, :2] < 0).any(1) | (boxes[:, 2] > height) | (boxes[:, 3] > width)
        padded = pd.array(outside, dtype="boolean")
    return pd.DataFrame(
        {
            "stack": stack,
            "channel": pd.array([channel] * len(p), dtype="Int64"),
            "channel_name": channel_name,
            "frame": int(frame),
            "hours": hours_arr,
            "tile_row": grid_rc[:, 0],
            "tile_col": grid_rc[:, 1],
            "y0": boxes[:, 0],
            "x0": boxes[:, 1],
            "y1": boxes[:, 2],
            "x1": boxes[:, 3],
            "padded": padded,
            "no_information": empty,
            "p_infected": p,
            "pred_class": cls,
            "pred_label": [NO_INFORMATION_LABEL if c == NO_INFORMATION else CLASS_NAMES[c]
                           for c in cls],
            "pred_time_h": t,
            "time_meaning": [TIME_MEANING.get(c, NO_TIME) for c in cls],
            "est_onset_h": onset,
        },
        columns=list(RESULT_COLUMNS),
    )


def empty_results() -> pd.DataFrame:
    return pd.DataFrame(columns=list(RESULT_COLUMNS))

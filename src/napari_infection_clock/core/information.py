"""Crops that carry no information get no answer: no class, probability or time.

A network answers every input, and a constant crop (a dropped frame, a saturated or
blank tile, a 1x1 frame) still comes out with a confident class and a time. Such a crop
holds nothing the model could have read, whatever the checkpoint (research checkpoints
have no novelty model, see :mod:`.novelty`), so prediction marks it instead of answering:
``no_information`` in the table, class :data:`NO_INFORMATION` ("no information"), and NaN
probability and times.

A crop has no information when it is constant (NaN and inf count as its minimum, as in
preprocessing, so the model's input would be one flat value) or when it is under
:data:`MIN_SIDE` pixels on a side: resized to the model's input, such a crop is
interpolation between a handful of pixels, far less than one cell.
"""

from __future__ import annotations

import numpy as np

#: Smallest side (pixels) of a crop that can carry information.
MIN_SIDE = 8
#: ``pred_class`` and ``pred_label`` of an item without information.
NO_INFORMATION = -1
NO_INFORMATION_LABEL = "no information"
#: ``time_meaning`` of such an item: its time is NaN.
NO_TIME = "none"


def has_information(crops: np.ndarray) -> np.ndarray:
    """Per crop of ``crops`` (N, h, w[, C]): whether it is at least ``MIN_SIDE`` px on
    each side and not constant over its finite pixels."""
    crops = np.asarray(crops)
    n = len(crops)
    if n == 0 or min(crops.shape[1:3]) < MIN_SIDE:
        return np.zeros(n, bool)
    if not np.issubdtype(crops.dtype, np.floating):
        flat = crops.reshape(n, -1)
        return flat.max(axis=1) > flat.min(axis=1)
    # Crop by crop, so the only temporaries are one crop's size (float batches are large).
    out = np.zeros(n, bool)
    for i, c in enumerate(crops):
        finite = c[np.isfinite(c)]
        out[i] = finite.size > 0 and finite.max() > finite.min()
    return out


def lacks_information(table) -> np.ndarray:
    """Per row of a result table: marked ``no_information``. Rows from tables written
    before the column existed (NaN after a merge) had information."""
    if "no_information" not in table:
        return np.zeros(len(table), bool)
    return table["no_information"].fillna(False).to_numpy(bool)


def describe_missing(table) -> str:
    """"3 of 16 items had no information", or "" when every item had some."""
    missing = int(lacks_information(table).sum())
    return f"{missing} of {len(table)} items had no information" if missing else ""

"""Predicting labelled items, with their truth beside each prediction, for evaluation and
for calibrating a model on its validation items."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from .calibration import DEFAULT_LEVEL, fit_calibration
from .clock import with_clock
from .dataset import ItemDataset
from .information import has_information, lacks_information
from .novelty import crop_statistics, fit_novelty, novelty_columns
from .predictor import Predictor
from .results import result_rows


def predict_items(
    predictor: Predictor,
    items,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[pd.DataFrame]:
    """Predict labelled items frame by frame; rows carry the truth (``true_class``,
    ``true_time_h``) so the table feeds :func:`.metrics.evaluate_table` directly. ``stack`` is
    the item's path, as in the label table: same-named files in two folders are two wells.
    Each row's novelty (:mod:`.novelty`) comes from the crop the model saw; a crop without
    information (:mod:`.information`) is marked, not answered, as in prediction."""
    by_frame: dict[tuple[str, int | None, int], list[int]] = {}
    for i, item in enumerate(items):
        by_frame.setdefault((item.stack, item.channel, item.frame), []).append(i)
    reader = ItemDataset(items, predictor.meta.preprocessing)
    novelty = predictor.meta.calibration.get("novelty", {})
    for (stack_path, _, frame), members in by_frame.items():
        if should_stop is not None and should_stop():
            return
        crops = [reader.raw_crop(i) for i in members]
        p, t = predictor.predict_many(crops)
        first = items[members[0]]
        h, w = reader.stack(stack_path, first.channel).frame_shape
        boxes = np.array([items[i].box or (0, 0, h, w) for i in members])
        sizes = np.maximum(boxes[:, 2:] - boxes[:, :2], 1)
        table = result_rows(
            str(stack_path), frame, first.hours, boxes, boxes[:, :2] // sizes, p, t,
            frame_shape=(h, w), channel=first.channel, channel_name=first.channel_desc,
            informative=_informative(crops),
        )
        table["true_class"] = [items[i].label for i in members]
        table["true_time_h"] = [items[i].time_target for i in members]
        table["novelty"], table["out_of_distribution"] = novelty_columns(
            np.stack([crop_statistics(c) for c in crops]), novelty)
        yield table


def _informative(crops: list[np.ndarray]) -> np.ndarray:
    """:func:`.information.has_information` of crops that may differ in shape (edge tiles)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, c in enumerate(crops):
        by_shape.setdefault(c.shape, []).append(i)
    out = np.zeros(len(crops), bool)
    for members in by_shape.values():
        out[members] = has_information(np.stack([crops[i] for i in members]))
    return out


def calibrate(predictor: Predictor, items, reference=(), level: float = DEFAULT_LEVEL,
              max_reference: int = 512, table: pd.DataFrame | None = None) -> dict:
    """Calibration (:func:`.calibration.fit_calibration`) from validation ``items``: what
    ``CheckpointMeta.calibration`` stores; with ``reference`` (the training items, at most
    ``max_reference`` of them, evenly spaced) also the novelty model. Empty without items.
    ``table``: the items' predictions (:func:`predict_items`) when the caller has them."""
    if not items:
        return {}
    if table is None:
        table = pd.concat(predict_items(predictor, items), ignore_index=True)
    table = table[~lacks_information(table)]  # nothing to calibrate on (NaN answers)
    out = fit_calibration(with_clock(table, clamp=predictor.meta.time.clamp), level)
    if reference:
        picks = np.unique(np.linspace(0, len(reference) - 1, min(len(reference), max_reference))
                          .astype(int))
        prep = predictor.meta.preprocessing
        stats = [_crop_stats(items, range(len(items)), prep), _crop_stats(reference, picks, prep)]
        out["novelty"] = fit_novelty(stats[1], stats[0])
    return out


def _crop_stats(items, indices, prep) -> np.ndarray:
    reader = ItemDataset(items, prep)
    return np.stack([crop_statistics(reader.raw_crop(int(i))) for i in indices])

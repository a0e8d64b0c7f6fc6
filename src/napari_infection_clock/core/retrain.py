"""Retraining from viewer labels: label table -> items -> block-aware split -> training.

The training widget runs :func:`iter_retrain` in a worker thread; tests drive the same
function, so what is tested is what the widget does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .annotations import labelled_stores
from .blocks import BlockSplit, split_for_training
from .checkpoint import CheckpointMeta, save_checkpoint
from .choices import STARTS
from .dataset import ItemDataset
from .evaluation import calibrate, predict_items
from .items import items_time_policy, label_table_items, stack_records
from .model import ModelConfig, MultitaskResNet, build_model
from .predictor import Predictor
from .preprocess import Preprocessing
from .targets import CLASS_NAMES, DEFAULT_CLAMP, TimePolicy
from .tiles import TileSpec
from .trainer import TrainConfig, TrainingError, TrainProgress, iter_train


def plan_from_labels(table: pd.DataFrame, val_fraction: float = 0.2, split_mode: str = "auto",
                     block_frames: int = 8, gap_frames: int = 1, seed: int = 0,
                     clamp=DEFAULT_CLAMP, native_tiles: int | None = None) -> BlockSplit:
    """Items of a label table and their split; refuses what cannot be trained.

    ``native_tiles`` (a recipe's): whole-frame labels give one item per tile of that size.
    """
    if table is None or len(table) == 0:
        where = (table.attrs.get("path") if table is not None else None)
        what = f"label table {where} has no rows" if where else "no labels yet"
        raise TrainingError(f"{what}: label frames or crops of both classes first (in napari's "
                            "annotation dock, or as rows of stack, frame, label in a label table)")
    tiles = None if native_tiles is None else TileSpec(native_tiles)
    items = label_table_items(table, tiles=tiles, clamp=clamp)
    classes = {i.label for i in items}
    if len(classes) < 2:
        only = CLASS_NAMES[classes.pop()]
        raise TrainingError(f"all {len(items)} labelled items are {only}: label at least one "
                            "infected and one uninfected frame or crop")
    split: BlockSplit = split_for_training(items, val_fraction, split_mode, block_frames,
                                           gap_frames, seed)
    if len({i.label for i in split.train}) < 2:
        raise TrainingError(f"after the validation split ({split.how}) the training items hold "
                            "one class only; label more frames or lower the validation share")
    return split


def time_policy_of(plan: BlockSplit, clamp=DEFAULT_CLAMP) -> TimePolicy:
    """A checkpoint's time policy from a plan's items (every labelled item: train,
    validation, guard band): the frame interval and onset their stacks share (refused, with
    each stack's, where they differ; see :func:`.items.items_time_policy`). From the items
    the plan read, not the label table again: that opens every labelled stack."""
    return items_time_policy([*plan.train, *plan.val, *plan.guard], clamp)


def start_model(start: str, config: ModelConfig, image_size: int, time: TimePolicy,
                current: tuple[MultitaskResNet, CheckpointMeta] | None = None,
                ) -> tuple[MultitaskResNet, CheckpointMeta]:
    """The model training starts from: a copy of the current one (never trained in place,
    so predictions keep using it meanwhile), ImageNet weights, or random ones.

    ImageNet weights that are unavailable raise :class:`.model.PretrainedWeightsUnavailable`;
    there is no silent fallback to random.
    """
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if start == "session model":
        if current is None:
            raise TrainingError("there is no loaded model to start from; load a checkpoint "
                                "in the prediction widget, or start from ImageNet or random")
        model, meta = current
        # The labels' clock, not the old one: the checkpoint describes what it learned. The
        # old calibration describes the old model's errors; the new one gets its own or none.
        clock = replace(meta.time, frame_interval_h=time.frame_interval_h, onset_h=time.onset_h)
        meta = replace(copy.deepcopy(meta), history=[], val_metrics={}, epoch=None, time=clock,
                       calibration={})
        return copy.deepcopy(model).cpu(), meta
    model = build_model(config, init=start)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=image_size),
                          time=time)
    return model, meta


def iter_retrain(model: MultitaskResNet, meta: CheckpointMeta, plan: BlockSplit,
                 config: TrainConfig, checkpoint_path: str | Path | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 feature_cache=None) -> Iterator[TrainProgress]:
    """:func:`.trainer.iter_train` on the plan's items (augmented training set);
    ``feature_cache`` (a :class:`.feature_cache.FeatureCache`) serves heads-only runs.
    A finished run with validation items is then calibrated on them (core.calibration,
    core.novelty), with a ``"calibrating"`` event per validation frame: the final event's
    metadata, and the checkpoint, carry it; Stop meanwhile ends the run ``"stopped"``.
    A recipe with native tiles needs a plan of such tiles (:func:`plan_from_labels`); the
    tiles become the model's input as they are."""
    tiles = config.recipe.native_tiles
    if tiles is not None:
        meta.tile_size = tiles
        meta.preprocessing = replace(meta.preprocessing, image_size=tiles)
    prep = meta.preprocessing
    meta.stacks = stack_records([*plan.train, *plan.val])
    train_ds = ItemDataset(plan.train, prep, augment=config.augmentation)
    val_ds = ItemDataset(plan.val, prep) if plan.val else None
    for event in iter_train(model, train_ds, val_ds, config, meta, checkpoint_path, should_stop,
                            feature_cache=feature_cache):
        if event.stage == "done" and event.meta is not None and plan.val:
            predictor = Predictor(model, event.meta, device=config.device)
            calibration = yield from _calibrating(predictor, event, plan, should_stop)
            if calibration is None:  # stopped: the checkpoint stays the best epoch's, as saved
                yield replace(event, stage="stopped")
                return
            calibrated = replace(event.meta, calibration=calibration)
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, model, calibrated)
            event = replace(event, meta=calibrated)
        yield event


def _calibrating(predictor: Predictor, done: TrainProgress, plan: BlockSplit,
                 should_stop: Callable[[], bool] | None):
    """Predict the validation frames, one ``"calibrating"`` event each (``batch`` of
    ``batches`` frames), then return their calibration; None when stopped before the end."""
    frames = len({(item.stack, item.channel, item.frame) for item in plan.val})
    tables = []
    for table in predict_items(predictor, plan.val, should_stop):
        tables.append(table)
        yield replace(done, stage="calibrating", batch=len(tables), batches=frames)
    if len(tables) < frames:
        return None
    return calibrate(predictor, plan.val, reference=plan.train,
                     table=pd.concat(tables, ignore_index=True))


def labels_of(stores) -> pd.DataFrame:
    """One label table of several annotation stores (those with a file and labels)."""
    tables = [s.to_label_table() for s in labelled_stores(stores)]
    if not tables:
        return pd.DataFrame()
    return pd.concat(tables, ignore_index=True)


def mean_baseline_mae(targets) -> float:
    """MAE of always predicting the mean time: the bar the time head must beat."""
    t = np.asarray(targets, dtype=np.float64)
    return float(np.abs(t - t.mean()).mean())

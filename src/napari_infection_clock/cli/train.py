"""``train``: train or fine-tune a model; writes a checkpoint, history, splits and report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .. import __version__
from ..core import distributed
from ..core.atomic import check_writable, mark_input, remove_temporaries, write_atomic
from ..core.calibration import finish_table
from ..core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint, utc_now
from ..core.dataset import ItemDataset
from ..core.evaluation import calibrate, predict_items
from ..core.items import (
    items_frame,
    items_time_policy,
    kfold_by_group,
    split_by_group,
    stack_records,
)
from ..core.model import ModelConfig, build_model
from ..core.predictor import Predictor
from ..core.preprocess import Preprocessing
from ..core.recipes import SMOOTHING_WINDOW, Recipe, continuing, recipe
from ..core.report import save_report
from ..core.run_state import RUN_STATE, run_state_to_resume
from ..core.tiles import TileSpec
from ..core.trainer import TrainConfig, best_epoch_note, iter_train, seed_everything
from .common import (
    describe_calibration,
    frame_policy,
    load_items,
    print_headline,
    tile_spec,
    warn,
    warn_assumed,
)
from .options import TrainOptions

#: The files a run writes into --out (besides report/).
OUTPUTS = (RUN_STATE, "model.pt", "history.csv", "splits.csv", "test_predictions.csv")


def train(opts: TrainOptions) -> int:
    """Train; under torchrun every process runs this and only rank 0 writes."""
    ranks, _ = distributed.start(opts.device)
    try:
        return _train(opts, ranks)
    finally:
        distributed.stop()


def _train(opts: TrainOptions, ranks) -> int:
    if opts.checkpoint:
        mark_input(opts.checkpoint)  # so --out may not replace it, checked before any work
    # A run state in --out is the first thing to settle (resume it, or say how to replace it).
    resume = run_state_to_resume(opts.out / RUN_STATE, opts.resume, opts.overwrite)
    if ranks.is_main:
        check_writable(opts.out / "model.pt")
        # The run owns --out from here (its run state is settled): what writes killed in an
        # earlier attempt left goes now, whichever node or process id wrote it.
        for name in OUTPUTS:
            remove_temporaries(opts.out / name, any_writer=True)
    base = start = None
    if opts.checkpoint:
        model, meta = load_checkpoint(opts.checkpoint)
        warn_assumed(meta, "train")
        base, start = meta.time, meta.recipe
    chosen = training_recipe(opts, start)
    if opts.checkpoint:
        _warn_ignored_model_options(opts, meta, chosen)
    policy = frame_policy(opts, base=base)
    tiles = (tile_spec(opts) if chosen.native_tiles is None
             else TileSpec(chosen.native_tiles, border=opts.border))
    items = load_items(opts.data, policy, tiles, opts.channel)
    # The clock the data were read with (a label table's onset and interval), not defaults.
    given_interval = None if opts.frames_per_hour is None else 1.0 / opts.frames_per_hour
    clock = items_time_policy(items, policy.clamp, opts.onset, given_interval)
    if opts.folds:
        folds = kfold_by_group(items, opts.folds, opts.seed)
        if not 0 <= opts.fold < len(folds):
            raise ValueError(f"--fold must be between 0 and {len(folds) - 1}, got {opts.fold}")
        rest, test = folds[opts.fold]
        # Validation (which picks the best epoch) comes from the training folds, so the
        # held-out fold's report is not biased by that choice.
        train_items, val, _ = split_by_group(rest, opts.val_fraction, 0.0, opts.seed)
    else:
        train_items, val, test = split_by_group(
            items, opts.val_fraction, opts.test_fraction, opts.seed
        )
    if not opts.checkpoint:  # built after the data checks: ImageNet weights may be missing
        seed_everything(opts.seed)  # the same --seed, the same new heads and random weights
        config = ModelConfig(opts.arch, opts.hidden_dim, opts.dropout, opts.cls_conditioning)
        model = build_model(config, init=opts.init)
        meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=opts.image_size))
    if chosen.native_tiles is not None:  # the tiles are the model's input, as they are
        meta = replace(meta, preprocessing=replace(meta.preprocessing,
                                                   image_size=chosen.native_tiles))
    meta = replace(
        meta,
        time=clock,
        calibration={},  # the start checkpoint's describes its errors; calibrated below if val
        tile_size=tiles.tile_size,
        source="napari-infection-clock",
        package_version=__version__,
        created=utc_now(),
        assumed=[],
    )
    config = TrainConfig(
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        lr=opts.lr,  # None: the recipe's, where it sets one, else SPEC 6's
        weight_decay=opts.weight_decay,
        cls_weight=opts.cls_weight,
        reg_weight=opts.reg_weight,
        mode=opts.mode,
        best_metric=opts.best_metric,
        seed=opts.seed,
        device=opts.device,
        sync_bn=opts.sync_bn,
        recipe=chosen,
    )
    return train_and_report(model, meta, config, train_items, val, test, opts.out,
                            run_state=True, resume=resume)


def training_recipe(opts: TrainOptions, start: dict | None = None) -> Recipe:
    """The --recipe preset with the recipe options given on the command line; fine-tuning
    a checkpoint whose recipe is ``start`` keeps its native tiles (unless --native-tiles)."""
    augment = opts.augment
    if opts.no_augment:
        if augment not in (None, "none"):
            raise ValueError(f"--no-augment contradicts --augment {augment}: give one of them")
        augment = "none"
    given = recipe(opts.recipe, augment=augment, bf16=opts.bf16_train,
                   native_tiles=opts.native_tiles, warmup_epochs=opts.warmup_epochs,
                   balanced=opts.balanced, ema=opts.ema, bn=opts.bn, select=opts.select,
                   lr=opts.lr, best_metric=opts.best_metric)
    chosen = continuing(given, start)
    tiles = chosen.native_tiles
    if tiles is not None and (opts.tile_size not in (None, tiles) or opts.stride is not None):
        mine = given.native_tiles is not None
        kept = "" if mine else f" ({opts.checkpoint} was trained on them; fine-tuning keeps them)"
        raise ValueError(f"native tiles of {tiles} px{kept} are cut side by side and are the "
                         "model's input: leave --tile-size and --stride out"
                         + (" (or train without them)" if mine else ""))
    if tiles is not None and given.native_tiles is None and distributed.ranks_from_env().is_main:
        print(f"native tiles: {tiles} px, as {opts.checkpoint} was trained (--native-tiles "
              "chooses another size)")
    return chosen


def _warn_ignored_model_options(opts: TrainOptions, meta: CheckpointMeta, chosen: Recipe) -> None:
    """With --checkpoint the architecture and input size are the checkpoint's."""
    given = {
        "--arch": (opts.arch, meta.model.arch),
        "--hidden-dim": (opts.hidden_dim, meta.model.hidden_dim),
        "--cls-conditioning": (opts.cls_conditioning, meta.model.cls_conditioning),
        "--image-size": (opts.image_size, meta.preprocessing.image_size),
    }
    if chosen.native_tiles is not None:  # the input size is the tiles'
        del given["--image-size"]
        if chosen.native_tiles != meta.preprocessing.image_size:
            warn(f"native tiles: the model input becomes {chosen.native_tiles} px "
                 f"({opts.checkpoint} was trained on {meta.preprocessing.image_size} px)")
    differing = [flag for flag, (ours, theirs) in given.items() if ours != theirs]
    if differing:
        warn(f"{', '.join(differing)} ignored: the model comes from {opts.checkpoint}")


def train_and_report(model, meta, config, train, val, test, out: Path, run_state: bool = False,
                     resume: dict | None = None) -> int:
    """Train with a progress bar, then write splits, history, checkpoint and test report.

    With ``run_state`` the run state is saved every epoch (``resume`` continues one). Under
    torchrun only rank 0 prints and writes.
    """
    ranks = distributed.current_ranks()
    if not ranks.is_main:
        for _ in iter_train(model, ItemDataset(train, meta.preprocessing,
                                               augment=config.augmentation),
                            ItemDataset(val, meta.preprocessing), config, meta,
                            run_state_path=out / RUN_STATE if run_state else None, resume=resume):
            pass
        return 0
    out.mkdir(parents=True, exist_ok=True)
    meta.stacks = stack_records([*train, *val, *test])  # what each stack was read as
    splits = pd.concat(
        [
            items_frame(part).assign(split=name)
            for name, part in (("train", train), ("val", val), ("test", test))
            if part
        ],
        ignore_index=True,
    )
    write_atomic(out / "splits.csv", lambda tmp: splits.to_csv(tmp, index=False))
    print(
        f"training on {len(train)} items, validating on {len(val)}, testing on {len(test)} "
        f"({meta.model.arch}, {config.mode}, {config.epochs} epochs, {meta.preprocessing.image_size} px)"
    )
    print(f"recipe {config.applied_recipe.name}: {config.applied_recipe.summary()}")
    print(
        f"global batch {config.batch_size} = {ranks.world_size} process(es) x "
        f"{config.batch_size // ranks.world_size}; learning rate {config.lr:g} is for this global "
        "batch (the same command on any number of processes trains the same recipe)"
    )
    if resume is not None:
        print(f"resuming after epoch {resume['epoch']} from {out / RUN_STATE}")
    train_ds = ItemDataset(train, meta.preprocessing, augment=config.augmentation)
    val_ds = ItemDataset(val, meta.preprocessing)
    if not val:
        warn(best_epoch_note("train_loss"))
    ckpt = out / "model.pt"
    with tqdm(  # closed on errors too, so a message starts on a line of its own
        total=(config.epochs - (resume["epoch"] if resume else 0))
        * max(1, -(-len(train) // config.batch_size)),
        unit="batch",
        desc="train",
    ) as bar:
        last = None
        for last in iter_train(model, train_ds, val_ds, config, meta, checkpoint_path=ckpt,
                               run_state_path=out / RUN_STATE if run_state else None,
                               resume=resume):
            if last.stage == "batch":
                bar.update(1)
                bar.set_postfix(loss=f"{last.loss:.3f}")
            elif last.stage == "features" and last.batch == last.batches:
                shared = f" (its share of {ranks.world_size})" if ranks.world_size > 1 else ""
                tqdm.write(f"backbone features: {last.batches} items computed by this "
                           f"process{shared}")
            elif last.stage == "epoch":
                r = last.record
                tqdm.write(
                    f"epoch {r['epoch']}: train loss {r['train_loss']:.3f}"
                    + (
                        f", val AUC {r['val_roc_auc']:.3f}, val MAE {r['val_mae']:.2f} h"
                        if "val_mae" in r
                        else ""
                    )
                )
    history = pd.DataFrame(last.history)
    write_atomic(out / "history.csv", lambda tmp: history.to_csv(tmp, index=False))
    note = best_epoch_note(last.best_by)
    smoothed = config.recipe.select == "smoothed"
    chosen = (f" (by {last.best_by}" + (f", mean over {SMOOTHING_WINDOW} epochs" if smoothed else "")
              + ")") if last.best_by else ""
    print(f"best epoch {last.best_epoch}{chosen}; checkpoint {ckpt}")
    if note:
        warn(note)
    meta = last.meta or meta  # what the trainer saved with the best weights
    predictor = Predictor(model, meta, device=config.device, batch_size=config.batch_size)
    if val and last.best_epoch is not None:
        meta = replace(meta, calibration=calibrate(predictor, val, reference=train))
        save_checkpoint(ckpt, model, meta)
        print(describe_calibration(meta.calibration))
    if test:
        table = finish_table(pd.concat(predict_items(predictor, test), ignore_index=True), meta)
        write_atomic(out / "test_predictions.csv", lambda tmp: table.to_csv(tmp, index=False))
        training = {"best_epoch": last.best_epoch, "best_epoch_by": last.best_by,
                    "note": note}
        paths = save_report(table, out / "report", training=training,
                            calibration=meta.calibration)
        print(f"test report: {paths['metrics.json'].parent}")
        print_headline(paths["metrics.json"])
    return 0

"""The SPEC 6 training loop as a generator of progress events.

Callers drive it: the CLI with a progress bar, the napari widget from a worker thread.
Heads-only training (``mode="heads"``) runs the frozen backbone once per item through a
:class:`.feature_cache.FeatureCache` and then trains the heads on the cached features, so
retraining after a few new labels only computes the new items.
Stopping is cooperative: ``should_stop`` is polled every batch, and closing the generator
works too. The best checkpoint is written atomically only after a whole epoch is
validated, so a stop never leaves a half-written or worse checkpoint behind.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset, TensorDataset

from . import distributed
from .checkpoint import CheckpointMeta, save_checkpoint
from .dataset import ItemDataset
from .feature_cache import FeatureCache
from .metrics import classification_metrics, regression_metrics
from .model import MultitaskResNet
from .recipes import BEST_METRICS, RESEARCH, SMOOTHING_WINDOW, Recipe
from .run_state import RunStateError, rng_state, save_run_state, set_rng_state
from .runtime import cpu_supports_bf16, prediction_dtype
from .sampling import step_share, training_sampler
from .train_config import TrainConfig, applied_recipe


@dataclass
class TrainProgress:
    """A small event: after each batch (``stage='batch'``), epoch, and at the end."""

    stage: str  # "features" (heads-only: backbone passes, batch/batches), "batch", "epoch",
    # "done" or "stopped"; iter_retrain adds "calibrating" (validation frames, batch/batches)
    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float = float("nan")
    cls_loss: float = float("nan")
    reg_loss: float = float("nan")
    record: dict | None = None  # the epoch's history row
    elapsed_s: float = 0.0
    eta_s: float | None = None
    best_epoch: int | None = None
    checkpoint: str | None = None
    history: list[dict] = field(default_factory=list)
    meta: CheckpointMeta | None = None  # "done"/"stopped": the best weights' metadata
    #: What chose the best epoch so far (see :func:`best_epoch_note`).
    best_by: str | None = None


class TrainingError(ValueError):
    """Training cannot start with what it was given."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_trainable(dataset: ItemDataset, what: str = "training") -> None:
    """Both classes are needed: with one, the classifier has nothing to learn."""
    if len(dataset) == 0:
        raise TrainingError(f"no {what} items: label some frames or crops first")
    labels, _ = dataset.targets()
    if len(np.unique(labels)) < 2:
        only = "infected" if labels[0] == 1 else "uninfected"
        raise TrainingError(
            f"all {what} items are {only}: label at least one infected and one uninfected "
            "frame or crop"
        )


@dataclass
class RunState:
    """What a run has reached: finished epochs, their history and the best epoch so far."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_value: tuple[float, float] | None = None
    best_epoch: int | None = None
    best_state: dict | None = None
    best_metrics: dict = field(default_factory=dict)
    #: What chose the best epoch: the validation metric, or ``train_loss`` without one.
    best_by: str | None = None
    #: Smoothed selection: weights of the epochs whose score waits for later epochs.
    pending: dict[int, dict] = field(default_factory=dict)

    def consider(self, record: dict, model: nn.Module, config: TrainConfig) -> bool:
        """Record an epoch; keep the weights of an epoch that is now the best (True then).

        With the ``smoothed`` rule an epoch's score needs the epochs after it: its weights
        wait in ``pending`` until they have been validated (or the run ends, :meth:`settle`).
        """
        self.epoch = record["epoch"]
        self.history.append(record)
        half = selection_window(config) // 2
        self.pending[self.epoch] = _weights(model, config) if half else None
        return self._decide(self.epoch - half, model, config)

    def settle(self, model: nn.Module, config: TrainConfig) -> bool:
        """The run ends: score the epochs still waiting on the epochs that there are."""
        return self._decide(self.epoch, model, config)

    def _decide(self, upto: int, model: nn.Module, config: TrainConfig) -> bool:
        improved = False
        for epoch in sorted(e for e in self.pending if e <= upto):
            weights = self.pending.pop(epoch)
            value, key = selection_value(self.history, epoch, config.best_metric,
                                         selection_window(config))
            if not np.isfinite(value[0]) or (self.best_value is not None and not value > self.best_value):
                continue
            self.best_value, self.best_epoch, self.best_by = value, epoch, key
            self.best_state = weights if weights is not None else _weights(model, config)
            record = next(r for r in self.history if r["epoch"] == epoch)
            self.best_metrics = {k: v for k, v in record.items() if k.startswith("val_")}
            improved = True
        return improved

    def best_meta(self, meta: CheckpointMeta) -> CheckpointMeta:
        """``meta`` for the best weights, with the history so far (``meta`` is left alone)."""
        return replace(meta, history=list(self.history), epoch=self.best_epoch,
                       val_metrics=dict(self.best_metrics), best_epoch_by=self.best_by)


def _weights(model: nn.Module, config: TrainConfig) -> dict:
    """A CPU copy of the weights to keep (a frozen backbone needs none)."""
    heads_only = config.mode == "heads"
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()
                          if not (heads_only and k.startswith("backbone."))})


def selection_window(config: TrainConfig) -> int:
    """Epochs whose validation is averaged to score one: 1 (``best``) or the smoothing window."""
    return SMOOTHING_WINDOW if config.recipe.select == "smoothed" else 1


def selection_value(history: list[dict], epoch: int, metric: str, window: int = 1,
                    ) -> tuple[tuple[float, float], str]:
    """How good ``epoch`` is, as a tuple to maximise, and the history key it is measured by.

    The validation ``metric``, or without it (no validation, or one class in it) the
    validation loss, else the training loss; averaged over the ``window`` epochs centred on
    ``epoch`` that the history holds. Ties (a saturated AUC, say) go to the lower loss, so
    later, better epochs still win.
    """
    by_epoch = {r["epoch"]: r for r in history}
    record = by_epoch[epoch]
    key, larger = f"val_{metric}", BEST_METRICS[metric]
    if not np.isfinite(record.get(key, np.nan)):
        key = "val_loss" if np.isfinite(record.get("val_loss", np.nan)) else "train_loss"
        larger = False
    half = window // 2
    near = [by_epoch[e] for e in range(epoch - half, epoch + half + 1) if e in by_epoch]

    def mean(values):
        values = [v for v in values if np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    sign = 1.0 if larger else -1.0
    value = mean([r.get(key, np.nan) for r in near])
    loss = mean([r.get("val_loss", r["train_loss"]) for r in near])
    return (sign * value, -loss), key


class MultitaskLoss(nn.Module):
    """SPEC 6 loss: weighted cross-entropy on the class plus smooth L1 on the time."""

    def __init__(self, cls_weight: float = 1.0, reg_weight: float = 1.0):
        super().__init__()
        self.cls_weight, self.reg_weight = cls_weight, reg_weight

    def forward(self, logits, t_pred, y, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cls_loss = nn.functional.cross_entropy(logits.float(), y)
        reg_loss = nn.functional.smooth_l1_loss(t_pred.float(), t)
        return self.cls_weight * cls_loss + self.reg_weight * reg_loss, cls_loss, reg_loss


@dataclass
class _Clock:
    """Elapsed time and ETA over the whole run."""

    epochs: int
    batches: int
    done_before: int = 0  # epochs finished before this process started (resume)
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self, epoch: int, batch: int) -> float:
        done = (epoch - 1 - self.done_before) * self.batches + batch
        return self.elapsed() / done * ((self.epochs - self.done_before) * self.batches - done)


def train_one_epoch(forward, params, criterion: MultitaskLoss, optimizer, scaler, loader, device,
                    epoch: int, config: TrainConfig, clock: _Clock, state: RunState,
                    should_stop: Callable[[], bool] | None = None, autocast: torch.dtype | None = None,
                    after_step: Callable[[], None] | None = None,
                    ) -> Generator[TrainProgress, None, dict | int]:
    """One pass over ``loader``, yielding a ``batch`` event per step.

    ``autocast``: the dtype the forward pass runs in (None: fp32); the model keeps its heads
    in fp32 and the losses are computed in fp32. ``after_step`` runs after every optimizer
    step (a per-step learning-rate schedule, the weights' moving average).
    Returns the epoch's mean training losses, or the 1-based batch it was asked to stop at.
    """
    sums = np.zeros(3)
    seen = 0
    for batch, (x, y, t) in enumerate(loader, start=1):
        if should_stop is not None and should_stop():
            return batch
        share = step_share(loader, batch, len(y))
        if share.real.any() and not share.real.all():  # the sampler's padding stays out
            x, y, t = x[share.real], y[share.real], t[share.real]
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        t = t.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast) if autocast else nullcontext():
            logits, t_pred = forward(x)
        loss, cls_loss, reg_loss = criterion(logits, t_pred, y, t)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * share.weight).backward()  # 1.0 in one process: exact
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if after_step is not None:
            after_step()
        losses = loss.item(), cls_loss.item(), reg_loss.item()
        sums += share.items * np.array(losses)
        seen += share.items
        yield TrainProgress("batch", epoch, config.epochs, batch, clock.batches,
                            loss=losses[0], cls_loss=losses[1], reg_loss=losses[2],
                            elapsed_s=clock.elapsed(), eta_s=clock.eta(epoch, batch),
                            best_epoch=state.best_epoch)
    totals = distributed.sum_across(torch.tensor([*sums, seen])).numpy()
    means = totals[:3] / max(totals[3], 1)
    return dict(zip(("train_loss", "train_cls_loss", "train_reg_loss"), means.tolist()))


def training_autocast(device: torch.device, config: TrainConfig) -> torch.dtype | None:
    """The dtype training's forward pass autocasts to: the recipe's bf16 where the device has
    it, fp16 on CUDA with ``amp`` (and a gradient scaler), else None (fp32).

    bf16 is refused where it would only be emulated (a CPU without bf16 kernels, MPS): it
    would be slower than fp32 and less exact.
    """
    if config.recipe.bf16:
        native = (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (
            device.type == "cpu" and cpu_supports_bf16())
        if not native:
            raise TrainingError(
                f"bf16 training needs a CUDA GPU or a CPU with bf16 instructions (AVX-512 BF16 "
                f"or AMX); {device} has none: train without --bf16-train")
        return torch.bfloat16
    return torch.float16 if config.amp and device.type == "cuda" else None


def warmed_up_ema(decay: float):
    """``get_ema_multi_avg_fn`` whose decay warms up: ``min(decay, (1 + n) / (10 + n))`` after
    ``n`` averaged steps (timm's ModelEma warm-up), so a short run's average is not mostly
    its first weights (a decay of 0.999 looks back about 1000 steps)."""
    def update(ema_params, model_params, n_averaged):
        n = float(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(ema_params, model_params, n_averaged)
    return update


def lr_schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule and whether it is stepped per step (else per epoch).

    SPEC 6: cosine annealing per epoch. With warm-up, a linear ramp over the warm-up
    epochs' steps (from lr / steps to lr), then cosine annealing per step to ``eta_min``.
    """
    warm = config.recipe.warmup_epochs * steps_per_epoch
    if not warm:
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs, eta_min=config.eta_min), False
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0,
                                             total_iters=warm)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(config.epochs * steps_per_epoch - warm, 1), eta_min=config.eta_min)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warm]), True


def freeze_batchnorm(net: nn.Module) -> None:
    """BatchNorm layers to eval mode: running statistics fixed, affine weights still trained."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def best_epoch_note(best_by: str | None) -> str | None:
    """What to tell the user when no validation data chose the best epoch."""
    if best_by != "train_loss":
        return None
    return ("no validation data: the best epoch is chosen by training loss, which favours "
            "the most overfitted epoch; label more wells or raise the validation share")


def iter_train(
    model: MultitaskResNet,
    train_ds: ItemDataset,
    val_ds: ItemDataset | None,
    config: TrainConfig,
    meta: CheckpointMeta,
    checkpoint_path: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    feature_cache: FeatureCache | None = None,
    run_state_path: str | Path | None = None,
    resume: dict | None = None,
) -> Iterator[TrainProgress]:
    """Train ``model`` in place, yielding progress; ends with the best weights loaded.

    The loop of torchvision's reference ``train.py``: per epoch :func:`train_one_epoch`,
    the scheduler step, :func:`evaluate`, then the best weights are kept and, when
    ``checkpoint_path`` is given, saved with ``meta`` (which itself is not changed; the
    final event carries the metadata that was saved). With ``run_state_path`` the whole
    run state is saved after every epoch; ``resume`` (such a state, loaded) continues it.

    Under torchrun every process runs this with the same arguments: the model is wrapped
    in DistributedDataParallel, each rank trains on its share of every global batch
    (``config.batch_size`` is the global batch), validation is gathered from all ranks,
    and only rank 0 writes files.

    ``feature_cache`` (heads-only mode) is reused across calls; without one a fresh cache
    serves this run. Heads-only training sees un-augmented crops (their features are
    cached), whatever the dataset's augmentation.

    ``config.recipe`` (core.recipes) sets the rest: the precision, warm-up, balanced
    sampling, an EMA of the weights (validated and saved instead of the raw weights),
    frozen BatchNorm statistics and the selection rule; the saved metadata records it.
    Native tiles are cut by the caller (the items); ``meta`` must say so (tile and input
    size).
    """
    check_trainable(train_ds)
    recipe = config.applied_recipe
    tiles = recipe.native_tiles
    if tiles is not None and (meta.tile_size != tiles or meta.preprocessing.image_size != tiles):
        raise TrainingError(
            f"native {tiles} px tiles need items cut into {tiles} px tiles and a {tiles} px "
            f"model input; got tiles of {meta.tile_size} px and {meta.preprocessing.image_size} px")
    meta = replace(meta, recipe=recipe.to_dict())
    ranks, device = distributed.start(config.device)
    if config.batch_size % ranks.world_size:
        raise TrainingError(
            f"the batch size {config.batch_size} is the global batch; it must be a multiple "
            f"of the {ranks.world_size} processes")
    rank_batch = config.batch_size // ranks.world_size
    seed_everything(config.seed)
    model.to(device)
    heads_only = config.mode == "heads"
    model.freeze_backbone(heads_only)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # As many steps per epoch as the loader below gives every rank.
    steps = math.ceil(math.ceil(len(train_ds) / ranks.world_size) / rank_batch)
    scheduler, per_step = lr_schedule(optimizer, config, steps)
    autocast = None if heads_only else training_autocast(device, config)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast == torch.float16)
    criterion = MultitaskLoss(config.cls_weight, config.reg_weight)
    # The average follows the weights and BatchNorm statistics; validated and saved.
    ema = (AveragedModel(model, multi_avg_fn=warmed_up_ema(recipe.ema), use_buffers=True)
           if recipe.ema else None)
    scored = model if ema is None else ema.module
    state = RunState()
    if resume is not None:
        state = _resume(resume, config, ranks, model, optimizer, scheduler, scaler, ema)
    clock = _Clock(config.epochs, 0, done_before=state.epoch)
    if heads_only:
        features = yield from _backbone_features(model, train_ds, val_ds, config, device,
                                                 feature_cache, should_stop, clock)
        if features is None:
            yield TrainProgress("stopped", 1, config.epochs, 0, 0, elapsed_s=clock.elapsed())
            return
        labels, times = train_ds.targets()
        train_set = TensorDataset(features["train"], torch.as_tensor(labels),
                                  torch.as_tensor(times, dtype=torch.float32))
        net = _Heads(model)
    else:
        train_set = train_ds
        net = distributed.sync_batchnorm(model, device) if config.sync_bn else model
    if ranks.world_size > 1:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    # The same order of the training set per epoch whatever the number of processes:
    # rank r takes every r-th item of it, so a global batch is the same items as in one process.
    sampler = training_sampler(train_set, *train_ds.targets(), recipe.balanced,
                               ranks.world_size, ranks.rank, config.seed)
    loader = DataLoader(train_set, batch_size=rank_batch, sampler=sampler,
                        num_workers=config.num_workers, pin_memory=device.type == "cuda")
    clock.batches = len(loader)

    def after_step() -> None:
        if per_step:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)

    def save_best() -> None:
        if ranks.is_main and checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {**model.state_dict(), **state.best_state},
                            state.best_meta(meta))

    def finished(stage: str, epoch: int, batch: int) -> TrainProgress:
        if state.settle(scored, config):  # smoothed selection: the last epochs' scores
            save_best()
        # Best weights first: whoever reads the event may use the model at once.
        _restore(model, state.best_state)
        return TrainProgress(
            stage, epoch, config.epochs, batch, clock.batches, elapsed_s=clock.elapsed(),
            best_epoch=state.best_epoch, history=state.history, best_by=state.best_by,
            checkpoint=_str(checkpoint_path) if state.best_epoch else None,
            meta=state.best_meta(meta) if state.best_epoch else None)

    for epoch in range(state.epoch + 1, config.epochs + 1):
        sampler.set_epoch(epoch)
        net.train()
        if heads_only:
            model.backbone.eval()  # frozen BatchNorm statistics stay as loaded
        if recipe.bn == "frozen":
            freeze_batchnorm(net)
        losses = yield from train_one_epoch(net, params, criterion, optimizer, scaler, loader,
                                            device, epoch, config, clock, state, should_stop,
                                            autocast, after_step if per_step or ema else None)
        if isinstance(losses, int):
            yield finished("stopped", epoch, losses)
            return
        if not per_step:
            scheduler.step()
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **losses}
        if heads_only and "val" in features:
            record.update(evaluate_features(scored, features["val"], val_ds, config, device, meta))
        elif val_ds is not None and len(val_ds):
            record.update(evaluate(scored, val_ds, config, device, meta))
        record["seconds"] = clock.elapsed()
        improved = state.consider(record, scored, config)
        rngs = distributed.all_gather(rng_state()) if run_state_path is not None else None
        if improved:
            save_best()
        if ranks.is_main and run_state_path is not None:
            save_run_state(run_state_path, _run_state(state, config, model, optimizer,
                                                      scheduler, scaler, rngs, ema))
        yield TrainProgress("epoch", epoch, config.epochs, clock.batches, clock.batches,
                            loss=record["train_loss"], cls_loss=record["train_cls_loss"],
                            reg_loss=record["train_reg_loss"], record=record,
                            elapsed_s=clock.elapsed(), eta_s=clock.eta(epoch, clock.batches),
                            best_epoch=state.best_epoch, best_by=state.best_by,
                            checkpoint=_str(checkpoint_path) if state.best_epoch else None)
    done = finished("done", config.epochs, clock.batches)
    if checkpoint_path is not None and done.meta is not None and ranks.is_main:
        # The history in the file covers the whole run, not only up to the best epoch.
        save_checkpoint(checkpoint_path, model, done.meta)
    yield done


class _Heads(nn.Module):
    """The heads of ``model`` as a module of their own (features in), for DDP to wrap."""

    def __init__(self, model: MultitaskResNet):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model.forward_heads(features)


#: Settings that must match for a run state to be continued (the device may change).
_RESUME_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "eta_min", "cls_weight",
                "reg_weight", "grad_clip", "mode", "best_metric", "seed", "sync_bn", "recipe")


def _run_state(state: RunState, config, model, optimizer, scheduler, scaler, rngs, ema) -> dict:
    return {
        "config": asdict(config),
        "ema": None if ema is None else ema.state_dict(),
        "pending": state.pending,
        "epoch": state.epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rngs,
        "history": state.history,
        "best_value": state.best_value,
        "best_epoch": state.best_epoch,
        "best_state": state.best_state,
        "best_metrics": state.best_metrics,
        "best_by": state.best_by,
    }


def _resume(saved: dict, config: TrainConfig, ranks, model, optimizer, scheduler,
            scaler, ema) -> RunState:
    """Load a saved run state into the model, optimizer, scheduler, scaler, EMA and RNGs."""
    # The applied recipe (augment folded in): a state saved before recipes has only the
    # augment flag, and today's --no-augment is the research recipe with augment none.
    now = {**asdict(config), "recipe": config.applied_recipe.to_dict()}
    saved_config = saved["config"]
    was_recipe = applied_recipe(Recipe.from_dict(saved_config.get("recipe")) or RESEARCH,
                                saved_config.get("augment", True),
                                saved_config.get("mode", "full"))
    was = {**saved_config, "recipe": was_recipe.to_dict()}
    differ = [k for k in _RESUME_KEYS if was.get(k) != now[k]]
    if differ:
        raise RunStateError(
            "the run state was saved with other settings ("
            + ", ".join(f"{k} {was.get(k)!r} now {now[k]!r}" for k in differ)
            + "): resume with the same settings, or start again with --overwrite")
    model.load_state_dict(saved["model"])
    if ema is not None:
        ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    rngs = saved["rng"]
    if rngs and ranks.rank < len(rngs):  # exact only with as many processes as before
        set_rng_state(rngs[ranks.rank])
    best = saved["best_value"]
    return RunState(epoch=saved["epoch"], history=list(saved["history"]),
                    best_value=None if best is None else tuple(best),
                    best_epoch=saved["best_epoch"], best_state=saved["best_state"],
                    best_metrics=dict(saved["best_metrics"]), best_by=saved.get("best_by"),
                    pending=dict(saved.get("pending") or {}))


def _backbone_features(model, train_ds, val_ds, config, device, cache, should_stop, clock,
                       ) -> Generator[TrainProgress, None, dict[str, torch.Tensor] | None]:
    """Heads-only: backbone features of the training and validation items (None if stopped).

    Under torchrun each process computes the features of a contiguous share of the items
    (progress counts its share) and the shares are gathered, so every process holds all
    features: the sampler hands each process other items every epoch.
    """
    cache = cache if cache is not None else FeatureCache()
    # The precision prediction runs the backbone in (fp32 on the CPU, fp16 on CUDA), so the
    # heads learn on the features they will be given; the cache keys on it.
    amp_dtype = prediction_dtype(device, "auto" if config.amp else "fp32")
    ranks = distributed.current_ranks()
    features: dict[str, torch.Tensor] = {}
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if ds is None or not len(ds):
            continue
        if ranks.world_size > 1:
            ds = ds.subset(np.array_split(np.arange(len(ds)), ranks.world_size)[ranks.rank])
        for event in cache.iter_features(model.backbone, ds, device, amp_dtype,
                                         config.batch_size, should_stop):
            if isinstance(event, torch.Tensor):
                features[name] = event
            else:
                yield TrainProgress("features", 0, config.epochs, event.done, event.total,
                                    elapsed_s=clock.elapsed())
        if name not in features:
            return None
        if ranks.world_size > 1:  # rank order is item order; a share may be empty
            features[name] = torch.cat([f for f in distributed.all_gather(features[name])
                                        if len(f)])
    return features


def evaluate(model, val_ds: ItemDataset, config: TrainConfig, device, meta: CheckpointMeta) -> dict:
    """Validation losses and metrics over the whole validation set, prefixed ``val_``.

    Under torchrun each rank predicts every world-size-th item and the outputs are gathered,
    so every item counts exactly once (no padding duplicates) and all ranks get one record.
    """
    model.eval()
    ranks = distributed.current_ranks()
    index = list(range(ranks.rank, len(val_ds), ranks.world_size))
    loader = DataLoader(Subset(val_ds, index), batch_size=config.batch_size, shuffle=False,
                        num_workers=config.num_workers)
    logits_all, t_all, y_all, target_all = [], [], [], []
    with torch.inference_mode():
        for x, y, t in loader:
            logits, t_pred = model(x.to(device))
            logits_all.append(logits.float().cpu())
            t_all.append(t_pred.float().cpu())
            y_all.append(y)
            target_all.append(t)
    mine = [torch.as_tensor(index, dtype=torch.long)] + [
        torch.cat(parts) if parts else torch.empty(0)
        for parts in (logits_all, t_all, y_all, target_all)]
    gathered = [part for part in distributed.all_gather(mine) if len(part[0])]
    order = torch.argsort(torch.cat([part[0] for part in gathered]))
    logits, t_pred, y, t = (torch.cat([part[i] for part in gathered])[order] for i in range(1, 5))
    return _val_record(logits, t_pred, y, t, config, meta)


def evaluate_features(model, features, val_ds: ItemDataset, config: TrainConfig, device,
                       meta: CheckpointMeta) -> dict:
    """Like :func:`evaluate`, from cached backbone features through the heads only."""
    model.eval()
    with torch.inference_mode():
        logits, t_pred = model.forward_heads(features.to(device))
    labels, times = val_ds.targets()
    y, t = torch.as_tensor(labels), torch.as_tensor(times, dtype=torch.float32)
    return _val_record(logits.float().cpu(), t_pred.float().cpu(), y, t, config, meta)


def _val_record(logits, t_pred, y, t, config: TrainConfig, meta: CheckpointMeta) -> dict:
    cls_loss = nn.functional.cross_entropy(logits, y).item()
    reg_loss = nn.functional.smooth_l1_loss(t_pred, t).item()
    p = torch.softmax(logits, 1)[:, 1].numpy()
    lo, hi = meta.time.clamp
    cls = classification_metrics(y.numpy(), p)
    reg = regression_metrics(t.numpy(), t_pred.clamp(lo, hi).numpy())
    return {
        "val_loss": config.cls_weight * cls_loss + config.reg_weight * reg_loss,
        "val_cls_loss": cls_loss,
        "val_reg_loss": reg_loss,
        "val_roc_auc": cls["roc_auc"],
        "val_accuracy": cls["accuracy"],
        "val_f1": cls["f1"],
        "val_mae": reg["mae"],
        "val_rmse": reg["rmse"],
    }


def run_training(*args, **kwargs) -> TrainProgress:
    """Drive :func:`iter_train` to the end; return its last event."""
    last = None
    for last in iter_train(*args, **kwargs):
        pass
    return last


def _restore(model: nn.Module, state: dict | None) -> None:
    """Load the best weights (heads-only runs keep the heads alone; the backbone is frozen)."""
    if state is not None:
        model.load_state_dict(state, strict=state.keys() == model.state_dict().keys())


def _str(path) -> str | None:
    return None if path is None else str(path)


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
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import CheckpointMeta, save_checkpoint
from .dataset import ItemDataset
from .device import select_device
from .feature_cache import FeatureCache
from .metrics import classification_metrics, regression_metrics
from .model import MultitaskResNet
from .runtime import autocast_dtype

TRAIN_MODES = ("full", "heads")
#: Validation metric name -> whether larger is better.
BEST_METRICS = {"roc_auc": True, "accuracy": True, "f1": True, "mae": False, "loss": False}


@dataclass(frozen=True)
class TrainConfig:
    """SPEC 6 defaults, except a CPU-friendly batch size."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    eta_min: float = 1e-6
    cls_weight: float = 1.0
    reg_weight: float = 1.0
    grad_clip: float = 1.0
    mode: str = "full"
    augment: bool = True
    best_metric: str = "roc_auc"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0

    def __post_init__(self):
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"training mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.best_metric not in BEST_METRICS:
            raise ValueError(f"best_metric must be one of {tuple(BEST_METRICS)}, got {self.best_metric!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch size must be at least 1 and the learning rate positive")


@dataclass
class TrainProgress:
    """A small event: after each batch (``stage='batch'``), epoch, and at the end."""

    stage: str  # "features" (heads-only: backbone passes, batch/batches), "batch", "epoch",
    # "done" or "stopped"
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


class TrainingError(ValueError):
    """Training cannot start with what it was given."""


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


def iter_train(
    model: MultitaskResNet,
    train_ds: ItemDataset,
    val_ds: ItemDataset | None,
    config: TrainConfig,
    meta: CheckpointMeta,
    checkpoint_path: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    feature_cache: FeatureCache | None = None,
) -> Iterator[TrainProgress]:
    """Train ``model`` in place, yielding progress; ends with the best weights loaded.

    ``feature_cache`` (heads-only mode) is reused across calls; without one a fresh cache
    serves this run. Heads-only training sees un-augmented crops (their features are
    cached), whatever the dataset's augmentation.
    """
    check_trainable(train_ds)
    device = select_device(config.device)
    generator = seed_everything(config.seed)
    model.to(device)
    heads_only = config.mode == "heads"
    model.freeze_backbone(heads_only)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.eta_min)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start = time.perf_counter()
    if heads_only:
        cache = feature_cache if feature_cache is not None else FeatureCache()
        amp_dtype = autocast_dtype(device, "auto" if config.amp else "fp32")
        features: dict[str, torch.Tensor] = {}
        for name, ds in (("train", train_ds), ("val", val_ds)):
            if ds is None or not len(ds):
                continue
            for event in cache.iter_features(model.backbone, ds, device, amp_dtype,
                                             config.batch_size, should_stop):
                if isinstance(event, torch.Tensor):
                    features[name] = event
                else:
                    yield TrainProgress("features", 0, config.epochs, event.done, event.total,
                                        elapsed_s=time.perf_counter() - start)
            if name not in features:
                yield TrainProgress("stopped", 1, config.epochs, 0, 0,
                                    elapsed_s=time.perf_counter() - start)
                return
        loader = _FeatureBatches(features["train"], train_ds, config.batch_size, generator)
        forward = model.forward_heads
    else:
        loader = DataLoader(
            train_ds, batch_size=config.batch_size, shuffle=True, generator=generator,
            num_workers=config.num_workers, pin_memory=device.type == "cuda", drop_last=False,
        )
        forward = model
    ce, smooth_l1 = nn.CrossEntropyLoss(), nn.SmoothL1Loss()
    best_value, best_epoch, best_state = None, None, None
    history: list[dict] = []
    batches = len(loader)
    total_batches = batches * config.epochs

    for epoch in range(1, config.epochs + 1):
        model.train()
        if heads_only:
            model.backbone.eval()  # frozen BatchNorm statistics stay as loaded
        sums = np.zeros(3)
        seen = 0
        for batch, (x, y, t) in enumerate(loader, start=1):
            if should_stop is not None and should_stop():
                # Best weights first: whoever reads "stopped" may use the model at once.
                _restore(model, best_state)
                yield TrainProgress("stopped", epoch, config.epochs, batch, batches,
                                    elapsed_s=time.perf_counter() - start, best_epoch=best_epoch,
                                    checkpoint=_str(checkpoint_path) if best_epoch else None,
                                    history=history)
                return
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            t = t.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
                logits, t_pred = forward(x)
                cls_loss = ce(logits.float(), y)
                reg_loss = smooth_l1(t_pred.float(), t)
                loss = config.cls_weight * cls_loss + config.reg_weight * reg_loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            n = len(y)
            sums += n * np.array([loss.item(), cls_loss.item(), reg_loss.item()])
            seen += n
            elapsed = time.perf_counter() - start
            done = (epoch - 1) * batches + batch
            yield TrainProgress("batch", epoch, config.epochs, batch, batches,
                                loss=loss.item(), cls_loss=cls_loss.item(), reg_loss=reg_loss.item(),
                                elapsed_s=elapsed, eta_s=elapsed / done * (total_batches - done),
                                best_epoch=best_epoch)
        scheduler.step()
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        record.update(zip(("train_loss", "train_cls_loss", "train_reg_loss"), (sums / max(seen, 1)).tolist()))
        if heads_only and "val" in features:
            record.update(_validate_features(model, features["val"], val_ds, config, device, meta))
        elif val_ds is not None and len(val_ds):
            record.update(validate(model, val_ds, config, device, meta))
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        key, larger = f"val_{config.best_metric}", BEST_METRICS[config.best_metric]
        if not np.isfinite(record.get(key, np.nan)):  # no validation, or one class in it
            key = "val_loss" if np.isfinite(record.get("val_loss", np.nan)) else "train_loss"
            larger = False
        # Ties (a saturated AUC, say) go to the lower loss, so later, better epochs still win.
        sign = 1.0 if larger else -1.0
        value = (sign * record[key], -record.get("val_loss", record["train_loss"]))
        if np.isfinite(value[0]) and (best_value is None or value > best_value):
            best_value, best_epoch = value, epoch
            best_state = copy.deepcopy({  # a frozen backbone needs no copy
                k: v.detach().cpu() for k, v in model.state_dict().items()
                if not (heads_only and k.startswith("backbone."))
            })
            if checkpoint_path is not None:
                meta.history = list(history)
                meta.epoch = epoch
                meta.val_metrics = {k: v for k, v in record.items() if k.startswith("val_")}
                save_checkpoint(checkpoint_path, model, meta)
        elapsed = time.perf_counter() - start
        yield TrainProgress("epoch", epoch, config.epochs, batches, batches,
                            loss=record["train_loss"], cls_loss=record["train_cls_loss"],
                            reg_loss=record["train_reg_loss"], record=record, elapsed_s=elapsed,
                            eta_s=elapsed / epoch * (config.epochs - epoch), best_epoch=best_epoch,
                            checkpoint=_str(checkpoint_path) if best_epoch else None)
    _restore(model, best_state)
    if checkpoint_path is not None and best_epoch is not None:
        # The history in the file covers the whole run, not only up to the best epoch.
        meta.history = list(history)
        save_checkpoint(checkpoint_path, model, meta)
    yield TrainProgress("done", config.epochs, config.epochs, batches, batches,
                        elapsed_s=time.perf_counter() - start, best_epoch=best_epoch,
                        checkpoint=_str(checkpoint_path) if best_epoch else None, history=history)


def validate(model, val_ds: ItemDataset, config: TrainConfig, device, meta: CheckpointMeta) -> dict:
    """Validation losses and metrics, prefixed ``val_``."""
    model.eval()
    loader = DataLoader(val_ds, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers)
    logits_all, t_all, y_all, target_all = [], [], [], []
    with torch.inference_mode():
        for x, y, t in loader:
            logits, t_pred = model(x.to(device))
            logits_all.append(logits.float().cpu())
            t_all.append(t_pred.float().cpu())
            y_all.append(y)
            target_all.append(t)
    logits, t_pred = torch.cat(logits_all), torch.cat(t_all)
    y, t = torch.cat(y_all), torch.cat(target_all)
    return _val_record(logits, t_pred, y, t, config, meta)


def _validate_features(model, features, val_ds: ItemDataset, config: TrainConfig, device,
                       meta: CheckpointMeta) -> dict:
    """Like :func:`validate`, from cached backbone features through the heads only."""
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


class _FeatureBatches:
    """Shuffled batches of (features, class, time target), as the DataLoader gives images."""

    def __init__(self, features: torch.Tensor, dataset: ItemDataset, batch_size: int,
                 generator: torch.Generator):
        labels, times = dataset.targets()
        self.features = features
        self.y = torch.as_tensor(labels)
        self.t = torch.as_tensor(times, dtype=torch.float32)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.features[idx], self.y[idx], self.t[idx]


def _restore(model: nn.Module, state: dict | None) -> None:
    """Load the best weights (heads-only runs keep the heads alone; the backbone is frozen)."""
    if state is not None:
        model.load_state_dict(state, strict=state.keys() == model.state_dict().keys())


def _str(path) -> str | None:
    return None if path is None else str(path)


"""The training recipe's options (core.recipes), each checked for what it does."""

from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from napari_infection_clock.cli.parser import parse
from napari_infection_clock.cli.train import training_recipe
from napari_infection_clock.core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from napari_infection_clock.core.dataset import ItemDataset
from napari_infection_clock.core.items import FramePolicy, research_items, split_by_group
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.preprocess import Preprocessing, training_augmentation
from napari_infection_clock.core.recipes import CLOCK, RECIPES, RESEARCH, Recipe, describe_recorded
from napari_infection_clock.core.runtime import cpu_supports_bf16
from napari_infection_clock.core.sampling import (
    DistributedWeightedSampler,
    balanced_weights,
    training_sampler,
)
from napari_infection_clock.core.synthetic import write_research_dataset
from napari_infection_clock.core.targets import TimePolicy
from napari_infection_clock.core.trainer import (
    RunState,
    TrainConfig,
    lr_schedule,
    run_training,
    training_autocast,
)

PREP = Preprocessing(image_size=32)


def test_research_preset_is_todays_training():
    """The default recipe changes nothing: SPEC 6 as before, every option off."""
    assert TrainConfig().recipe == RESEARCH == RECIPES["research"]
    assert RESEARCH == Recipe(augment="spec", bf16=False, native_tiles=None, warmup_epochs=0,
                              balanced=False, ema=0.0, bn="batch", select="best", lr=None,
                              best_metric=None)
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.lr, config.weight_decay, config.eta_min,
            config.augmentation) == (10, 32, 1e-4, 1e-4, 1e-6, "spec")
    _, opts, _ = parse(["train", "data", "--out", "out"])
    assert training_recipe(opts) == RESEARCH
    # --no-augment is --augment none; a flag overrides the preset it is given with.
    _, opts, _ = parse(["train", "data", "--out", "o", "--recipe", "clock", "--no-augment",
                        "--no-balanced", "--ema", "0.9"])
    chosen = training_recipe(opts)
    assert chosen == replace(CLOCK, augment="none", balanced=False, ema=0.9)
    assert chosen.describe() == "clock, augment none, ema 0.9"
    # A recipe may set the learning rate and best-epoch metric; the command's flags win.
    config = TrainConfig(recipe=replace(CLOCK, lr=1e-3, best_metric="loss"))
    assert (config.lr, config.best_metric) == (1e-3, "loss")
    # ... as defaults only: a value given to TrainConfig (or replace) wins over the recipe's.
    given = TrainConfig(lr=0.5, best_metric="mae", recipe=replace(CLOCK, lr=1e-3,
                                                                  best_metric="loss"))
    assert (given.lr, given.best_metric) == (0.5, "mae")
    assert (replace(config, lr=0.5).lr, replace(config, best_metric="f1").best_metric) == (
        0.5, "f1")
    assert (TrainConfig().lr, TrainConfig().best_metric) == (1e-4, "roc_auc")
    _, opts, _ = parse(["train", "data", "--out", "o", "--lr", "0.01", "--best-metric", "mae"])
    assert training_recipe(opts) == replace(RESEARCH, lr=0.01, best_metric="mae")


def test_warmup_ramps_per_step_then_cosine():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    config = TrainConfig(epochs=3, lr=1.0, eta_min=0.0, recipe=replace(RESEARCH, warmup_epochs=1))
    scheduler, per_step = lr_schedule(optimizer, config, steps_per_epoch=4)
    assert per_step
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    ramp, rest = np.array(lrs[:4]), np.array(lrs[4:])
    assert ramp[0] == pytest.approx(0.25) and np.allclose(np.diff(ramp), np.diff(ramp)[0])
    assert np.all(np.diff(ramp) > 0) and ramp[-1] < 1.0
    assert rest[0] == pytest.approx(1.0) and np.all(np.diff(rest) < 0)  # cosine from lr down
    assert rest[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 7 / 8)))
    # Without warm-up: SPEC 6's cosine per epoch, as before.
    scheduler, per_step = lr_schedule(optimizer, TrainConfig(epochs=3), steps_per_epoch=4)
    assert not per_step and isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)


def test_balanced_sampling_evens_class_and_time_and_splits_over_ranks():
    # 60 mock items late in the run, 10 infected early ones, 30 infected late ones.
    labels = np.array([0] * 60 + [1] * 10 + [1] * 30)
    times = np.array([20.0] * 60 + [2.0] * 10 + [20.0] * 30)
    weights = balanced_weights(labels, times)
    drawn = []
    sampler = DistributedWeightedSampler(weights, seed=3)
    for epoch in range(40):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    cell = np.where(labels == 0, 0, np.where(times < 6, 1, 2))[drawn]
    shares = np.bincount(cell, minlength=3) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.03), shares
    # Two ranks take turns in the same draw that one process makes: the same global batches.
    sampler.set_epoch(7)
    whole = list(sampler)
    halves = []
    for rank in range(2):
        part = DistributedWeightedSampler(weights, num_replicas=2, rank=rank, seed=3)
        part.set_epoch(7)
        halves.append(list(part))
    assert [i for pair in zip(*halves) for i in pair] == whole


@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("items", [1, 2, 3, 4])
def test_every_rank_gets_a_full_share_of_a_tiny_set(items, balanced):
    """Fewer items than processes: each rank still gets len(sampler) items (else DDP hangs).

    Rank r holds positions r, r + W, ... of one padded global order whose first ``items``
    positions are the one-process draw (``step_share`` counts the rest as padding).
    """
    labels, times = np.arange(items) % 2, np.zeros(items)

    def sampler(world, rank):
        made = training_sampler(range(items), labels, times, balanced, world, rank, seed=3)
        made.set_epoch(2)
        return made

    draw = list(sampler(1, 0))
    for world in range(1, 7):
        parts = []
        for rank in range(world):
            part = sampler(world, rank)
            parts.append(list(part))
            assert len(parts[-1]) == len(part), (items, world, rank)
        order = [parts[p % world][p // world] for p in range(len(parts[0]) * world)]
        assert order[:items] == draw
        assert order == [draw[p % items] for p in range(len(order))]


def _select(history, config):
    """The trainer's choice: each epoch's record through ``RunState.consider``, then
    ``settle`` at the end, with a model whose weight is the epoch."""
    state, model = RunState(), torch.nn.Linear(1, 1, bias=False)
    for record in history:
        model.weight.data.fill_(record["epoch"])
        state.consider(record, model, config)
        model.weight.data.fill_(-1.0)  # what the next epoch's training would change
    state.settle(model, config)
    return state.best_epoch, float(state.best_state["weight"])


def test_smoothed_selection_is_not_fooled_by_one_lucky_epoch():
    aucs = [0.60, 0.99, 0.60, 0.85, 0.90, 0.92, 0.90, 0.70]
    history = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "val_roc_auc": a}
               for e, a in enumerate(aucs, start=1)]
    smoothed = replace(RESEARCH, select="smoothed")
    assert _select(history, TrainConfig()) == (2, 2.0)
    assert _select(history, TrainConfig(recipe=smoothed)) == (6, 6.0)
    # Losses are minimised; the last epoch is scored on the window that exists (at settle).
    losses = [{"epoch": e, "train_loss": 1.0, "val_loss": v}
              for e, v in enumerate([3.0, 2.0, 1.5, 1.0, 0.5], start=1)]
    assert _select(losses, TrainConfig(best_metric="loss", recipe=smoothed)) == (5, 5.0)


def test_microscopy_augmentation_changes_intensities_within_bounds():
    torch.manual_seed(0)
    ramp = torch.linspace(40, 200, 32).round().to(torch.uint8)
    image = ramp.expand(32, 32).expand(1, 3, 32, 32).contiguous()

    def stats(kind):
        outs = [training_augmentation(kind)(image) for _ in range(40)]
        assert all(o.dtype == torch.uint8 and o.shape == image.shape for o in outs)
        assert all(torch.equal(o[:, 0], o[:, 1]) for o in outs)  # grayscale stays grayscale
        return np.array([o.float().mean().item() for o in outs]), np.array(
            [o.float().std().item() for o in outs])

    spec_mean, spec_std = stats("spec")
    mean, std = stats("microscopy")
    assert mean.std() > 3 * spec_mean.std() and std.std() > 2 * spec_std.std()
    base = image.float().mean().item()
    assert np.all((mean > 0.3 * base) & (mean < 1.7 * base))
    assert training_augmentation("none") is None


@pytest.mark.skipif(not cpu_supports_bf16(), reason="needs a CPU with bf16 instructions")
def test_bf16_training_keeps_heads_and_losses_fp32():
    config = TrainConfig(device="cpu", recipe=replace(RESEARCH, bf16=True))
    dtype = training_autocast(torch.device("cpu"), config)
    assert dtype == torch.bfloat16
    model = build_model(ModelConfig(arch="resnet18", hidden_dim=16), init="random")
    with torch.autocast("cpu", dtype=dtype):
        assert model.backbone(torch.rand(2, 3, 32, 32)).dtype == torch.bfloat16
        logits, hours = model(torch.rand(2, 3, 32, 32))
    assert logits.dtype == hours.dtype == torch.float32


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    write_research_dataset(root, n_infected=2, n_mock=2, n_frames=8, size=32, seed=4)
    items = research_items(root, FramePolicy())
    return split_by_group(items, 0.25, 0.0, seed=0)[:2]


def _train(split, recipe, path):
    train, val = split
    torch.manual_seed(0)
    config = ModelConfig(arch="resnet18", hidden_dim=16)
    model = build_model(config, init="random")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    meta = CheckpointMeta(model=config, preprocessing=PREP, time=TimePolicy())
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, device="cpu", recipe=recipe)
    last = run_training(model, ItemDataset(train, PREP, augment=cfg.augmentation),
                        ItemDataset(val, PREP), cfg, meta, checkpoint_path=path)
    return start, model, last


def test_ema_is_validated_and_saved_and_frozen_bn_keeps_its_statistics(split, tmp_path):
    """The raw trajectory is the same with and without the average (same seed): the saved
    weights of the EMA run are the average, which lags behind the raw weights."""
    raw_recipe = replace(RESEARCH, name="clock", bn="frozen")
    start, raw, _ = _train(split, raw_recipe, tmp_path / "raw.pt")
    _, averaged, last = _train(split, replace(raw_recipe, ema=0.99), tmp_path / "ema.pt")
    buffers = [k for k in start if "running_" in k]
    assert buffers and all(torch.equal(raw.state_dict()[k], start[k]) for k in buffers)
    saved, meta = load_checkpoint(tmp_path / "ema.pt")
    weights = [k for k, v in start.items() if v.is_floating_point() and k not in buffers]

    def moved(state):
        return sum((state[k].float() - start[k].float()).norm().item() for k in weights)

    assert 0 < moved(saved.state_dict()) < moved(raw.state_dict())
    assert not all(torch.equal(saved.state_dict()[k], raw.state_dict()[k]) for k in weights)
    assert all(torch.equal(saved.state_dict()[k], averaged.state_dict()[k]) for k in weights)
    # The checkpoint records its recipe as plain data: it loads with weights_only=True.
    assert meta.recipe == replace(raw_recipe, ema=0.99).to_dict() == last.meta.recipe
    payload = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert Recipe.from_dict(payload["meta"]["recipe"]) == replace(raw_recipe, ema=0.99)


def test_heads_only_records_the_recipe_that_ran(split, tmp_path):
    """Heads-only training runs the heads in fp32 on cached, un-augmented features: the
    checkpoint says so, not the bf16 and augmentation it was asked for."""
    train, val = split
    config = ModelConfig(arch="resnet18", hidden_dim=16)
    meta = CheckpointMeta(model=config, preprocessing=PREP, time=TimePolicy())
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", mode="heads",
                      recipe=replace(CLOCK, bf16=True))
    run_training(build_model(config, init="random"), ItemDataset(train, PREP),
                 ItemDataset(val, PREP), cfg, meta, checkpoint_path=tmp_path / "m.pt")
    _, saved = load_checkpoint(tmp_path / "m.pt")
    assert saved.recipe == replace(CLOCK, bf16=False, augment="none").to_dict()


def test_checkpoint_without_a_recipe_loads_as_unknown(tmp_path):
    config = ModelConfig(arch="resnet18", hidden_dim=16)
    meta = CheckpointMeta(model=config, preprocessing=PREP)
    path = save_checkpoint(tmp_path / "old.pt", build_model(config, init="random"), meta)
    payload = torch.load(path, weights_only=True)
    del payload["meta"]["recipe"]  # as files written before recipes were recorded
    torch.save(payload, path)
    _, loaded = load_checkpoint(path)
    assert loaded.recipe == {} and describe_recorded(loaded.recipe).startswith("unknown")
    assert {f.name for f in fields(Recipe)} == set(CLOCK.to_dict())


def test_native_tiles_from_viewer_labels(tmp_path):
    """The training dock's path: whole-frame labels give their tiles, each with the frame's
    label and time, and the model is trained on them at their own size."""
    from napari_infection_clock.core.annotations import open_annotations
    from napari_infection_clock.core.retrain import (
        iter_retrain,
        labels_of,
        plan_from_labels,
        start_model,
        time_policy_of,
    )

    paths = write_research_dataset(tmp_path, n_infected=2, n_mock=2, n_frames=6, size=32, seed=5)
    stores = []
    for path in paths:
        store, sidecar = open_annotations(path, 6, frame_interval_h=0.5)
        if path.parent.name == "infected":
            store.set_condition("infected", onset_h=1.0)
            store.label_frames(range(2, 6), "infected")
        else:
            store.set_condition("mock")
            store.label_frames(range(6), "uninfected")
        store.save(sidecar)
        stores.append(store)
    table = labels_of(stores)
    whole = plan_from_labels(table, val_fraction=0.25)
    plan = plan_from_labels(table, val_fraction=0.25, native_tiles=16)
    assert len(plan.train) + len(plan.val) == 4 * (len(whole.train) + len(whole.val))
    frames = {}
    for item in [*plan.train, *plan.val]:
        assert item.box[2] - item.box[0] == item.box[3] - item.box[1] == 16
        frames.setdefault((item.stack, item.frame), set()).add((item.label, item.time_target))
    assert all(len(v) == 1 for v in frames.values()) and len(frames) * 4 == len(plan.train) + len(plan.val)
    model, meta = start_model("random", ModelConfig(arch="resnet18", hidden_dim=8), 64,
                              time_policy_of(plan))
    config = TrainConfig(epochs=1, batch_size=16, device="cpu", mode="heads",
                         recipe=replace(RESEARCH, native_tiles=16))
    last = list(iter_retrain(model, meta, plan, config, tmp_path / "m.pt"))[-1]
    assert last.stage == "done"
    assert last.meta.tile_size == last.meta.preprocessing.image_size == 16
    assert last.meta.recipe["native_tiles"] == 16

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from napari_infection_clock.core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from napari_infection_clock.core.dataset import ItemDataset
from napari_infection_clock.core.evaluation import predict_items
from napari_infection_clock.core.items import FramePolicy, research_items, split_by_group
from napari_infection_clock.core.metrics import evaluate_table
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.synthetic import write_research_dataset
from napari_infection_clock.core.targets import TimePolicy
from napari_infection_clock.core.trainer import TrainConfig, TrainingError, iter_train, run_training

PREP = Preprocessing(image_size=64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_research_dataset(root, n_infected=6, n_mock=6, n_frames=40, size=64, seed=11)
    items = research_items(root, FramePolicy())
    return split_by_group(items, 0.2, 0.3, seed=0)


def _new(arch="resnet18"):
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, hidden_dim=64)
    return build_model(config), CheckpointMeta(model=config, preprocessing=PREP, time=TimePolicy())


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# On CUDA the trainer runs with mixed precision; the checkpoint is then read on the CPU.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_short_training_learns_held_out_wells(dataset, tmp_path, device):
    train, val, test = dataset
    assert not {i.group for i in train} & {i.group for i in test}
    model, meta = _new()
    # Learning is judged on the epoch with the lowest validation loss: selection by ROC AUC
    # (the research default) can keep an early epoch whose AUC saturated while the time head
    # had barely started, and which epoch that is depends on the shuffle order.
    # 4 epochs on the CPU: held-out AUC 0.973 and MAE 3.15 h against the mean's 4.88 h, as
    # good as 8 (0.971, 3.22 h; measured 1 December); CUDA keeps 8 (not measured at 4).
    epochs = 4 if device == "cpu" else 8
    config = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, seed=0, device=device,
                         best_metric="loss")
    events = list(
        iter_train(
            model,
            ItemDataset(train, PREP, augment=True),
            ItemDataset(val, PREP),
            config,
            meta,
            checkpoint_path=tmp_path / "m.pt",
        )
    )
    stages = [e.stage for e in events]
    assert stages[-1] == "done" and stages.count("epoch") == epochs
    assert all(e.eta_s is not None for e in events if e.stage == "batch")
    history = events[-1].history
    assert {"train_loss", "val_loss", "val_roc_auc", "val_mae"} <= set(history[0])

    loaded, meta2 = load_checkpoint(tmp_path / "m.pt")
    assert meta2.epoch == events[-1].best_epoch and len(meta2.history) == epochs
    predictor = Predictor(loaded, meta2, device="cpu", batch_size=64, precision="fp32")
    table = pd.concat(predict_items(predictor, test), ignore_index=True)
    metrics = evaluate_table(table)
    assert metrics["overall"]["classification"]["roc_auc"] > 0.9
    # Both heads learn: better than predicting the mean time target.
    truth = table.true_time_h.to_numpy()
    assert metrics["overall"]["regression"]["mae"] < np.abs(truth - truth.mean()).mean()


def test_stop_keeps_previous_checkpoint_intact(dataset, tmp_path):
    train, val, _ = dataset
    model, meta = _new()
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    before = path.read_bytes()
    batches = []
    events = list(
        iter_train(
            model,
            ItemDataset(train, PREP),
            ItemDataset(val, PREP),
            TrainConfig(epochs=2, batch_size=16, device="cpu"),
            meta,
            checkpoint_path=path,
            should_stop=lambda: len(batches) >= 3 or batches.append(1),
        )
    )
    assert events[-1].stage == "stopped" and events[-1].epoch == 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_heads_only_leaves_backbone_untouched(dataset):
    train, _, _ = dataset
    model, meta = _new()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.classifier[1].weight.clone()
    run_training(
        model,
        ItemDataset(train[::4], PREP),
        None,
        TrainConfig(epochs=1, batch_size=16, mode="heads", device="cpu"),
        meta,
    )
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    assert not torch.equal(model.classifier[1].weight, head_before)


def test_seed_makes_training_reproducible(dataset):
    train, _, _ = dataset
    weights = []
    for _ in range(2):
        model, meta = _new()
        run_training(
            model,
            ItemDataset(train[::8], PREP, augment=True),
            None,
            TrainConfig(epochs=1, batch_size=16, seed=5, device="cpu"),
            meta,
        )
        weights.append(model.regressor[4].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_refuses_no_items_or_one_class(dataset):
    train, _, _ = dataset
    model, meta = _new()
    with pytest.raises(TrainingError, match="no training items"):
        run_training(model, ItemDataset([], PREP), None, TrainConfig(device="cpu"), meta)
    mock_only = [i for i in train if i.label == 0]
    with pytest.raises(TrainingError, match="all training items are uninfected"):
        run_training(model, ItemDataset(mock_only, PREP), None, TrainConfig(device="cpu"), meta)


def test_training_leaves_meta_unchanged_and_reports_what_it_saved(dataset, tmp_path):
    train, val, _ = dataset
    model, meta = _new()
    before = copy.deepcopy(meta)
    events = list(iter_train(model, ItemDataset(train[::6], PREP), ItemDataset(val[::4], PREP),
                             TrainConfig(epochs=2, batch_size=16, device="cpu"), meta,
                             checkpoint_path=tmp_path / "m.pt"))
    assert meta == before
    done = events[-1]
    _, saved = load_checkpoint(tmp_path / "m.pt")
    assert done.meta.epoch == saved.epoch == done.best_epoch
    assert len(done.meta.history) == len(saved.history) == 2
    assert done.meta.val_metrics == pytest.approx(saved.val_metrics)

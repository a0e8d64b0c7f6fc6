"""Label-next ranking with a real, briefly trained model on synthetic stacks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.dataset import ItemDataset
from napari_infection_clock.core.items import FramePolicy, research_items
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.stack import open_stack
from napari_infection_clock.core.synthetic import write_research_dataset
from napari_infection_clock.core.targets import TimePolicy
from napari_infection_clock.core.tiles import TileSpec
from napari_infection_clock.core.trainer import TrainConfig, run_training
from napari_infection_clock.core.uncertainty import (
    binary_entropy,
    dropout_active,
    iter_stack_uncertainty,
    rank_uncertain,
)

PREP = Preprocessing(image_size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("uncertainty")
    paths = write_research_dataset(root, n_infected=2, n_mock=2, n_frames=30, size=48, seed=4,
                                   onset_h=1.0)
    items = research_items(root, FramePolicy())
    torch.manual_seed(0)
    config = ModelConfig(arch="resnet18", hidden_dim=32, dropout=0.3)
    model = build_model(config)
    meta = CheckpointMeta(model=config, preprocessing=PREP, time=TimePolicy())
    run_training(model, ItemDataset(items, PREP, augment=False), None,
                 TrainConfig(epochs=4, batch_size=32, lr=1e-3, device="cpu"), meta)
    return Predictor(model, meta, device="cpu", batch_size=32, precision="fp32"), paths, model


def test_entropy_is_highest_at_one_half():
    e = binary_entropy([0.0, 0.1, 0.5, 0.9, 1.0])
    assert e[2] == pytest.approx(1.0) and e[0] < 1e-9 and e[1] == pytest.approx(e[3])


def test_ambiguous_frame_ranks_before_a_clear_one(trained):
    predictor, paths, _ = trained
    with open_stack(paths[0]) as stack:  # an infected well: frame 0 equals its mock twin
        table = pd.concat(iter_stack_uncertainty(predictor, stack, frames=[0, 1, 29]))
    ranked = rank_uncertain(table)
    order = ranked["frame"].tolist()
    assert order.index(0) < order.index(29), ranked
    assert ranked.loc[ranked.frame == 29, "p_infected"].item() > 0.9
    # labelled items leave the list
    assert 0 not in rank_uncertain(table, labelled_frames=[0])["frame"].tolist()


def test_mc_dropout_spread_and_tiles(trained):
    predictor, paths, model = trained
    model.eval()  # as a loaded checkpoint is; the predictor leaves the caller's model alone
    with dropout_active(model) as n:
        assert n > 0 and all(m.training for m in model.modules() if isinstance(m, torch.nn.Dropout))
        assert not model.backbone.bn1.training
    assert not any(m.training for m in model.modules())
    with open_stack(paths[0]) as stack:
        rows = pd.concat(iter_stack_uncertainty(predictor, stack, TileSpec(tile_size=24),
                                                frames=[0, 29], method="mc_dropout", passes=6))
    assert len(rows) == 8 and (rows["p_std"] > 0).any()
    assert np.all(np.diff(rank_uncertain(rows)["score"]) <= 0)
    boxes = [(0, (0, 0, 24, 24))]
    assert len(rank_uncertain(rows, labelled_boxes=boxes)) == 7


def test_mc_dropout_spreads_on_the_fast_bf16_path_too(trained):
    """The fast path runs a folded copy of the model; dropout must act on that copy."""
    predictor, paths, model = trained
    fast = Predictor(model, predictor.meta, device="cpu", precision="bf16")
    assert fast.network is not model
    with open_stack(paths[0]) as stack:
        rows = pd.concat(iter_stack_uncertainty(fast, stack, frames=[29], method="mc_dropout",
                                                passes=6))
    assert (rows["p_std"] > 0).all()

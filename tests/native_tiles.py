"""A model as ``train --native-tiles SIZE`` makes it: SIZE px input and tiles, and the recipe
that says so (the docks and the CLI read the tiles from the recipe)."""

from __future__ import annotations

import torch

from napari_infection_clock.core.checkpoint import CheckpointMeta, save_checkpoint
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.recipes import RESEARCH
from napari_infection_clock.core.targets import TimePolicy


def native_model(size: int, time: TimePolicy | None = None):
    """A small random resnet18 trained (so its meta says) on native ``size`` px tiles."""
    torch.manual_seed(0)
    config = ModelConfig("resnet18", hidden_dim=8)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(size), tile_size=size,
                          time=time or TimePolicy(),
                          recipe={**RESEARCH.to_dict(), "native_tiles": size})
    return build_model(config, init="random").eval(), meta


def native_checkpoint(path, size: int, time: TimePolicy | None = None):
    """That model saved as a checkpoint file at ``path``."""
    return save_checkpoint(path, *native_model(size, time))

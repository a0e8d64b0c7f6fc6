"""Which training items each epoch sees: shuffled once each, or balanced over class and time.

Both samplers give the same global order whatever the number of processes: rank r takes
every r-th index of it, as :class:`torch.utils.data.DistributedSampler` does, so a global
batch holds the same items under torchrun as in one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from .recipes import BALANCE_BIN_H


def balanced_weights(labels, times, bin_h: float = BALANCE_BIN_H) -> np.ndarray:
    """Per item, 1 / (items in its (class, time bin) cell): every cell is drawn as often.

    Many mock frames late in an experiment, or few infected ones early, would otherwise
    set what the model sees most (the weights of :class:`torch.utils.data.WeightedRandomSampler`).
    """
    labels = np.asarray(labels, dtype=np.int64)
    bins = np.floor(np.asarray(times, dtype=np.float64) / bin_h).astype(np.int64)
    _, cell, counts = np.unique(np.stack([labels, bins], axis=1), axis=0, return_inverse=True,
                                return_counts=True)
    return 1.0 / counts[cell.ravel()]


class DistributedWeightedSampler(Sampler[int]):
    """Draws (with replacement, by ``weights``) as many items per epoch as the set holds.

    Seeded by ``seed`` and the epoch (:meth:`set_epoch`), so every rank draws the same global
    sequence and takes its own share of it; one process takes all of it.
    """

    def __init__(self, weights, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(self.weights) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, len(self.weights), replacement=True,
                                  generator=generator).tolist()
        # Padded as DistributedSampler pads (the draw repeated as often as needed, also for
        # fewer items than processes), so every rank gets as many and the draws are the
        # same for any number of processes.
        total = self.num_samples * self.num_replicas
        drawn = (drawn * math.ceil(total / len(drawn)))[:total]
        return iter(drawn[self.rank::self.num_replicas])


def training_sampler(dataset, labels, times, balanced: bool, num_replicas: int, rank: int,
                     seed: int) -> Sampler[int]:
    """The sampler of a training set: shuffled (SPEC 6), or balanced over class and time."""
    if balanced:
        return DistributedWeightedSampler(balanced_weights(labels, times), num_replicas, rank,
                                          seed)
    return DistributedSampler(dataset, num_replicas, rank, shuffle=True, seed=seed,
                              drop_last=False)


@dataclass(frozen=True)
class StepShare:
    """This process's part of one training step."""

    real: torch.Tensor  # per item of the rank's batch: False for the sampler's padding
    items: int  # real items this process trains on
    weight: float  # its mean loss times this: DDP's average of the ranks' gradients is then
    # the mean over the step's real items, as one process computes it


def step_share(loader, batch: int, batch_len: int) -> StepShare:
    """The real items of step ``batch`` (1-based) of a loader over :func:`training_sampler`.

    Both samplers pad the global order to a multiple of the processes with its first items
    and give rank r the positions r, r + W, ...; those at or past the set's length are
    padding. Trained as items, they would count twice in the last step (and in its
    BatchNorm statistics), which one process never does.
    """
    sampler, length = loader.sampler, len(loader.dataset)
    world, rank = getattr(sampler, "num_replicas", 1), getattr(sampler, "rank", 0)
    first = (batch - 1) * loader.batch_size
    real = rank + world * torch.arange(first, first + batch_len) < length
    step_items = min(loader.batch_size * world, length - first * world)
    items = int(real.sum())
    # A rank whose last batch is only padding still steps (DDP needs every rank's
    # gradients): it keeps the item, with no weight.
    return StepShare(real, items, items * world / step_items)

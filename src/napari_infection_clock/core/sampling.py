"""Which training items each epoch sees: shuffled once each, or balanced over class and time.

Both samplers give the same global order whatever the number of processes: rank r takes
every r-th index of it, as :class:`torch.utils.data.DistributedSampler` does, so a global
batch holds the same items under torchrun as in one process.
"""

from __future__ import annotations

import math

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
        # Padded as DistributedSampler pads, so every rank gets as many and the draws are
        # the same for any number of processes.
        drawn += drawn[: self.num_samples * self.num_replicas - len(drawn)]
        return iter(drawn[self.rank::self.num_replicas])


def training_sampler(dataset, labels, times, balanced: bool, num_replicas: int, rank: int,
                     seed: int) -> Sampler[int]:
    """The sampler of a training set: shuffled (SPEC 6), or balanced over class and time."""
    if balanced:
        return DistributedWeightedSampler(balanced_weights(labels, times), num_replicas, rank,
                                          seed)
    return DistributedSampler(dataset, num_replicas, rank, shuffle=True, seed=seed,
                              drop_last=False)

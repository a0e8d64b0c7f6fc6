"""core.lazy_frames against numpy itself: random keys of every kind numpy takes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from napari_infection_clock.core.lazy_frames import LazyFrames


def _random_item(rng: random.Random, length: int):
    """One index item of the kinds napari, the docks and a console use, some of them bad."""
    r = rng.random()
    if r < 0.25:
        return rng.randint(-length, length - 1)
    if r < 0.5:
        return slice(rng.choice([None, -3, 0, 1, 2]), rng.choice([None, 2, 4, -1]),
                     rng.choice([None, 1, 2, -1]))
    if r < 0.6:
        return None
    if r < 0.7:
        return Ellipsis
    if r < 0.85:
        return np.array([rng.randint(0, length - 1) for _ in range(rng.randint(0, 3))], int)
    if r < 0.95:
        return np.array([rng.random() < 0.5 for _ in range(length)])
    return rng.choice([True, False])


@pytest.mark.parametrize("shape", [(6, 5, 4), (6, 5, 4, 3)], ids=["TYX", "TYXS"])
def test_random_keys_index_as_numpy_does(shape):
    data = np.arange(int(np.prod(shape))).reshape(shape)
    reads = []

    def read(t):
        reads.append(t)
        return data[t]

    frames = LazyFrames(read, shape[0], shape[1:], data.dtype)
    rng = random.Random(0)
    for _ in range(3000):
        key = tuple(_random_item(rng, rng.choice(shape)) for _ in range(rng.randint(0, 5)))
        reads.clear()
        try:
            expected = data[key]
        except IndexError:
            with pytest.raises(IndexError):
                frames[key]
            assert reads == [], key  # refused before any frame was read
            continue
        got = frames[key]
        assert got.shape == expected.shape and np.array_equal(got, expected), key

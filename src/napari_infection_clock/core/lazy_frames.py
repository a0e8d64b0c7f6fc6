"""A time-lapse as an array whose frames are read only when indexed.

What napari asks of a layer's data (shape, dtype, ndim, size, numpy indexing) and what
``np.asarray`` needs, over a function that reads one frame. The reader gave napari a dask
array of one delayed read per frame instead: dask named each read by hashing its arguments,
the stack's memory map of the whole file among them (51 s of File > Open for a 797 MB stack,
on the GUI thread), and importing dask.array took 0.48 s more.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


class LazyFrames:
    """``(T, *frame_shape)`` frames, frame ``t`` read by ``read(t)`` when an index needs it.

    An index is split into its time part, which picks the frames to read, and the rest,
    which numpy applies to them: ``frames[key]`` is ``np.asarray(frames)[key]``, reading
    only the frames the key reaches.
    """

    def __init__(self, read: Callable[[int], np.ndarray], n_frames: int,
                 frame_shape: tuple[int, ...], dtype):
        self._read = read
        self.shape = (int(n_frames), *map(int, frame_shape))
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyFrames(shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[...]
        return frames if dtype is None else frames.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        key = _expanded(key if isinstance(key, tuple) else (key,), self.ndim)
        lead = 0  # new axes (None) before the time axis stay in front of it
        while lead < len(key) and key[lead] is None:
            lead += 1
        when, rest = (key[lead], key[lead + 1:]) if lead < len(key) else (slice(None), ())
        times = np.arange(self.shape[0])[when]  # numpy's own checks and errors
        if isinstance(when, slice):  # read in the slice's order; basic indexing stays basic
            frames, local = self._frames(times), slice(None)
        elif times.ndim == 0:  # one frame: no time axis in the result
            frames, local = self._frames(times[None]), 0
        else:  # an index array: each frame read once, numpy places them
            unique, local = np.unique(times, return_inverse=True)
            frames, local = self._frames(unique), local.reshape(times.shape)
        return frames[(None,) * lead + (local, *rest)]

    def _frames(self, times: np.ndarray) -> np.ndarray:
        out = np.empty((len(times), *self.shape[1:]), self.dtype)
        for i, t in enumerate(times):
            out[i] = self._read(int(t))
        return out


def _expanded(key: tuple, ndim: int) -> tuple:
    """``key`` with its Ellipsis (if any) written out as full slices."""
    ellipses = [i for i, k in enumerate(key) if k is Ellipsis]
    if not ellipses:
        return key
    if len(ellipses) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    i = ellipses[0]
    return key[:i] + (slice(None),) * max(0, ndim - used) + key[i + 1:]

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

    ``frames[key]`` is ``np.asarray(frames)[key]``, reading only the frames the key
    reaches. The key is split into its time part, which picks the frames to read, and the
    rest, which numpy applies to each frame as it is read when it holds no index arrays
    (a crop or a pixel's trace keeps nothing of the whole frames), else to the frames read.
    A key numpy would refuse is refused before any frame is read. The frames are
    read-only: a copy (napari's Duplicate Layer) shares them.
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

    def __copy__(self) -> LazyFrames:
        return self

    def __deepcopy__(self, memo) -> LazyFrames:
        return self

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError("LazyFrames reads its frames from a file: an array of them is "
                             "always a copy")
        frames = self[...]
        return frames if dtype is None else frames.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        _ = _blank(self.shape, self.dtype)[key]  # numpy's own refusals, before any read
        items = _bools_as_indices(key if isinstance(key, tuple) else (key,))
        if items is None:  # a 0-d boolean: numpy's meaning needs every frame
            return np.asarray(self)[key]
        full = _ellipsis_written_out(items, self.ndim)
        lead = 0  # new axes (None) before the time axis stay in front of it
        while lead < len(full) and full[lead] is None:
            lead += 1
        when, rest = (full[lead], full[lead + 1:]) if lead < len(full) else (slice(None), ())
        times = np.arange(self.shape[0])[when]
        if isinstance(when, slice):  # read in the slice's order; basic indexing stays basic
            read, local = times, slice(None)
        elif times.ndim == 0:  # one frame: no time axis in the result
            read, local = times[None], 0
        else:  # an index array: each frame read once, numpy places them
            read, local = np.unique(times, return_inverse=True)
            local = local.reshape(times.shape)
        arrays = any(isinstance(k, np.ndarray) for k in rest)
        ints = any(isinstance(k, (int, np.integer)) for k in rest)
        if not arrays and not (ints and isinstance(local, np.ndarray)):
            # cut each frame as it is read (beside an index array of times, an integer is
            # an index array too, and where numpy puts their axes depends on both)
            cut = _blank(self.shape[1:], self.dtype)[rest].shape
            return self._frames(read, rest, cut)[(None,) * lead + (local,)]
        # index arrays: numpy places their axes from the key as written (an Ellipsis between
        # two keeps them apart even when it stands for no axis), so the key is kept as it is,
        # its time item (if the Ellipsis does not stand for the time axis) made local
        slot = _time_item(items, self.ndim)
        if slot is not None:
            items = [*items[:slot], local, *items[slot + 1:]]
        return self._frames(read, (), self.shape[1:])[tuple(items)]

    def _frames(self, times: np.ndarray, part: tuple, shape: tuple) -> np.ndarray:
        out = np.empty((len(times), *shape), self.dtype)
        for i, t in enumerate(times):
            out[i] = self._read(int(t))[part]
        return out


def _blank(shape: tuple, dtype) -> np.ndarray:
    """An array of ``shape`` that holds one element: indexing it checks a key, and gives
    the result's shape, as numpy would for real data."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _bools_as_indices(key: tuple) -> list | None:
    """``key`` with each boolean array written as the index arrays of its true elements
    (numpy's own equivalence), so that each item but None and Ellipsis indexes one axis;
    None for a key with a 0-d boolean (it indexes no axis)."""
    items = []
    for k in key:
        if isinstance(k, (list, np.ndarray, bool, np.bool_)):
            k = np.asarray(k)
            if k.size == 0 and k.dtype != bool:  # numpy takes [] for an empty integer index
                k = k.astype(np.intp)
            if k.dtype == bool:
                if k.ndim == 0:
                    return None
                items.extend(k.nonzero())
                continue
        items.append(k)
    return items


def _ellipsis_width(items: list, ndim: int) -> int:
    return ndim - sum(1 for k in items if k is not None and k is not Ellipsis)


def _ellipsis_written_out(items: list, ndim: int) -> tuple:
    """``items`` with their Ellipsis (if any) written out as full slices."""
    where = [i for i, k in enumerate(items) if k is Ellipsis]  # `in` would compare arrays
    if not where:
        return tuple(items)
    i = where[0]
    return (*items[:i], *(slice(None),) * _ellipsis_width(items, ndim), *items[i + 1:])


def _time_item(items: list, ndim: int) -> int | None:
    """Where in ``items`` the time axis's index is; None where an Ellipsis (or nothing)
    stands for it."""
    for i, k in enumerate(items):
        if k is Ellipsis and _ellipsis_width(items, ndim) > 0:
            return None
        if k is not None and k is not Ellipsis:
            return i
    return None

"""A long well that a run cannot finish before the test lets it: what a slow disk does to a
prediction, made certain, so a test can click Cancel (or remove the image) while the run
is provably under way on any machine, however fast."""

import threading

import numpy as np


class GatedFrames:
    """An array-like (T, Y, X) of which background threads (a run's) read only ``free``
    times until :meth:`release`; the GUI thread reads freely (napari shows frames)."""

    def __init__(self, data: np.ndarray, free: int):
        self.data, self.free, self.reads = data, free, 0
        self.shape, self.dtype, self.ndim, self.size = data.shape, data.dtype, data.ndim, data.size
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def __len__(self) -> int:
        return len(self.data)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.data, dtype)

    def __getitem__(self, key):
        if threading.current_thread() is not threading.main_thread():
            self.reads += 1
            if self.reads > self.free:
                self._released.wait(timeout=300)
        return self.data[key]

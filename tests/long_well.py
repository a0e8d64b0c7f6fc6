"""A well far longer than any prediction gets through before a test stops it, so a test
can click Cancel (or remove the image) while the run is provably under way and could not
have ended "done": 100,000 frames, the frames of a short synthetic well over and over, read
lazily (dask, one frame per chunk: a lazy array a user may have in napari). napari and the
Predict dock read only the frames they show or predict; nothing waits on the test."""

from __future__ import annotations

import dask.array as da

from napari_infection_clock.core.synthetic import sample_pair

#: Each frame is a dask compute of its own (15 ms at load 8 on the 2-core machine), read one
#: at a time by the predictor's reader thread, then 16 tiles through the model: minutes on
#: any machine, where a test clicks within seconds of the first frames shown.
FRAMES = 100_000


def long_well(kind: str = "infected", seed: int = 1, size: int = 64, cycle: int = 24,
              frames: int = FRAMES):
    """(data, metadata) of a ``kind`` well ("infected" or "mock") of ``frames`` frames:
    frame t is frame ``t % cycle`` of a ``cycle``-frame synthetic well, made on read."""
    base, meta = sample_pair(n_frames=cycle, size=size, seed=seed)[kind]

    def frame(block_id):
        return base[block_id[0] % cycle][None]

    data = da.map_blocks(frame, chunks=((1,) * frames, (size,), (size,)), dtype=base.dtype,
                         meta=base[:0])
    return data, dict(meta)

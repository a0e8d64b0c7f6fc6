"""File > Open Sample: a synthetic infected and mock well with their truth in layer metadata."""

from __future__ import annotations

from ..core.synthetic import sample_well
from .layer_roles import FRAME_INTERVAL_SOURCE
from .workers import docks_ahead

N_FRAMES = 48
SIZE = 256


def _sample(kind: str) -> list[tuple]:
    data, meta = sample_well(kind, n_frames=N_FRAMES, size=SIZE, seed=0)
    kwargs = {
        "name": f"{kind} (synthetic)",
        "axis_labels": ("t", "y", "x"),
        "metadata": {**meta, FRAME_INTERVAL_SOURCE: "metadata"},
    }
    docks_ahead()
    return [(data, kwargs, "image")]


def infected_sample() -> list[tuple]:
    return _sample("infected")


def mock_sample() -> list[tuple]:
    return _sample("mock")

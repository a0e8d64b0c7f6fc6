"""Per-tile probability and duration maps from a prediction table, written as TIFF stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .stack import write_stack
from .tiles import TileSpec, tile_grid_shape


def write_maps(table: pd.DataFrame, stack, tiles: TileSpec, prefix: str | Path) -> list[Path]:
    """Write ``{prefix}_p_infected.tif`` and ``{prefix}_duration_h.tif`` (T, rows, cols).

    They cover every frame of the stack, so map frame i is stack frame i; frames that were
    not predicted, and duration where the class is uninfected, are NaN (float32).
    """
    rows, cols = tile_grid_shape(*stack.frame_shape, tiles)
    prob = np.full((stack.n_frames, rows, cols), np.nan, np.float32)
    duration = np.full_like(prob, np.nan)
    t, r, c = (table[k].to_numpy() for k in ("frame", "tile_row", "tile_col"))
    prob[t, r, c] = table["p_infected"].to_numpy()
    infected = table["pred_class"].to_numpy() == 1
    duration[t[infected], r[infected], c[infected]] = table["pred_time_h"].to_numpy()[infected]
    return [
        write_stack(f"{prefix}_{suffix}.tif", grid, frame_interval_h=stack.frame_interval_h)
        for suffix, grid in (("p_infected", prob), ("duration_h", duration))
    ]

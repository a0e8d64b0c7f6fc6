"""What to label next: frames and tiles ranked by how unsure the model is about them.

Two scores: the entropy of the predicted class probability (one pass), or the spread of
several passes with the heads' Dropout layers switched on (MC dropout). Labelling the most
uncertain items first teaches the model most per label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .information import has_information
from .stack import TimelapseStack
from .tiles import TileSpec, crop, tile_boxes

if TYPE_CHECKING:  # the ranking dock lists METHODS before torch is loaded (ui.torch_ahead)
    from torch import nn

METHODS = ("entropy", "mc_dropout")
UNCERTAINTY_COLUMNS = ("stack", "frame", "y0", "x0", "y1", "x1", "p_infected", "p_std",
                       "entropy", "score")


def binary_entropy(p) -> np.ndarray:
    """Entropy in bits of infected-vs-uninfected: 0 when sure, 1 at p = 0.5."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


@contextmanager
def dropout_active(model: nn.Module):
    """Switch only the Dropout layers to training mode (BatchNorm stays frozen)."""
    from torch import nn

    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    before = [m.training for m in drops]
    try:
        for m in drops:
            m.train()
        yield len(drops)
    finally:
        for m, was in zip(drops, before):
            m.train(was)


def score_crops(predictor, crops: list[np.ndarray], method: str = "entropy",
                passes: int = 8) -> dict[str, np.ndarray]:
    """p_infected (mean over passes), its spread, entropy and the ranking score.

    ``predictor`` is a :class:`.predictor.Predictor`. With ``mc_dropout`` the score is the
    standard deviation of p over ``passes`` dropout passes plus the entropy of their mean
    (a tie-breaker for models without dropout, whose spread is zero). A crop without
    information (:mod:`.information`: blank, saturated, tiny) teaches nothing, however
    unsure the model is about it: its score is -inf, so it ranks last.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "mc_dropout" and passes < 2:
        raise ValueError(f"MC dropout needs at least 2 passes, got {passes}")
    if method == "entropy":
        p = np.asarray(predictor.predict_many(crops)[0], dtype=np.float64)
        std = np.zeros_like(p)
    else:
        # The network that runs (a folded bf16 copy on fast paths), not the caller's model.
        with dropout_active(predictor.network):
            runs = np.stack([np.asarray(predictor.predict_many(crops)[0], dtype=np.float64)
                             for _ in range(passes)])
        p, std = runs.mean(0), runs.std(0)
    ent = binary_entropy(p)
    score = ent if method == "entropy" else std + 1e-3 * ent
    informative = np.array([has_information(c[None])[0] for c in crops], bool)
    return {"p_infected": p, "p_std": std, "entropy": ent,
            "score": np.where(informative, score, -np.inf)}


def iter_stack_uncertainty(
    predictor,
    stack: TimelapseStack,
    tiles: TileSpec = TileSpec(),
    frames: Iterable[int] | None = None,
    method: str = "entropy",
    passes: int = 8,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield each frame's uncertainty rows (one per tile, or per frame) as computed."""
    order = range(stack.n_frames) if frames is None else [int(f) for f in frames]
    boxes, _ = tile_boxes(*stack.frame_shape, tiles)
    whole = tiles.whole_frame
    for frame in order:
        if should_stop is not None and should_stop():
            return
        image = stack.frame(frame)
        scores = score_crops(predictor, [image] if whole else [crop(image, b) for b in boxes],
                             method, passes)
        table = pd.DataFrame({"stack": stack.name, "frame": frame,
                              **{c: boxes[:, k] for k, c in enumerate(("y0", "x0", "y1", "x1"))},
                              **scores})
        yield table[list(UNCERTAINTY_COLUMNS)]


def rank_uncertain(table: pd.DataFrame, labelled_frames: Iterable[int] = (),
                   labelled_boxes: Iterable[tuple[int, tuple]] = ()) -> pd.DataFrame:
    """Rows sorted most uncertain first, without the frames and boxes already labelled."""
    if table is None or not len(table):
        return pd.DataFrame(columns=UNCERTAINTY_COLUMNS)
    frames = set(int(f) for f in labelled_frames)
    boxes = {(int(f), tuple(int(v) for v in b)) for f, b in labelled_boxes}
    keys = zip(table["frame"], table["y0"], table["x0"], table["y1"], table["x1"])
    keep = [int(f) not in frames and (int(f), (int(a), int(b), int(c), int(d))) not in boxes
            for f, a, b, c, d in keys]
    out = table[keep].sort_values(["score", "frame"], ascending=[False, True], kind="stable")
    return out.reset_index(drop=True)

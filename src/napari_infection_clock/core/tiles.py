"""Tiling a frame into pixel boxes, so a model can answer per region as well as per frame.

Boxes are ``y0, x0, y1, x1`` half-open pixel coordinates (rows ``y0:y1``, columns
``x0:x1``), the same convention as the prediction table in :mod:`.results`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BORDERS = ("pad", "drop", "shift")


@dataclass(frozen=True)
class TileSpec:
    """How to cut a frame into tiles.

    ``tile_size=None`` means the whole frame is one item. ``stride`` defaults to the tile
    size (no overlap). ``border`` decides what happens where the tiles do not fit exactly:
    ``"shift"`` (the default) moves the last tile back inside so every tile is full of
    real pixels and the whole frame is covered (the last tile overlaps its neighbour);
    ``"pad"`` keeps a last row/column of tiles that extends past the frame, cropping
    pads it by reflection (mirrored cells the model never sees in real wells: up to all
    but one pixel of a tile is made up; prediction tables mark such tiles ``padded``);
    ``"drop"`` keeps only full tiles inside the frame and leaves the edge unseen.
    """

    tile_size: int | None = None
    stride: int | None = None
    border: str = "shift"
    #: The tile size of a model trained on native tiles, which cannot take whole frames: a
    #: frame smaller than its tiles cannot be predicted, and the error says so.
    model_tiles: int | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.tile_size is not None and not _positive_int(self.tile_size):
            raise ValueError(
                f"tile size must be a positive whole number of pixels, got {self.tile_size!r}"
            )
        if self.stride is not None:
            if self.tile_size is None:
                raise ValueError(
                    "a stride needs a tile size; set tile_size, or leave stride empty "
                    "for whole-frame items"
                )
            if not _positive_int(self.stride):
                raise ValueError(
                    f"stride must be a positive whole number of pixels, got {self.stride!r}"
                )
        if self.border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, got {self.border!r}")

    @property
    def whole_frame(self) -> bool:
        return self.tile_size is None

    @property
    def step(self) -> int | None:
        """The effective stride: the given one, else the tile size."""
        return self.stride if self.stride is not None else self.tile_size


def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _starts(length: int, tile: int, step: int, border: str) -> np.ndarray:
    """Tile start offsets along one axis of ``length`` pixels."""
    starts = list(range(0, length - tile + 1, step))
    tail_uncovered = starts[-1] + tile < length
    if tail_uncovered and border == "shift":
        starts.append(length - tile)
    elif tail_uncovered and border == "pad" and starts[-1] + step < length:
        starts.append(starts[-1] + step)
    return np.asarray(starts, dtype=np.int64)


def _axis_starts(height: int, width: int, spec: TileSpec) -> tuple[np.ndarray, np.ndarray]:
    if not (_positive_int(height) and _positive_int(width)):
        raise ValueError(f"frame size must be positive pixels, got {height!r} x {width!r}")
    if spec.whole_frame:
        return np.zeros(1, np.int64), np.zeros(1, np.int64)
    if spec.tile_size > height or spec.tile_size > width:
        if spec.model_tiles is not None and spec.model_tiles > min(height, width):
            raise ValueError(
                f"this model was trained on native {spec.model_tiles} px tiles and cannot "
                f"predict frames smaller than {spec.model_tiles} px: these are {height} x "
                f"{width} px; use a model trained on whole frames or on smaller tiles"
            )
        raise ValueError(
            f"tile size {spec.tile_size} px is larger than the frame ({height} x {width} px); "
            f"use whole-frame mode (no tile size) or a tile of at most {min(height, width)} px"
        )
    return (
        _starts(height, spec.tile_size, spec.step, spec.border),
        _starts(width, spec.tile_size, spec.step, spec.border),
    )


def resized_tiles_note(model_tiles: int | None, tile_size: int | None,
                       option: str | None = None) -> str:
    """What to tell a user whose tiles are resized for a model trained on native tiles
    (empty when they are the model's own, or it has none). The docks name a tile size;
    the command line passes ``option`` ("--tile-size") and names that."""
    if model_tiles is None or tile_size in (None, model_tiles):
        return ""
    if option is None:
        given, hint = f"{tile_size} px", f"a tile size of {model_tiles} uses its tiles"
    else:
        given, hint = f"{option} {tile_size}", f"leave {option} out to use its tiles"
    return (f"the model was trained on native {model_tiles} px tiles: {given} tiles are "
            f"resized to {model_tiles} px for it ({hint})")


def tile_grid_shape(height: int, width: int, spec: TileSpec) -> tuple[int, int]:
    """Number of tile rows and columns for a ``height`` x ``width`` frame."""
    ys, xs = _axis_starts(height, width, spec)
    return len(ys), len(xs)


def tile_boxes(height: int, width: int, spec: TileSpec) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) as y0, x0, y1, x1 and grid positions (N, 2) as row, col; row-major.

    Whole-frame mode gives the single box ``(0, 0, height, width)`` at grid ``(0, 0)``.
    With ``border="pad"`` the last boxes may extend past the frame.
    """
    ys, xs = _axis_starts(height, width, spec)
    rows, cols = np.meshgrid(np.arange(len(ys)), np.arange(len(xs)), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    y0, x0 = ys[rows], xs[cols]
    if spec.whole_frame:
        y1, x1 = np.array([height]), np.array([width])
    else:
        y1, x1 = y0 + spec.tile_size, x0 + spec.tile_size
    boxes = np.stack([y0, x0, y1, x1], axis=1).astype(np.int64)
    return boxes, np.stack([rows, cols], axis=1).astype(np.int64)


def crop(frame: np.ndarray, box) -> np.ndarray:
    """The ``box`` region of a (H, W) or (H, W, C) frame, padded by reflection outside it.

    Reflection (numpy ``mode="reflect"``) avoids the hard edges a zero pad would show the
    model; numpy mirrors repeatedly when the pad is wider than the frame and repeats the
    edge of a one-pixel axis, so any frame size works.
    """
    frame = np.asarray(frame)
    if frame.ndim not in (2, 3):
        raise ValueError(
            f"crop needs a (H, W) or (H, W, C) frame, got an array of shape {frame.shape}"
        )
    y0, x0, y1, x1 = (int(v) for v in box)
    height, width = frame.shape[:2]
    if not (y1 > y0 and x1 > x0):
        raise ValueError(f"box {tuple(box)} is empty; it must satisfy y1 > y0 and x1 > x0")
    if y0 >= height or x0 >= width or y1 <= 0 or x1 <= 0:
        raise ValueError(f"box {tuple(box)} lies outside the {height} x {width} frame")
    (ys0, ys1, top, bottom), (xs0, xs1, left, right) = (
        _source_range(y0, y1, height),
        _source_range(x0, x1, width),
    )
    region = frame[ys0:ys1, xs0:xs1]
    if top or bottom or left or right:
        pads = [(top, bottom), (left, right)] + [(0, 0)] * (frame.ndim - 2)
        region = np.pad(region, pads, mode="reflect")
    oy, ox = max(y0, 0) - ys0, max(x0, 0) - xs0
    return region[oy : oy + y1 - y0, ox : ox + x1 - x0]


def _source_range(lo: int, hi: int, n: int) -> tuple[int, int, int, int]:
    """Frame rows (or columns) to read for the span lo:hi, and the pad before and after.

    The range reaches as far into the frame as the pads reflect, so the mirrored pixels
    are the frame's own and not those of a smaller crop.
    """
    before, after = max(-lo, 0), max(hi - n, 0)
    start = min(max(lo, 0), max(n - 1 - after, 0))
    stop = max(min(hi, n), min(before + 1, n))
    return start, stop, before, after


def check_boxes(boxes: np.ndarray, height: int, width: int) -> None:
    """Refuse empty boxes and boxes wholly outside the frame, as :func:`crop` does."""
    y0, x0, y1, x1 = boxes.T
    if np.any((y1 <= y0) | (x1 <= x0)):
        raise ValueError("a box is empty; every box must satisfy y1 > y0 and x1 > x0")
    if np.any((y0 >= height) | (x0 >= width) | (y1 <= 0) | (x1 <= 0)):
        raise ValueError(f"a box lies outside the {height} x {width} frame")


def cut_tiles(frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Equal-sized ``boxes`` of ``frame`` as one (N, h, w[, C]) array, in one gather.

    Same pixels as :func:`crop` per box: boxes reaching past the frame read from
    the frame padded once by reflection, which mirrors the same pixels crop() mirrors.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    h, w = (int(v) for v in boxes[0, 2:] - boxes[0, :2])
    height, width = frame.shape[:2]
    top, left = max(0, -int(boxes[:, 0].min())), max(0, -int(boxes[:, 1].min()))
    bottom = max(0, int(boxes[:, 2].max()) - height)
    right = max(0, int(boxes[:, 3].max()) - width)
    if top or bottom or left or right:
        pads = [(top, bottom), (left, right)] + [(0, 0)] * (frame.ndim - 2)
        frame = np.pad(frame, pads, mode="reflect")
    windows = sliding_window_view(frame, (h, w), axis=(0, 1))  # (Y, X, [C,] h, w), a view
    tiles = windows[boxes[:, 0] + top, boxes[:, 1] + left]  # the one copy
    return np.moveaxis(tiles, 1, -1) if frame.ndim == 3 else tiles

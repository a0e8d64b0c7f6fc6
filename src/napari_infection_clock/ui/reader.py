"""napari reader for TIFF time-lapses: a lazy array per channel, time axis first.

Frames are read only when napari shows them (or a prediction asks for them), through
:func:`..core.stack.open_stack`, which also finds the frame interval in ImageJ/OME metadata.
Files that are not time-lapses (a plain 2D image with no ImageJ or OME metadata, see
:attr:`..core.stack.TimelapseStack.single_image`; unreadable TIFFs) are left to other
readers; a one-frame file from Fiji is a time-lapse of one frame, as the core reads it. A
damaged one, or one with an axis too many (Z planes beside time), is claimed so that
opening it says what is wrong and what to do.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from ..core.lazy_frames import LazyFrames
from ..core.stack import (
    ChannelNotChosen,
    DamagedStackError,
    ExtraAxisError,
    StackError,
    TimelapseStack,
    open_stack,
)
from .layer_roles import (
    CHANNEL,
    CHANNEL_DESC,
    FRAME_INTERVAL_H,
    FRAME_INTERVAL_SOURCE,
    N_FRAMES,
    SOURCE_PATH,
    START_OFFSET_H,
)
from .workers import docks_ahead

SUFFIXES = (".tif", ".tiff")


def get_reader(path):
    """Return :func:`read_timelapse` when ``path`` is a TIFF time-lapse, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES or not path.is_file():
        return None
    try:
        with open_stack(path, channel=_first_channel(path)) as stack:
            if stack.single_image:  # a picture: napari's readers show it
                return None
    except (DamagedStackError, ExtraAxisError):
        # read_timelapse raises the message: other readers would hang or crash on a damaged
        # file, and napari's would show a Z stack as frames with no word on reducing it
        return read_timelapse
    except StackError:
        return None
    return read_timelapse


def _first_channel(path) -> int | None:
    """0 for a multichannel file (enough to look at its shape), else None."""
    try:
        open_stack(path).close()
    except ChannelNotChosen:
        return 0
    return None


def read_timelapse(path) -> list[tuple]:
    """Layer data tuples: one image layer per channel, (T, Y, X[, 3]), frames read lazily.

    Each layer's metadata says which channel it shows (index, and name where the file
    names it), so labels made on it train on that channel.
    """
    path = Path(path[0] if isinstance(path, list) else path)
    channels: list[int | None] = [None]
    try:
        open_stack(path).close()
    except ChannelNotChosen as exc:
        channels = list(range(len(exc.names)))
    layers = []
    for channel in channels:
        stack = open_stack(path, channel=channel)
        name = path.stem if channel is None else f"{path.stem} [ch {channel}]"
        if channel is not None and stack.channel_names[channel]:
            name = f"{path.stem} [ch {channel} {stack.channel_names[channel]}]"
        first = stack.frame(0)
        kwargs = {
            "name": name,
            "rgb": stack.is_rgb,
            "axis_labels": ("t", "y", "x"),
            "contrast_limits": _contrast(first),
            "metadata": {
                FRAME_INTERVAL_H: stack.frame_interval_h,
                FRAME_INTERVAL_SOURCE: stack.frame_interval_source,
                START_OFFSET_H: stack.start_offset_h,
                SOURCE_PATH: str(path),
                CHANNEL: stack.channel,
                CHANNEL_DESC: stack.channel_desc,
                N_FRAMES: stack.n_frames,
            },
        }
        layers.append((lazy_frames(stack), kwargs, "image"))
    docks_ahead()
    return layers


def lazy_frames(stack: TimelapseStack) -> LazyFrames:
    """``stack``'s frames, each read when napari (or a prediction) indexes it."""
    shape = stack.frame_shape + ((3,) if stack.is_rgb else ())
    return LazyFrames(functools.partial(_frame_or_blank, stack, shape=shape), stack.n_frames,
                      shape, stack.dtype)


def _frame_or_blank(stack: TimelapseStack, index: int, *, shape: tuple) -> np.ndarray:
    """Frame ``index``, or a blank one with a warning naming the file and frame where that
    frame is damaged: napari reads frames as the slider reaches them, and an error there
    would come back on every redraw (prediction and training read the file themselves
    and stop with the same message)."""
    try:
        return stack.frame(index)
    except DamagedStackError as exc:
        warnings.warn(f"{exc} This frame is shown blank.", UserWarning, stacklevel=2)
        return np.zeros(shape, stack.dtype)


def _contrast(frame: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(frame)), float(np.max(frame))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)

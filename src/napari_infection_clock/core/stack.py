"""Lazy access to time-lapse stacks: one 2D frame at a time, whatever the file's layout.

Stacks can be larger than memory, so nothing here reads a whole stack: uncompressed TIFFs
are memory-mapped, other TIFFs are read page by page through an open ``TiffFile``, and
in-memory arrays (numpy, dask, zarr from napari layers) are indexed one frame at a time.
Every source is reduced to frames of shape (H, W) or (H, W, 3) along one time axis.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .atomic import mark_input, write_atomic
from .channels import choice_message, describe, ome_root, resolve_channel, tiff_channel_names
from .targets import DEFAULT_FRAME_INTERVAL_H


class StackError(ValueError):
    """A stack that cannot be read or interpreted as a time-lapse; the message says why."""


class DamagedStackError(StackError):
    """A TIFF that is truncated, corrupt or whose header disagrees with its data."""


class ExtraAxisError(StackError):
    """A time-lapse with one more axis than the model reads (Z planes beside time, or two
    axes that could be time): the message says how to reduce it."""


class ChannelNotChosen(StackError):
    """A multichannel stack opened without saying which channel; ``names`` lists them."""

    def __init__(self, message: str, names: tuple):
        super().__init__(message)
        self.names = names


class FrameIndexError(StackError, IndexError):
    """A frame index outside the stack (an IndexError too, so loops over frames can stop)."""


#: Position of a well in the research file names, e.g. ``..._s5_b2_p7_t0-94_ec.tiff``.
POSITION_RE = re.compile(r"_p(\d+)_")

AXES_LETTERS = "TZCYXS"
_SPATIAL = "YXS"
#: Hours per unit, for ImageJ ``tunit`` and OME ``TimeIncrementUnit`` / ``DeltaTUnit``.
_HOURS_PER_UNIT = {
    "ns": 1e-9 / 3600,
    "µs": 1e-6 / 3600,
    "us": 1e-6 / 3600,
    "ms": 1e-3 / 3600,
    "s": 1 / 3600,
    "sec": 1 / 3600,
    "second": 1 / 3600,
    "seconds": 1 / 3600,
    "min": 1 / 60,
    "minute": 1 / 60,
    "minutes": 1 / 60,
    "h": 1.0,
    "hr": 1.0,
    "hour": 1.0,
    "hours": 1.0,
    "d": 24.0,
    "day": 24.0,
    "days": 24.0,
}
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)


def parse_position(name: str | os.PathLike) -> int | None:
    """The well position ``_p<digits>_`` in a research file name, or None if absent."""
    match = POSITION_RE.search(Path(name).name)
    return int(match.group(1)) if match else None


@dataclass(eq=False)
class TimelapseStack:
    """A time-lapse as frames along one time axis; reads a frame only when asked for it."""

    name: str
    path: Path | None
    axes: str
    n_frames: int
    frame_shape: tuple[int, int]
    dtype: np.dtype
    frame_interval_h: float
    frame_interval_source: str
    start_offset_h: float = 0.0
    #: The channel index selected from a multichannel source, None for single-channel.
    channel: int | None = None
    n_channels: int = 1
    #: One name (None where unknown) per channel of a multichannel source.
    channel_names: tuple = ()
    #: For an array that is one channel of a multichannel file (a napari layer from the
    #: reader): that channel's index and description, for tables and checks.
    source_channel: tuple[int, str] | None = None
    #: One 2D image from a file that names no time (no T axis, no ImageJ or OME metadata):
    #: a picture, which napari's own readers show. A one-frame file from Fiji (or written
    #: with ImageJ or OME metadata) is a time-lapse of one frame: ImageJ leaves out a T of 1.
    single_image: bool = False
    _source: Any = field(default=None, repr=False)
    _source_axes: str = field(default="", repr=False)
    _time_axis: int | None = field(default=None, repr=False)
    _channel_axis: int | None = field(default=None, repr=False)
    _tiff: tifffile.TiffFile | None = field(default=None, repr=False)

    @property
    def is_rgb(self) -> bool:
        return self.axes == "TYXS"

    @property
    def channel_desc(self) -> str:
        """The chosen channel by name where the file names it (see :mod:`.channels`)."""
        if self.source_channel is not None:
            return self.source_channel[1]
        return describe(self.channel, self.channel_names)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W) or (H, W, 3), in the stored dtype (native byte order)."""
        if self._source is None:
            raise StackError(f"stack {self.name!r} is closed; open it again to read frames")
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise StackError(f"frame index must be an integer, got {index!r}")
        if not 0 <= index < self.n_frames:
            raise FrameIndexError(
                f"frame {index} is out of range for stack {self.name!r} "
                f"with {self.n_frames} frames (valid: 0..{self.n_frames - 1})"
            )
        key = self._frame_key(int(index))
        kept = [a for a, k in zip(self._source_axes, key) if isinstance(k, slice)]
        data = np.array(self._source[key], dtype=self.dtype)
        order = [kept.index(a) for a in _SPATIAL if a in kept]
        return np.ascontiguousarray(data.transpose(order))

    def frames(self, indices) -> np.ndarray:
        """Frames at ``indices`` stacked as (N, H, W[, 3])."""
        indices = np.ravel(indices).tolist()
        if not indices:
            tail = (3,) if self.is_rgb else ()
            return np.empty((0, *self.frame_shape, *tail), dtype=self.dtype)
        return np.stack([self.frame(i) for i in indices])

    def hours(self, index):
        """Hours since experiment start of frame ``index`` (scalar or array)."""
        hours = np.asarray(index, dtype=np.float64) * self.frame_interval_h + self.start_offset_h
        return float(hours) if hours.ndim == 0 else hours

    def release_pages(self) -> None:
        """Unmap the pages of a read-only memory-mapped file read so far from this process.

        They stay in the kernel's page cache; without this, streaming a stack would grow
        resident memory by every frame read, up to the size of the file.
        """
        mapped = getattr(self._source, "_mmap", None)
        read_only = getattr(self._source, "mode", None) == "r"  # keep copy-on-write changes
        if read_only and hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mapped.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # closed meanwhile, or refused: only memory is at stake
                pass

    def close(self) -> None:
        """Release the file (and its memory map); later reads raise StackError."""
        self._source = None
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None

    def __enter__(self) -> TimelapseStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _frame_key(self, index: int) -> tuple:
        key = []
        for axis, (letter, size) in enumerate(zip(self._source_axes, self._source.shape)):
            if axis == self._time_axis:
                key.append(index)
            elif axis == self._channel_axis:
                key.append(self.channel)
            elif letter == "S" and size == 4:
                key.append(slice(0, 3))  # RGBA: the model sees RGB
            elif letter in _SPATIAL and not (letter == "S" and size == 1):
                key.append(slice(None))
            else:
                key.append(0)  # singleton axis
        return tuple(key)


_DAMAGED_HINT = "Copy or export it again (e.g. in Fiji: File > Save As > Tiff)."


class _TiffProblems(logging.Handler):
    """Collects what tifffile logs while this thread opens a file: it logs, rather than
    raises, both when a file is truncated (and then offers fewer frames) and when it skips
    something it recovers from (an odd private tag, invalid ImageJ/OME metadata). The
    logger is process-wide, so other threads' records are not this file's."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self._thread = threading.get_ident()

    def emit(self, record):
        if record.thread == self._thread:
            self.messages.append(re.sub(r"^<tifffile\.[^>]*>\s*", "", record.getMessage()))

    def damage(self) -> str | None:
        """The first record that shows real damage: the chain of images points past the
        end of the file (tifffile then drops the images after it)."""
        return next((m for m in self.messages if "invalid page offset" in m), None)

    def __enter__(self):
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("tifffile").removeHandler(self)


def _check_imagej_count(tif: tifffile.TiffFile, series, path: Path) -> None:
    """Refuse an ImageJ header whose image count the data do not match: tifffile then
    offers fewer images (or reads past the data) without saying so."""
    claimed = (tif.imagej_metadata or {}).get("images")
    page_size = math.prod(series.keyframe.shape)
    held = math.prod(series.shape) // page_size if page_size else 0
    if claimed is not None and int(claimed) != held:
        raise DamagedStackError(
            f"{path}: its ImageJ header says {int(claimed)} images but the file holds {held}; "
            f"the header is wrong or the file was cut short. {_DAMAGED_HINT}"
        )


class _TiffPages:
    """Array-like over a TIFF series that reads only the page a key points to.

    Used when the data are not memory-mappable (e.g. compressed). Each page holds the
    trailing axes of the series (Y, X and maybe S); the leading axes enumerate pages.
    """

    def __init__(self, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries):
        page_shape = tuple(series.keyframe.shape)
        n_lead = len(series.shape) - len(page_shape)
        lead_shape = tuple(series.shape[:n_lead])
        if n_lead < 0 or tuple(series.shape[n_lead:]) != page_shape or (
            math.prod(lead_shape) != len(series.pages)
        ):
            raise StackError(
                f"{tif.filename}: unusual TIFF layout (series shape {series.shape}, page shape "
                f"{page_shape}); save the stack as a plain or ImageJ TIFF (e.g. in Fiji)"
            )
        self._tif = tif
        self._lead_shape = lead_shape
        self._lock = threading.Lock()
        self.shape = tuple(series.shape)
        self.dtype = series.dtype

    def __getitem__(self, key: tuple) -> np.ndarray:
        n_lead = len(self._lead_shape)
        page = int(np.ravel_multi_index(key[:n_lead], self._lead_shape)) if n_lead else 0
        try:
            with self._lock:
                data = self._tif.asarray(key=page, series=0)
        except MemoryError:
            raise  # the machine's limit, not the file's fault
        except Exception as err:  # zlib.error, ValueError, ...: a damaged page
            raise DamagedStackError(
                f"{self._tif.filehandle.path}: image {page} cannot be read ({type(err).__name__}: "
                f"{err}); the file is damaged (truncated or corrupt). {_DAMAGED_HINT}"
            ) from err
        return data[key[n_lead:]]


def open_stack(
    path: str | os.PathLike,
    axes: str | None = None,
    channel: int | str | None = None,
    frame_interval_h: float | None = None,
    start_offset_h: float = 0.0,
    force_axes: bool = False,
) -> TimelapseStack:
    """Open a TIFF time-lapse lazily.

    A multichannel file needs ``channel`` (index or name, see :mod:`.channels`); without
    one it is refused with :class:`ChannelNotChosen`, which lists the channels. ``axes``
    replaces axes the file does not name (plain TIFFs); contradicting the axes its
    ImageJ/OME metadata names (channels read as time, say) is refused unless
    ``force_axes``.
    """
    path = Path(path)
    if not path.is_file():
        raise StackError(f"stack file not found (or not a file): {path}; check the path")
    mark_input(path)
    with _TiffProblems() as problems:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as err:  # tifffile raises many types for non-TIFF / corrupt files
            raise StackError(
                f"cannot read {path} as a TIFF ({err}); time-lapse stacks must be TIFF files "
                "(.tif/.tiff), e.g. saved from Fiji as an ImageJ hyperstack"
            ) from err
        try:
            series = tif.series[0] if tif.series else None
        except Exception:  # noqa: BLE001 - reported below with what tifffile logged
            series = None
    try:
        damage = problems.damage() or (series is None and next(iter(problems.messages), None))
        if damage:
            raise DamagedStackError(
                f"{path} is damaged (truncated or corrupt): {damage}. {_DAMAGED_HINT}"
            )
        if series is None:
            raise StackError(f"{path} contains no image data; check the file")
        _check_imagej_count(tif, series, path)
        for message in problems.messages:  # what tifffile skipped and recovered from
            warnings.warn(f"{path}: {message}; read anyway", stacklevel=2)
        source_axes = _validated_axes(axes, len(series.shape)) if axes else series.axes
        if not force_axes:
            _check_axes_against_file(source_axes, series, path)
        interval, interval_source = _frame_interval(tif, frame_interval_h)
        names = tiff_channel_names(tif, series.axes, tuple(series.shape), source_axes)
        source, keep_tiff = _tiff_source(tif, series, path)
        stack = _build_stack(
            source, source_axes, path.stem, path, channel, interval, interval_source,
            start_offset_h, names,
        )
        stack.single_image = stack.n_frames == 1 and not (
            "T" in source_axes or tif.is_imagej or tif.is_ome)
    except BaseException:
        tif.close()
        raise
    if keep_tiff:
        stack._tiff = tif
    else:
        tif.close()
    return stack


def stack_from_array(
    array,
    axes: str = "TYX",
    name: str = "array",
    frame_interval_h: float = DEFAULT_FRAME_INTERVAL_H,
    channel: int | None = None,
    start_offset_h: float = 0.0,
    source_channel: tuple[int, str] | None = None,
) -> TimelapseStack:
    """Wrap an in-memory (numpy, dask or zarr) array without copying or computing it;
    a C axis longer than 1 needs ``channel``, as in :func:`open_stack`.
    ``source_channel`` (index, description) says which channel of a file the array is."""
    if not (hasattr(array, "shape") and hasattr(array, "dtype") and hasattr(array, "__getitem__")):
        array = np.asarray(array)
    source_axes = _validated_axes(axes, len(array.shape))
    interval = _positive_interval(frame_interval_h, "frame_interval_h")
    stack = _build_stack(
        array, source_axes, name, None, channel, interval, "user", start_offset_h
    )
    if source_channel is not None and stack.channel is None:
        stack.channel = int(source_channel[0])  # for the table; this array has no C axis
        stack.source_channel = (int(source_channel[0]), str(source_channel[1]))
    return stack


def write_stack(
    path: str | os.PathLike,
    array,
    axes: str = "TYX",
    frame_interval_h: float = DEFAULT_FRAME_INTERVAL_H,
    compression: str | None = None,
) -> Path:
    """Write ``array`` atomically as a TIFF that records its frame interval.

    uint8, uint16 and float32 data become an ImageJ hyperstack (``finterval`` in seconds);
    other dtypes, which ImageJ cannot hold, an OME-TIFF (``TimeIncrement`` in seconds).
    """
    path = Path(path)
    array = np.asarray(array)
    axes = _validated_axes(axes, array.ndim)
    interval = _positive_interval(frame_interval_h, "frame_interval_h")
    _check_dtype(array.dtype, str(path))
    order = [axes.index(a) for a in AXES_LETTERS if a in axes]
    array = array.transpose(order)
    axes = "".join(axes[i] for i in order)
    rgb = "S" in axes and array.shape[axes.index("S")] in (3, 4)
    options: dict[str, Any] = {
        "compression": compression,
        "photometric": "rgb" if rgb else "minisblack",
    }
    if array.dtype in _IMAGEJ_DTYPES:
        options.update(imagej=True, metadata={"axes": axes, "finterval": interval * 3600})
    else:
        options.update(
            ome=True,
            metadata={"axes": axes, "TimeIncrement": interval * 3600, "TimeIncrementUnit": "s"},
        )
    return write_atomic(path, lambda tmp: tifffile.imwrite(tmp, array, **options), suffix=".tif")


def _build_stack(
    source, source_axes, name, path, channel, interval, interval_source, start_offset_h,
    names: tuple = (),
) -> TimelapseStack:
    where = str(path) if path else f"array {name!r}"
    dtype = np.dtype(source.dtype)
    _check_dtype(dtype, where)
    shape = tuple(int(n) for n in source.shape)
    for letter in "YX":
        if source_axes.count(letter) != 1:
            raise StackError(
                f"{where}: axes {source_axes!r} (shape {shape}) need exactly one Y and one X; "
                "pass axes explicitly, e.g. axes='TYX'"
            )
    if "S" in source_axes and shape[source_axes.index("S")] not in (1, 3, 4):
        raise StackError(
            f"{where}: S (samples) axis of size {shape[source_axes.index('S')]}; expected 3 (RGB) "
            "or 4 (RGBA). To treat the samples as channels, pass axes with C in place of S"
        )
    time_axis = _time_axis(source_axes, shape, where)  # a file that is no time-lapse first
    channel_axis = source_axes.index("C") if "C" in source_axes else None
    n_channels = shape[channel_axis] if channel_axis is not None else 1
    names = tuple(names) if len(names) == n_channels else (None,) * n_channels
    if n_channels == 1:
        channel_axis, names = None, ()
        if channel is not None and resolve_channel(channel, (None,)) is None:
            raise StackError(
                f"{where}: channel {channel!r} does not exist; the stack has one channel"
            )
        channel = None
    elif channel is None:
        raise ChannelNotChosen(
            choice_message(where, "this is a multichannel stack and no channel was chosen",
                           names), names)
    else:
        index = resolve_channel(channel, names)
        if index is None:
            raise StackError(choice_message(where, f"channel {channel!r} does not exist", names))
        channel = index
    rgb = "S" in source_axes and shape[source_axes.index("S")] in (3, 4)
    return TimelapseStack(
        name=name,
        path=path,
        axes="TYXS" if rgb else "TYX",
        n_frames=shape[time_axis] if time_axis is not None else 1,
        frame_shape=(shape[source_axes.index("Y")], shape[source_axes.index("X")]),
        dtype=dtype.newbyteorder("="),
        frame_interval_h=interval,
        frame_interval_source=interval_source,
        start_offset_h=float(start_offset_h),
        channel=channel,
        n_channels=n_channels,
        channel_names=names,
        _source=source,
        _source_axes=source_axes,
        _time_axis=time_axis,
        _channel_axis=channel_axis,
    )


def _check_axes_against_file(axes: str, series, path: Path) -> None:
    """Refuse axes that contradict the ones the file's metadata names.

    Letters Q and I mean the file does not say; any other letter is the file's word.
    """
    named = series.axes
    wrong = [
        (i, f, a) for i, (f, a) in enumerate(zip(named, axes)) if f not in "QI" and f != a
    ]
    if not wrong:
        return
    shape = tuple(int(n) for n in series.shape)
    what = "; ".join(f"its {f} axis (size {shape[i]}) would be read as {a}" for i, f, a in wrong)
    raise StackError(
        f"{path}: axes {axes!r} contradict the file's metadata, which names its axes "
        f"{named!r} (shape {shape}): {what}. Leave the axes to the file, or force them "
        "(CLI: --force-axes) only if the metadata is wrong"
    )


def _time_axis(source_axes: str, shape: tuple, where: str) -> int | None:
    """The one non-spatial, non-channel axis longer than 1 (T, or I/Q/Z when T is absent)."""
    candidates = [
        i for i, (a, n) in enumerate(zip(source_axes, shape)) if a not in _SPATIAL + "C" and n > 1
    ]
    if len(candidates) > 1:
        found = ", ".join(f"{source_axes[i]}={shape[i]}" for i in candidates)
        if "T" in source_axes:
            raise ExtraAxisError(
                f"{where}: besides time ({found}; axes {source_axes!r}, shape {shape}) the "
                "stack has another axis longer than 1; the model reads one image per time "
                "point, so reduce it first (e.g. a Z projection in Fiji: Image > Stacks > "
                "Z Project) or save one time series per file"
            )
        raise ExtraAxisError(
            f"{where}: more than one axis could be time ({found}; axes {source_axes!r}, shape "
            f"{shape}); pass axes with exactly one T and C for channels, e.g. axes='TCYX', "
            "or save one time series per file"
        )
    return candidates[0] if candidates else None


def _validated_axes(axes: str, ndim: int) -> str:
    if not isinstance(axes, str):
        raise StackError(f"axes must be a string such as 'TYX', got {axes!r}")
    axes = axes.upper()
    bad = sorted(set(axes) - set(AXES_LETTERS))
    if bad or len(axes) != ndim or len(set(axes)) != len(axes) or not {"Y", "X"} <= set(axes):
        raise StackError(
            f"invalid axes {axes!r} for data with {ndim} dimensions: expected {ndim} distinct "
            f"letters from {AXES_LETTERS!r}, one per dimension in order, including Y and X "
            "(e.g. 'TYX', 'TCYX', 'TYXS' for RGB)"
        )
    return axes


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "uif":
        raise StackError(
            f"{where}: unsupported pixel type {dtype}; expected integer or float images "
            "(e.g. uint8, uint16, float32); convert the stack first"
        )


def _positive_interval(value, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise StackError(f"{what} must be a number of hours, got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise StackError(f"{what} must be a positive number of hours, got {value!r}")
    return value


def _tiff_source(tif: tifffile.TiffFile, series, path: Path):
    """A memory map when the data are contiguous and uncompressed, else a page reader.

    Returns the source and whether it needs the TiffFile kept open.
    """
    try:
        mapped = tifffile.memmap(path, series=0, mode="r")
    except ValueError:  # compressed, tiled or scattered data cannot be mapped
        return _TiffPages(tif, series), True
    if tuple(mapped.shape) != tuple(series.shape):
        mapped = mapped.reshape(series.shape)
    return mapped, False


def _frame_interval(tif: tifffile.TiffFile, user_h: float | None) -> tuple[float, str]:
    """User value, else OME or ImageJ metadata, else the default, with where it came from."""
    if user_h is not None:
        return _positive_interval(user_h, "frame_interval_h"), "user"
    found = _ome_interval_h(tif) or _imagej_interval_h(tif)
    if found:
        return found, "metadata"
    return DEFAULT_FRAME_INTERVAL_H, "default"


def _hours(value, unit: str | None, default_unit: str, where: str) -> float | None:
    unit = (unit or default_unit).strip()
    factor = _HOURS_PER_UNIT.get(unit, _HOURS_PER_UNIT.get(unit.lower()))
    if factor is None:
        raise StackError(
            f"{where}: unknown time unit {unit!r} in the file's metadata; pass "
            "frame_interval_h (hours) explicitly"
        )
    try:
        hours = float(value) * factor
    except (TypeError, ValueError):
        return None
    return hours if math.isfinite(hours) and hours > 0 else None


def _imagej_interval_h(tif: tifffile.TiffFile) -> float | None:
    meta = tif.imagej_metadata or {}
    if "finterval" not in meta:
        return None
    return _hours(meta["finterval"], meta.get("tunit"), "sec", tif.filename)


def _ome_interval_h(tif: tifffile.TiffFile) -> float | None:
    """``Pixels TimeIncrement`` of the first image, else the median step of Plane ``DeltaT``."""
    root = ome_root(tif)
    if root is None:
        return None
    pixels = root.find("{*}Image/{*}Pixels")
    if pixels is None:
        return None
    if pixels.get("TimeIncrement") is not None:
        return _hours(
            pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit"), "s", tif.filename
        )
    planes = [
        p for p in pixels.findall("{*}Plane")
        if p.get("DeltaT") is not None and p.get("TheZ", "0") == "0" and p.get("TheC", "0") == "0"
    ]
    if len(planes) < 2:
        return None
    planes.sort(key=lambda p: int(p.get("TheT", "0")))
    times = [_hours(p.get("DeltaT"), p.get("DeltaTUnit"), "s", tif.filename) or 0.0 for p in planes]
    steps = np.diff(times)
    return float(np.median(steps)) if np.all(steps > 0) else None

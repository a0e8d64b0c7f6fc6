"""Channel names of multichannel TIFFs, choosing a channel by index or name, and saying which.

Fluorescence files differ in channel order (DAPI is channel 2 in one file and 0 in the
next), so a channel is chosen explicitly and recorded by name where the file names it:
OME ``Channel Name``, else ImageJ slice ``Labels`` (what Fiji writes), else the colour of
each channel's ImageJ LUT when those colours tell the channels apart.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import numpy as np

#: LUT end colours (RGB at value 255) and the names they get.
_LUT_COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "yellow": (255, 255, 0),
    "gray": (255, 255, 255),
}


def tiff_channel_names(tif, series_axes: str, shape: tuple, source_axes: str) -> tuple:
    """One name (or None) per channel of the first series, from the file's own metadata.

    Names are used only when they tell the channels apart; the file's axes must be the
    ones read (``source_axes``), since names belong to the file's C axis.
    """
    if "C" not in source_axes or series_axes != source_axes:
        return ()
    n = int(shape[source_axes.index("C")])
    for names in (_ome_names(tif, n), _imagej_label_names(tif, n), _lut_names(tif, n)):
        if names and len(set(names)) == n and all(names):
            return tuple(names)
    return (None,) * n


def ome_root(tif):
    """The parsed OME-XML of a TIFF (None when it has none, or none that parses)."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        return ElementTree.fromstring(tif.ome_metadata)
    except ElementTree.ParseError:
        return None


def _ome_names(tif, n: int) -> list[str] | None:
    root = ome_root(tif)
    if root is None:
        return None
    channels = root.findall("{*}Image/{*}Pixels/{*}Channel")
    if len(channels) != n:
        return None
    return [(c.get("Name") or "").strip() for c in channels]


def _imagej_label_names(tif, n: int) -> list[str] | None:
    """ImageJ slice labels run channel-fastest, so the first ``n`` name the channels."""
    labels = (tif.imagej_metadata or {}).get("Labels")
    if not isinstance(labels, (list, tuple)) or len(labels) < n:
        return None
    return [str(label or "").strip() for label in labels[:n]]


def _lut_names(tif, n: int) -> list[str] | None:
    luts = (tif.imagej_metadata or {}).get("LUTs")
    if not isinstance(luts, (list, tuple)) or len(luts) != n:
        return None
    names = []
    for lut in luts:
        lut = np.asarray(lut)
        if lut.shape != (3, 256):
            return None
        end = tuple(int(v) for v in lut[:, 255])
        names.append(next((k for k, rgb in _LUT_COLOURS.items() if rgb == end), ""))
    return names


def resolve_channel(choice, names: tuple) -> int | None:
    """The index of ``choice`` (an index, digits, or a channel name in any case), or None
    when no channel, or more than one, fits."""
    if isinstance(choice, str) and choice.strip().isdigit():
        choice = int(choice)
    if isinstance(choice, (int, np.integer)) and not isinstance(choice, bool):
        return int(choice) if 0 <= choice < len(names) else None
    wanted = str(choice).strip().lower()
    found = [i for i, name in enumerate(names) if name and name.lower() == wanted]
    return found[0] if len(found) == 1 else None


def listing(names: tuple) -> str:
    """``0 'mito', 1 'actin', 2 'DAPI'`` (indices alone where the file names none)."""
    text = ", ".join(f"{i} {name!r}" if name else str(i) for i, name in enumerate(names))
    return text + ("" if any(names) else " (the file's metadata names none)")


def choice_message(where: str, what: str, names: tuple) -> str:
    """Why a channel choice failed, with the channels there are and how to choose."""
    return (
        f"{where}: {what}; it has {len(names)} channels: {listing(names)}. Choose one by "
        "index or name (CLI: --channel; label table: a 'channel' column)"
    )


def describe(channel: int | None, names: tuple) -> str:
    """The chosen channel for tables, checkpoints and messages: its name where the file
    gives one (the same dye in files of different channel order), else its index."""
    if channel is None:
        return "single channel"
    name = names[channel] if channel < len(names) else None
    return str(name) if name else f"channel {channel} (unnamed)"


def channel_mismatch(trained: list[dict], desc: str) -> str | None:
    """A warning when a stack's channel is not one the checkpoint's stacks were trained on
    (``trained``: the checkpoint's per-stack records, each with a ``channel_desc``)."""
    known = {r["channel_desc"] for r in trained if r.get("channel_desc")}
    if not known or desc in known:
        return None
    return (
        f"the checkpoint was trained on {', '.join(sorted(known))}, but this stack is read as "
        f"{desc}; check that it shows the same staining"
    )

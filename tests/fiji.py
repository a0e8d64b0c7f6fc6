"""Multichannel uint8 files as Fiji writes them (max projections, hyperstacks): channel
names as slice labels, a LUT and a display range per channel, masked (zeroed) regions.

Each dye's pixels have their own level, so a test can tell which channel was read.
"""

from __future__ import annotations

import numpy as np
import tifffile

#: Dye -> (pixel level, LUT colour as RGB at 255).
DYES = {
    "DAPI": (200, (0, 0, 255)),
    "mito": (60, (255, 0, 0)),
    "actin": (120, (0, 255, 0)),
    "BF": (30, (255, 255, 255)),
}


def lut(rgb) -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint16)
    return np.stack([(ramp * c // 255).astype(np.uint8) for c in rgb])


def dye_plane(dye: str, size: int, seed: int = 0) -> np.ndarray:
    """A dye's level with a little noise, and a masked corner of zeros."""
    level, _ = DYES[dye]
    rng = np.random.default_rng(seed)
    plane = np.clip(level + rng.integers(-5, 6, (size, size)), 1, 255).astype(np.uint8)
    plane[: size // 4, : size // 4] = 0  # masked zeros
    return plane


def write_fiji(path, order, frames: int | None = None, size: int = 32, names=True,
               luts=True, frame_interval_s: float | None = None, seed: int = 0):
    """An ImageJ CYX (``frames=None``) or TCYX uint8 file with channels in ``order``."""
    planes = np.stack([dye_plane(d, size, seed + i) for i, d in enumerate(order)])
    if frames is None:
        data, axes = planes, "CYX"
    else:
        data = np.stack([np.roll(planes, t, axis=-1) for t in range(frames)])
        axes = "TCYX"
    metadata: dict = {"axes": axes, "Ranges": tuple(v for _ in order for v in (0.0, 255.0))}
    if names:
        metadata["Labels"] = list(order) * (frames or 1)
    if luts:
        metadata["LUTs"] = [lut(DYES[d][1]) for d in order]
    if frame_interval_s:
        metadata["finterval"] = frame_interval_s
    tifffile.imwrite(path, data, imagej=True, metadata=metadata)
    return path


def write_with_unknown_tag_type(path, data) -> None:
    """An ImageJ stack whose private tag has a type code TIFF does not define (99), as odd
    microscope software writes: tifffile logs an ERROR, skips the tag and reads every image."""
    import struct

    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TYX"},
                     extratags=[(65000, "s", 0, "vendor", True)])
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags[65000].offset
    raw = bytearray(path.read_bytes())
    struct.pack_into("<H", raw, offset + 2, 99)
    path.write_bytes(raw)

"""Device choices for the docks' device pickers: only what this machine has, 'auto' first.

Only torch knows the devices, and it loads after the docks open (``torch_ahead``): until
then a picker offers what every machine has.
"""

from __future__ import annotations

from . import torch_ahead

BEFORE_TORCH = [("auto", "auto"), ("cpu", "cpu")]


def device_choices(_widget=None) -> list[tuple[str, str]]:
    """(label, value) pairs; 'auto' names the device it resolves to; before torch is loaded,
    :data:`BEFORE_TORCH`. A magicgui picker takes this function as its choices, so that
    napari's reset of them (at every layer added, removed or moved) asks again."""
    if not torch_ahead.loaded():
        return BEFORE_TORCH
    from ..core.device import available_devices

    found = available_devices()
    return [(f"auto ({found[0]})", "auto")] + [(d, d) for d in found]

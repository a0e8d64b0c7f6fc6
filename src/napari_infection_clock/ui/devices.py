"""Device choices for the docks' device pickers: only what this machine has, 'auto' first."""

from __future__ import annotations

from ..core.device import available_devices


def device_choices() -> list[tuple[str, str]]:
    """(label, value) pairs; 'auto' names the device it resolves to."""
    found = available_devices()
    return [(f"auto ({found[0]})", "auto")] + [(d, d) for d in found]

"""Which torch device work runs on: CUDA, then Apple MPS, then CPU, unless told otherwise."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Devices this machine can run on, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if _mps_available():
        found.append("mps")
    found.append("cpu")
    return found


def select_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Resolve 'auto' to the best device; refuse a device this machine lacks, clearly."""
    if isinstance(preference, torch.device):
        return preference
    choice = (preference or "auto").lower()
    kind = choice.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(
            f"unknown device {preference!r}; choose one of {', '.join(DEVICE_CHOICES)}"
        )
    available = available_devices()
    if kind == "auto":
        return torch.device(available[0])
    if kind not in available:
        raise ValueError(
            f"device {choice!r} is not available on this machine; available: "
            f"{', '.join(available)} (use 'auto' to pick the best one)"
        )
    return torch.device(choice)

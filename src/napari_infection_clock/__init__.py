"""Infection state and infection clock from live-cell time-lapse stacks.

The import is kept light (no torch, no Qt): the Qt-free engine lives in :mod:`napari_infection_clock.core`,
the napari views in :mod:`napari_infection_clock.ui`, the command line in
:mod:`napari_infection_clock.cli`.

Every entry point (napari's reader, sample data and docks, the CLI, the core) comes
through here first, so this is where triton's library is loaded self-bound, before
anything can import torch: in a process where napari's OpenGL context came first,
triton's LLVM would otherwise bind to the driver's and crash (see :mod:`.llvm_isolation`).
"""

from .llvm_isolation import load_triton_self_bound

__version__ = "0.1.0"

load_triton_self_bound()

"""Load triton so that its bundled LLVM binds to itself, not to an OpenGL driver's LLVM.

Triton (brought by the default torch wheel) ships a private LLVM inside ``libtriton.so``
and exports its symbols. Mesa's OpenGL drivers (llvmpipe, radeonsi: Xvfb, CI, virtual
machines, remote desktops, many AMD/Intel machines) load the system ``libLLVM`` into the
global symbol scope when napari creates its OpenGL context. A library opened later binds
its symbols in the global scope first, so ``libtriton.so``'s static initialisers ran on
Mesa's LLVM objects (another version, another layout) and the process died with SIGSEGV
as soon as a dock imported torchvision after the viewer existed.

``RTLD_DEEPBIND`` makes the dynamic linker look in the library's own scope first, which is
what a library carrying its own LLVM needs. Only ``libtriton.so`` is opened that way, and
only it: a later import of triton (by torch, on a thread of its own) finds that library
loaded and uses it as it is, and triton stays whole for ``torch.compile`` on CUDA.
Importing triton's Python modules here instead (its 50 kernels' sources parsed among the
rest) cost napari's GUI thread 0.23 s when the first dock opened or a stack was opened.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path


def load_triton_self_bound() -> None:
    """Load triton's library with ``RTLD_DEEPBIND`` before torch or torchvision can load it.

    Nothing happens where triton is absent or fails to load (CPU wheels, macOS, Windows,
    a broken GPU driver: the plugin must load all the same), already
    imported (too late to change how it was bound), or the platform has no
    ``RTLD_DEEPBIND`` (only glibc has it; elsewhere the symbol clash does not arise).
    A triton laid out otherwise than its wheels (no ``_C/libtriton``) is imported whole,
    with ``RTLD_DEEPBIND`` added to the interpreter's flags for that import only.
    """
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or "triton" in sys.modules:
        return
    library = _triton_library()
    if library is not None:
        try:  # local, whatever the process's default: Mesa must never bind to it either
            ctypes.CDLL(str(library), mode=os.RTLD_NOW | os.RTLD_LOCAL | deepbind)
        except OSError:  # broken or foreign: torch's own import of triton copes, or fails
            pass
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or broken (driver, CUDA mismatch): torch copes
        pass
    finally:
        sys.setdlopenflags(flags)


def _triton_library() -> Path | None:
    """Triton's ``_C/libtriton`` extension, found without importing triton; None where
    triton is absent or has no such file."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            library = Path(folder, "_C", "libtriton" + suffix)
            if library.is_file():
                return library
    return None

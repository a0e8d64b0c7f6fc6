"""Load triton so that its bundled LLVM binds to itself, not to an OpenGL driver's LLVM.

Triton (brought by the default torch wheel) ships a private LLVM inside ``libtriton.so``
and exports its symbols. Mesa's OpenGL drivers (llvmpipe, radeonsi: Xvfb, CI, virtual
machines, remote desktops, many AMD/Intel machines) load the system ``libLLVM`` into the
global symbol scope when napari creates its OpenGL context. A library opened later binds
its symbols in the global scope first, so ``libtriton.so``'s static initialisers ran on
Mesa's LLVM objects (another version, another layout) and the process died with SIGSEGV
as soon as a dock imported torchvision after the viewer existed.

``RTLD_DEEPBIND`` makes the dynamic linker look in the library's own scope first, which is
what a library carrying its own LLVM needs. Only triton's import is opened that way; the
flags are restored at once, and triton stays whole for ``torch.compile`` on CUDA.
"""

from __future__ import annotations

import os
import sys


def import_triton_self_bound() -> None:
    """Import triton with ``RTLD_DEEPBIND`` before torch or torchvision can import it.

    Nothing happens where triton is absent or fails to import (CPU wheels, macOS, Windows,
    a broken GPU driver: the plugin must load all the same), already
    imported (too late to change how it was bound), or the platform has no
    ``RTLD_DEEPBIND`` (only glibc has it; elsewhere the symbol clash does not arise).
    """
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or "triton" in sys.modules:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or broken (driver, CUDA mismatch): torch copes
        pass
    finally:
        sys.setdlopenflags(flags)

"""torch's side of the core (and matplotlib), loaded on a thread of its own when the first
dock opens.

Importing torch and torchvision takes seconds; the docks imported them as they opened, and
napari froze 8-9 s (idle, 2 cores) before the first dock showed. The docks' modules
import the core modules that need torch inside the functions that use them, and learn what
only torch knows (this machine's devices) from :func:`when_loaded`. A click that needs torch
before it is loaded waits for the import, as it would have at the dock's opening.

torch's import opens its shared libraries (dlopen: relocations and static constructors,
0.5-1.1 s on 2 cores) with the GIL held, and the GUI thread stalled that long while the
thread loaded torch; they are opened before it, through a C call that releases the GIL
(:func:`open_torch_libraries`), and torch's import finds them open. That is done after
scipy's imports, not at the thread's start: dlopen holds the C library's loader lock, and
the dock's first paints, which load Qt's and Mesa's own libraries, waited for it. What is
left is torch._C's module init (~0.5 s, which needs the GIL).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from .workers import import_ahead

#: The docked figures' matplotlib (the plot, Retrain, Evaluate), first: 0.5-0.7 s of imports
#: that the GUI thread made when the first dock with a figure opened, while this thread's
#: imports held the GIL half of the time (the plot, opened a second after Predict, took
#: 1.6 s to open); a dock opened before they are done waits for them.
FIGURES = ("matplotlib.figure", "matplotlib.backends.backend_qtagg", "matplotlib.layout_engine",
           "matplotlib.lines")
#: What runs import, scipy's and scikit-learn's first: importing scipy.stats or
#: sklearn.metrics asks whether arrays are torch's, which raises while another thread is
#: half-way through importing torch (the Evaluate dock failed to open).
AHEAD_OF_TORCH = ("scipy.special", "scipy.optimize", "scipy.stats", "sklearn.metrics")
#: Then torch's side of the core, in the order a first click needs it (predict, then train,
#: rank), once torch's libraries are open (:func:`open_torch_libraries`).
TORCH_SIDE = (
    "napari_infection_clock.core.device",
    "napari_infection_clock.core.predictor",
    "napari_infection_clock.core.checkpoint",
    "napari_infection_clock.core.retrain",
    "napari_infection_clock.core.uncertainty",
)
MODULES = FIGURES + AHEAD_OF_TORCH + TORCH_SIDE
#: torch's largest shared libraries (Linux), in the order and scope its import opens them:
#: libtorch_global_deps (which brings CUDA's runtime) for every later library, then the
#: CPU and CUDA (where installed) kernels that torch._C needs.
LIBRARIES = (("libtorch_global_deps.so", os.RTLD_GLOBAL), ("libtorch_cpu.so", os.RTLD_LOCAL),
             ("libtorch_cuda.so", os.RTLD_LOCAL))
POLL_MS = 100  # how often a dock looks whether the import is done; the GUI thread's only cost

_loaded = threading.Event()
_started = False


def _already_loaded() -> bool:
    """Every module is imported whole (a script or a test imported them before napari)."""
    modules = [sys.modules.get(name) for name in MODULES]
    return all(m is not None and not getattr(m.__spec__, "_initializing", False)
               for m in modules)


def open_torch_libraries() -> None:
    """Open :data:`LIBRARIES` with the GIL released: ctypes releases it around a call into C,
    not around its own dlopen nor Python's. Linux only, and not where ``LD_LIBRARY_PATH`` is
    set: there torch first opens CUDA's libraries from their wheels so that they win over
    the path's, and that order is left to torch. A library that fails to open is left to
    torch's import, which says why."""
    spec = importlib.util.find_spec("torch")
    if (sys.platform != "linux" or os.environ.get("LD_LIBRARY_PATH") or spec is None
            or spec.origin is None):
        return
    try:
        dlopen = ctypes.CDLL(None).dlopen
    except (OSError, AttributeError):  # a libc without dlopen in the global scope
        return
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = (ctypes.c_char_p, ctypes.c_int)
    folder = Path(spec.origin).parent / "lib"
    for name, scope in LIBRARIES:
        if (folder / name).exists():
            dlopen(os.fsencode(folder / name), os.RTLD_NOW | scope)


def loaded() -> bool:
    """Whether the modules are loaded (only once a dock has started their import)."""
    return _loaded.is_set()


def start() -> None:
    """Import the modules on a thread of the plugin's, once the dock being made is made (the
    import holds the GIL in long stretches: the dock's own imports would wait for them);
    only the first call does anything."""
    global _started
    if _started:
        return
    _started = True
    if _already_loaded():
        _loaded.set()
    else:
        QTimer.singleShot(0, lambda: import_ahead(*FIGURES, *AHEAD_OF_TORCH,
                                                  open_torch_libraries, *TORCH_SIDE,
                                                  _loaded.set))


def when_loaded(widget: QWidget, then: Callable[[], None]) -> None:
    """Call ``then`` on the GUI thread once the modules are loaded: now if they are, else
    from a timer of ``widget``'s (so it stops with the dock); starts their import."""
    start()
    if _loaded.is_set():
        then()
        return
    timer = QTimer(widget)
    timer.setInterval(POLL_MS)

    def look() -> None:
        if _loaded.is_set():
            timer.stop()
            timer.deleteLater()
            then()

    timer.timeout.connect(look)
    timer.start()

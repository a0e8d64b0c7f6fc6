"""Shared test configuration: headless-safe, deterministic, no mocking of the core.

* The Qt binding is pinned before anything can import qtpy (``QT_API=pyqt6`` unless
  the caller set it), so a stray PyQt5/PySide install never changes what is tested.
* The display comes from pytest-xvfb (part of the ``testing`` extra): it starts an
  Xvfb server for the session whenever the package is installed, so napari gets a
  real xcb window and a Mesa (llvmpipe) OpenGL context - no ``offscreen`` platform.
  The X/GL system libraries come from ``tools/install-system-deps.sh``.
* napari's settings are a fresh file of the test process's (``NAPARI_CONFIG``), which the
  fresh-process napari sessions inherit; window geometry is neither restored nor saved.
* pytest-xdist runs the test files in parallel (``addopts`` in pyproject.toml), each
  worker with its own Xvfb and its share of the cores; ``-n0`` runs them in one process.
* ``make_napari_viewer`` (napari's own pytest plugin, entry point ``napari`` ->
  ``napari.utils._testsupport``) and ``qtbot`` (pytest-qt) are used as they are.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np  # neither imports qtpy: the environment below is set in time
import pytest

# --- environment, set at import time (before any test module imports qtpy) -------
os.environ.setdefault("QT_API", "pyqt6")  # qtpy, napari, magicgui, superqt
# pytest-qt does not read QT_API; without this it would pick another binding first if
# one happens to be installed too.  (Initial conftests load before
# pytest-qt's pytest_configure, so this is in time.)
os.environ.setdefault("PYTEST_QT_API", os.environ["QT_API"])
# matplotlib must never try to open a GUI window from a test.
os.environ.setdefault("MPLBACKEND", "Agg")
# napari settings of this test process's own, which the fresh-process sessions (the
# user_session scripts) inherit: napari restores the window's size from the settings file
# and saves it at closing, so one session's window (732 x 508 px after a test's) became the
# next one's, and a dock opened into it left the canvas 0 px wide: nothing was painted.
# Window geometry is neither restored nor saved; the user's own settings are never touched.
_settings = Path(tempfile.mkdtemp(prefix="napari-settings-")) / "settings.yaml"
_settings.write_text("application:\n  save_window_geometry: false\n")
os.environ["NAPARI_CONFIG"] = str(_settings)
atexit.register(shutil.rmtree, _settings.parent, ignore_errors=True)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Modules that must never be pulled in by the Qt-free core.
GUI_MODULES = (
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "superqt",
    "napari",
    "magicgui",
    "vispy",
)


def pytest_configure(config):
    """Keep torch from oversubscribing small CI machines: the process that runs tests (a
    pytest-xdist worker, or pytest itself with ``-n0``) gets its share of the cores, at most
    two threads. On 2 cores, 2 workers of 1 thread each ran the suite in 658 s, against
    754 s with 2 threads each (waiting for each other's time slices) and 1100 s in one
    process. Set here, not at import: only now does xdist's controller know it runs no
    test itself; torch is imported later, by the test modules."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None and getattr(config.option, "numprocesses", None):
        return  # xdist's controller: its workers set their own
    share = (os.cpu_count() or 1) // int(workers or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(min(2, max(1, share))))


def pytest_report_header(config):
    return [
        (
            f"QT_API={os.environ.get('QT_API')} DISPLAY={os.environ.get('DISPLAY')!r} "
            f"CI={os.environ.get('CI')!r} python={sys.executable}"
        ),
    ]


@pytest.fixture(scope="session")
def repo_root() -> str:
    """Absolute path of the repository checkout (the directory holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator, so synthetic data is identical on every run."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def gui_modules() -> tuple[str, ...]:
    """Top-level module names that Qt-free code must not import."""
    return GUI_MODULES

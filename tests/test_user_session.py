"""The plugin as a user meets it, in a fresh process: napari first, then the docks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("user_session.py")


def run_session(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # the display is pytest-xvfb's (DISPLAY is inherited): a real X server and Mesa's
    # OpenGL, where an LLVM clash with the driver shows as a segmentation fault
    assert os.environ.get("DISPLAY"), "needs a display (pytest-xvfb)"
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_dock_opens_from_the_plugins_menu_after_the_viewer():
    proc = run_session()
    assert proc.returncode == 0, (
        f"exit {proc.returncode} (-11 is a segmentation fault)\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )
    assert "opened: 6 docks" in proc.stdout, proc.stdout

"""Python code run in a fresh interpreter, as a user's napari session starts: nothing of
the test process (its imports, its open docks, its frozen objects) carries over."""

from __future__ import annotations

import os
import subprocess
import sys


def run_fresh(code: str, timeout_s: int = 300) -> str:
    """Run ``code`` on the tests' display; its stdout (it must exit with 0)."""
    assert os.environ.get("DISPLAY"), "needs a display (pytest-xvfb)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout_s)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout

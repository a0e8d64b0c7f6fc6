"""Atomic file writes: a reader never sees half a file, and the old file survives a crash."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


class OutputNotWritable(OSError):
    """The folder a result should go to cannot be written."""


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; move it over ``path`` only if the body succeeds."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=folder)
    except OSError as exc:
        raise OutputNotWritable(
            f"cannot write '{path}': the folder '{folder}' is not writable ({exc.strerror}). "
            "Choose another output folder."
        ) from exc
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any file
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` and move the result over ``path`` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

"""Atomic file writes: a reader never sees half a file, and the old file survives a crash."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


class OutputNotWritable(OSError):
    """A result cannot be written where the user asked; the message says what to do."""


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: changing the umask later, from a worker thread, would race.
_FILE_MODE = 0o666 & ~_process_umask()


def check_writable(path) -> Path:
    """Fail early, before long work, if a file cannot be written at ``path``.

    It really creates (and removes) a file there: permission bits say little when
    running as root, and nothing about read-only mounts.
    """
    path = _not_a_folder(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputNotWritable(
            f"cannot write '{path}': '{path.parent}' is not a writable folder "
            f"({exc.strerror or exc}). Choose another output folder."
        ) from exc
    return path


def _not_a_folder(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise OutputNotWritable(f"'{path}' is a folder; give a file name to write to")
    return path


def write_atomic(path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it over
    ``path`` in one step; on any failure the temporary file goes and ``path`` is untouched."""
    path = _not_a_folder(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputNotWritable(
            f"cannot write '{path}': {exc.strerror}. Choose another output folder."
        ) from exc
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results should read like any file
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputNotWritable(f"cannot write '{path}': {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

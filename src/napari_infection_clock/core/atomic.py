"""Atomic file writes: a reader never sees half a file, and the old file survives a crash."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
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

#: (device, inode) of every file read as input in this process, with the paths it was read
#: at: no output may replace one while such a path still holds that inode.
_INPUTS: dict[tuple[int, int], set[str]] = {}

#: This host in temporary names (no dots: they separate the name's fields), so a folder
#: shared between cluster nodes tells whose process id a temporary carries.
_HOST = socket.gethostname().replace(".", "-") or "host"


def mark_input(path) -> None:
    """Remember ``path`` as a file the user gave to be read (a stack, checkpoint or label
    table), so that no result of this session is ever written over it."""
    try:
        st = os.stat(path)
    except OSError:
        return
    _INPUTS.setdefault((st.st_dev, st.st_ino), set()).add(os.path.abspath(path))


def _is_input(st: os.stat_result) -> bool:
    """Whether a marked input still holds this inode (once deleted, it may be reused)."""
    key = (st.st_dev, st.st_ino)
    for path in _INPUTS.get(key, ()):
        with contextlib.suppress(OSError):
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == key:
                return True
    return False


def _refuse_input(path: Path) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    if _is_input(st):
        raise OutputNotWritable(
            f"'{path}' is an input of this session (a stack, checkpoint or label table that "
            "was read); writing a result there would replace it. Choose another output name."
        )


def check_writable(path) -> Path:
    """Fail early, before long work, if a file cannot be written at ``path``.

    It really creates (and removes) a file there: permission bits say little when
    running as root, and nothing about read-only mounts.
    """
    path = _not_a_folder(path)
    _refuse_input(path)
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
    ``path`` in one step; on any failure the temporary file goes and ``path`` is untouched.
    A file read as input (:func:`mark_input`) is never replaced."""
    path = _not_a_folder(path)
    _refuse_input(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_temporaries(path)
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=suffix or ".tmp",
            dir=path.parent,
        )
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


def remove_temporaries(path, any_writer: bool = False) -> None:
    """Remove what earlier writes of ``path`` left when they were killed midway.

    A temporary file's name carries its writer's host and process id; by default only one
    of this host whose process is gone is stale. Other hosts' files (a shared folder), live
    writers' files and files that cannot be removed are left alone. POSIX only: elsewhere
    ``os.kill(pid, 0)`` does not just probe (on Windows it sends CTRL_C_EVENT).

    ``any_writer`` removes every temporary of ``path`` whoever wrote it, for a folder that
    one job owns while it runs (a training run's ``--out``): there host and process id do
    not tell a dead writer, since a requeued job may run on another node, or in a new
    container whose processes get the same ids as the killed ones.
    """
    path = Path(path)
    named = re.compile(rf"\.{re.escape(path.name)}\.([^.]+)\.(\d+)\..+")
    if not path.parent.is_dir() or not (any_writer or os.name == "posix"):
        return
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*"):
        match = named.fullmatch(tmp.name)
        if match is None:
            continue
        host, pid = match[1], int(match[2])
        if any_writer or (host == _HOST and pid != os.getpid() and not _process_alive(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def write_text_atomic(path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

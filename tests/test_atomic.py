import stat
from pathlib import Path

import pytest

from napari_infection_clock.core.atomic import (
    OutputNotWritable,
    check_writable,
    write_atomic,
    write_text_atomic,
)


def test_replaces_whole_file_with_normal_permissions(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "a.txt", "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert list(path.parent.iterdir()) == [path]
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by others like any file


def test_failed_write_keeps_old_file_and_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "a.txt", "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomic(path, broken)
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_folder_or_unwritable_target_is_a_clear_error(tmp_path):
    with pytest.raises(OutputNotWritable, match="is a folder"):
        write_text_atomic(tmp_path, "x")
    not_a_folder = write_text_atomic(tmp_path / "file.txt", "x")
    for target in (not_a_folder / "a.txt", Path("/proc/infection-clock-test.txt")):
        # /proc refuses new files even to root, so this holds for every user.
        with pytest.raises(OutputNotWritable, match="is not a writable folder"):
            check_writable(target)
        with pytest.raises(OutputNotWritable, match="cannot write"):
            write_text_atomic(target, "x")
    assert check_writable(tmp_path / "new" / "a.txt").parent.is_dir()

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


KILLED_WRITE = """
import sys, time
from napari_infection_clock.core.atomic import write_atomic

def slow(tmp):
    tmp.write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)

write_atomic(sys.argv[1], slow, suffix=".pt")
"""


def test_a_killed_write_leaves_nothing_the_next_write_does_not_remove(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")
    for _ in range(2):
        writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITE, str(target)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "writing"
        writer.kill()
        writer.wait()
    assert list(tmp_path.glob(".model.pt.*"))  # what the kills left
    write_atomic(target, lambda tmp: tmp.write_bytes(b"new"), suffix=".pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert target.read_bytes() == b"new"


def test_stale_temporaries_are_this_hosts_and_an_undeletable_one_does_not_fail_writes(tmp_path):
    """On a shared folder (a cluster's filesystem) a pid only means something on the host
    that wrote it: another host's temporary is left alone. A leftover that cannot be removed
    does not fail the write."""
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    target = tmp_path / "table.csv"
    other_host = tmp_path / f".table.csv.another-node.{gone.pid}.tmp"
    other_host.write_text("a live writer on another node")
    stuck = tmp_path / f".table.csv.{socket.gethostname().replace('.', '-')}.{gone.pid}.x"
    (stuck / "inside").mkdir(parents=True)  # a folder: unlink fails
    names = []
    write_atomic(target, lambda tmp: names.append(tmp.name) or tmp.write_text("new"))
    assert target.read_text() == "new"
    assert other_host.exists()
    assert names[0].startswith(f".table.csv.{socket.gethostname().replace('.', '-')}.{os.getpid()}.")


def test_a_deleted_inputs_inode_reused_by_an_output_is_not_refused(tmp_path):
    """Inputs are remembered by inode for the whole session; once the input is gone, a
    later output that the filesystem gives the same inode is not the input."""
    import os

    from napari_infection_clock.core.atomic import mark_input

    stack, output = tmp_path / "stack.tif", tmp_path / "table.csv"
    stack.write_bytes(b"frames")
    mark_input(stack)
    with pytest.raises(OutputNotWritable, match="is an input"):
        write_text_atomic(stack, "x")
    os.link(stack, output)  # the output now holds the input's inode ...
    stack.unlink()  # ... and the input is gone, as after a delete and an inode reuse
    write_text_atomic(output, "results")
    assert output.read_text() == "results"

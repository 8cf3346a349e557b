"""fercli.files: atomic writes (a crash leaves the old file) with the permissions the umask gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fercli.files import atomic_write, is_regular_file


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_written_file_gets_the_mode_the_umask_gives(tmp_path, umask, mode):
    # What tempfile.mkstemp makes is 0600 whatever the umask: colleagues could not read tables.
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "t.csv", lambda tmp: Path(tmp).write_text("a\n"))
        plain = tmp_path / "plain"
        plain.write_text("x")  # what open() gives under the same umask: the reference
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.csv").stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("old")

    def fail(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_only_regular_files_are_regular(tmp_path):
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to("loop")
    assert is_regular_file(tmp_path / "f")
    assert not any(is_regular_file(tmp_path / n) for n in ("fifo", "loop", "missing"))
    assert not is_regular_file(tmp_path)

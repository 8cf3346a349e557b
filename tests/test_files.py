"""fercli.core.files: atomic writes (a crash leaves the old file) with the permissions the umask gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fercli.core.files import atomic_write, is_regular_file


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

    from fercli.core.errors import FerError

    with pytest.raises(FerError, match=f"cannot write {path} \\(disk full\\); what was there is as it was"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_only_regular_files_are_regular(tmp_path):
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to("loop")
    assert is_regular_file(tmp_path / "f")
    assert not any(is_regular_file(tmp_path / n) for n in ("fifo", "loop", "missing"))
    assert not is_regular_file(tmp_path)


def test_one_run_at_a_time_per_output_and_the_lock_names_its_holder(tmp_path):
    import json
    import socket

    from fercli.core.errors import FerError
    from fercli.core.files import OutputLock

    out = tmp_path / "r.parquet"
    with OutputLock(out) as lock:
        holder = json.loads(lock.path.read_text())
        assert lock.path == tmp_path / "r.parquet.lock"
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(FerError) as err:  # a second run on the same output, while this one lives
            OutputLock(out).acquire()
        message = str(err.value)
        assert f"process {os.getpid()} on {socket.gethostname()}" in message and str(lock.path) in message
        assert "\n" not in message
    assert not lock.path.exists()


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    import json
    import socket
    import subprocess
    import sys

    from fercli.core.files import OutputLock

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    out = tmp_path / "r.csv"
    (tmp_path / "r.csv.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": "x"}))
    with OutputLock(out) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert any(f"run {gone.pid}, which is gone" in r.getMessage() for r in caplog.records)


def test_a_lock_held_on_another_host_or_unreadable_is_not_taken(tmp_path):
    import json

    from fercli.core.errors import FerError
    from fercli.core.files import OutputLock

    lock = tmp_path / "r.csv.lock"
    lock.write_text(json.dumps({"host": "lab-server-2", "pid": 1, "started": "2026-12-04 03:00:00"}))
    with pytest.raises(
        FerError, match=r"process 1 on lab-server-2, since 2026-12-04 03:00:00\); wait for it, or remove"
    ):
        OutputLock(tmp_path / "r.csv").acquire()
    lock.write_text("garbage")
    with pytest.raises(FerError, match="names no run"):
        OutputLock(tmp_path / "r.csv").acquire()
    assert lock.read_text() == "garbage"  # never removed on a guess


def test_a_lock_that_cannot_be_written_is_one_line_and_leaves_no_lock(tmp_path):
    # A disk that takes 64 bytes per file: the holder's record (host, pid, time, command) does not fit.
    import subprocess
    import sys

    out = tmp_path / "r.csv"
    child = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))\n"
        "from fercli.core.errors import FerError\n"
        "from fercli.core.files import OutputLock\n"
        "try:\n"
        "    OutputLock(sys.argv[1]).acquire()\n"
        "except FerError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(out)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"cannot write {out}.lock (File too large)", done.stderr
    assert not Path(f"{out}.lock").exists()

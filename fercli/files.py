"""Writing files so a crash never leaves half of one: write a temporary file beside it, then rename."""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable

_umask_lock = threading.Lock()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary path in `path`'s folder, then rename it to `path`.

    The rename is atomic (same file system), so `path` holds either its old content or the
    whole new one; on any error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file 0600; what fer writes gets the mode any new file gets here.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process's umask (reading it means setting it: done under a lock, put back at once)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether `path` leads to a regular file: not a folder, FIFO, socket or device, which a
    reader would block on or misread."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_out_dir(out_dir: str | os.PathLike, *, overwrite: bool, what: str) -> None:
    """FerError unless `out_dir` may receive `what`: new, empty, or non-empty with overwrite."""
    from .errors import FerError

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FerError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FerError(f"{out_dir} is not empty: --overwrite replaces the {what} in it")

"""Writing files so a crash never leaves half of one (a temporary file beside it, then a rename),
and one run at a time per output (`OutputLock`)."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from .errors import DataError, FerError, first_line

LOCK_COMMAND_CHARS = 300  # the holder's command line, as far as a lock file records it

_umask_lock = threading.Lock()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary path in `path`'s folder, then rename it to `path`.

    The rename is atomic (same file system), so `path` holds either its old content or the
    whole new one; on any error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a read-only or missing folder
        raise FerError(f"cannot write {path} ({_reason(e)})") from None
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file 0600; what fer writes gets the mode any new file gets here.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota, a file-size limit: one line naming the file
        raise FerError(f"cannot write {path} ({_reason(e)}); what was there is as it was") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reason(error: OSError) -> str:
    return error.strerror or first_line(error)


def _umask() -> int:
    """The process's umask (reading it means setting it: done under a lock, put back at once)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def read_json_object(path: Path, missing: str, malformed: str, not_object: str) -> dict:
    """A JSON file that must hold an object; DataError `<path>: <missing>`, `<path>: <malformed>
    (<reason>)` or `<path>: <not_object>`, each one line, where it is absent, unreadable or else."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: {malformed} ({first_line(e)})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: {not_object}")
    return doc


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether `path` leads to a regular file: not a folder, FIFO, socket or device, which a
    reader would block on or misread."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_out_dir(out_dir: str | os.PathLike, *, overwrite: bool, what: str) -> None:
    """FerError unless `out_dir` may receive `what`: new, empty, or non-empty with overwrite."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FerError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FerError(f"{out_dir} is not empty: --overwrite replaces the {what} in it")


class OutputLock:
    """One run at a time per output: `<out name>.lock`, created exclusively, naming its holder.

    The file holds the holder's host, process id, start time and command. A lock left by a run
    that was killed (same host, its process gone) is taken over with a warning; one held by a
    live process, or by another host (whose processes cannot be seen from here), stops the new
    run with a one-line FerError naming the holder and the lock file to remove if it is stale.
    """

    def __init__(self, out: str | os.PathLike):
        self.path = Path(out).with_name(Path(out).name + ".lock")
        self._held = False

    def acquire(self) -> OutputLock:
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:LOCK_COMMAND_CHARS],
        }
        for _ in range(2):  # a second try after taking over a stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                self._stale_or_raise()
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(holder, f)
            except OSError as e:  # a full disk: a lock without its holder would look stale to the next run
                self.path.unlink(missing_ok=True)
                raise FerError(f"cannot write {self.path} ({_reason(e)})") from None
            self._held = True
            return self
        raise FerError(f"{self.path}: another run took the lock at the same moment; run again")

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _stale_or_raise(self) -> None:
        from .errors import printable

        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            host, pid = str(holder["host"]), int(holder["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            raise FerError(
                f"{self.path} exists but names no run: "
                f"if no fer run is writing {self.path.with_suffix('').name}, remove it"
            ) from None
        if host == socket.gethostname() and not _alive(pid):
            logging.getLogger("fercli").warning(
                "%s: taking over the lock of run %d, which is gone (killed?)", self.path, pid
            )
            self.path.unlink(missing_ok=True)
            return
        since = printable(str(holder.get("started", "?")))
        raise FerError(
            f"{self.path.with_suffix('')} is being written by another fer run "
            f"(process {pid} on {printable(host)}, since {since}); "
            f"wait for it, or remove {self.path} if that run is gone"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True

"""Process-wide settings the CPU pipeline needs to run fast and keep its memory flat.

Both were measured on the 2-core development machine (EfficientNet-B0, batch 16, 224 px crops):

- glibc serves every allocation above its mmap threshold (tens of MB: activations, decoded
  frame batches) with a fresh mmap and unmaps it on free, so each forward pass page-faults its
  whole working set again: ~120,000 minor faults per batch, and the backbone ran at 93 crops/s
  instead of 172. Keeping freed memory in the heap for reuse removes the faults and, because the
  same buffers come back every batch, also keeps the process size flat.
- libgomp's worker threads spin for a while after each parallel region. Between backbone calls
  they spin on the cores that decoding and face detection need (5.7 CPU-s instead of 4.5 for
  the same 150 samples). A short spin keeps the back-to-back regions inside a forward pass fast
  and lets the threads sleep across the gaps. It must be in the environment before torch loads
  libgomp, so `fer`'s entry point (`cli.main`) applies both before any command imports torch.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import os
import platform
import sys

log = logging.getLogger("fercli")

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_FREED = 1 << 30  # bytes of free heap top kept for reuse before any is returned to the OS
GOMP_SPINCOUNT = "1000"  # spins before an idle libgomp thread sleeps (libgomp default: 300,000)


def quiet_openmp() -> None:
    """Shorten libgomp's idle spinning, unless the user chose a wait policy themselves."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)


def tune_process() -> None:
    """Both settings, as the `fer` command applies them first thing; for programs using the library.

    Call it before anything imports torch (libgomp reads GOMP_SPINCOUNT once, when it loads).
    Importing or calling fercli changes neither setting: they are the program's to choose. Worker
    processes and Ray tasks that fer starts for a job apply `keep_freed_memory` themselves.
    """
    quiet_openmp()
    keep_freed_memory()


@functools.cache  # process-wide: the first call decides, later ones (one per Ray clip) are free
def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory for reuse (glibc only).

    Process-wide and applied once; returns whether it is in force.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # mallopt returns 1 on success. M_MMAP_MAX 0: no allocation is served by its own mmap.
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED))
    except (OSError, AttributeError) as e:
        log.debug("mallopt unavailable: %s", e)
        return False


def exit_now(code: int | str | None = 0) -> None:
    """End the process with `code` after the atexit handlers, skipping the interpreter's teardown.

    A command that imported torch pays for its teardown at exit: measured on 2 cores, a process
    that imports torch, timm and MediaPipe took 3.9-4.2 s with the teardown and 2.9-3.1 s without,
    and its peak RSS grew by 125 MB in those last moments (pages of torch's libraries that only
    their destructors touch). Everything of fer's is written and closed before this is called;
    the handlers registered with atexit (logging's flush, Ray's and multiprocessing's clean-up)
    still run, then the standard streams are flushed. `code` as SystemExit takes it.
    """
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:  # not CPython: leave by the normal way
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)

"""Process settings: freed memory is reused without page faults; libgomp's spin is shortened by default."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Mallocs, writes and frees a 64 MB block three times and reports the minor page faults of the
# last two: glibc's default serves such a block with a fresh mmap each time, so every page faults
# anew. (Plain malloc, not numpy, which asks the kernel for huge pages and so faults far less.)
FAULTS = textwrap.dedent(
    """
    import ctypes, json, resource, sys
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "tuned":
        from fercli.core.runtime import keep_freed_memory
        assert keep_freed_memory()
    def touch():
        block = libc.malloc(64 * 2**20)
        ctypes.memset(block, 1, 64 * 2**20)
        libc.free(block)
    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch(); touch()
    print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
    """
)
PAGES = 64 * 2**20 // 4096


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc")
def test_freed_memory_is_reused_without_page_faults():
    assert _faults("default") >= PAGES  # the reference: each of the two blocks faults its 16,384 pages
    assert _faults("tuned") < PAGES // 100


def _env_after(code: str, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code += (
        "; import os, json; print(json.dumps({k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_fer_program_shortens_the_openmp_spin_unless_the_user_chose():
    from fercli.core.runtime import GOMP_SPINCOUNT

    fer = "import fercli.cli; fercli.cli.run(['--version'])"  # what main() runs before it exits
    fer = f"exec({fer!r})"
    assert _env_after(fer) == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": GOMP_SPINCOUNT}
    assert _env_after(fer, GOMP_SPINCOUNT="5")["GOMP_SPINCOUNT"] == "5"
    assert _env_after(fer, OMP_WAIT_POLICY="ACTIVE") == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None}


def test_importing_and_calling_the_library_changes_no_process_setting(tmp_path):
    # The settings belong to the program: a library user's process keeps its own.
    code = (
        "import fercli, fercli.job.pipeline, fercli.nets.model, fercli.core.runtime as r; "
        "assert not r.keep_freed_memory.cache_info().currsize"
    )
    assert _env_after(code) == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}


def test_annotate_leaves_the_allocator_as_the_program_set_it(tmp_path, lstm_checkpoint):
    import media

    clip = media.make_clip(tmp_path / "c.mp4", 1.0, 10, (96, 96), media.still_face(10, 10, 70))
    code = (
        "import sys, fercli, fercli.core.runtime as r; "
        f"fercli.annotate([{str(clip)!r}], {str(tmp_path / 'r.csv')!r}, model={str(lstm_checkpoint)!r}, device='cpu'); "
        "assert not r.keep_freed_memory.cache_info().currsize, 'annotate applied mallopt'"
    )
    assert _env_after(code) == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}

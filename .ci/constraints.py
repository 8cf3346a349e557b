"""Regenerate constraints.txt: the versions pip picks today for fercli and all its extras, per CPython.

    python .ci/constraints.py

Resolves fercli's requirements (pyproject.toml, every extra) from wheels for CPython 3.10 to 3.14
on manylinux x86_64 (pip install --dry-run --report, as tests/test_packaging.py does), then writes
one line per package where every Python gets the same version, and one line per Python (with an
environment marker) where they differ. pip decides the markers of fercli's dependencies for the
Python it runs on, whatever --python-version says, so a package only another Python needs (a
backport, say) may go unpinned for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_packaging import PLATFORMS, PYTHONS, SOURCE_ONLY, requirements  # noqa: E402

HEADER = """\
# Versions known to work together for fercli with every extra, on Linux x86_64, per CPython
# (3.10 to 3.14). Made by `python .ci/constraints.py`; used as: pip install -c constraints.txt ...
"""


def resolve(folder: Path) -> dict[str, dict[str, str]]:
    running = {}
    for version in PYTHONS:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--only-binary=:all:",
            "--python-version",
            version,
            *(f"--platform={p}" for p in PLATFORMS),
            "--target",
            str(folder / version),
            "--quiet",
            "--report",
            str(folder / f"{version}.json"),
            *requirements(),
        ]
        running[version] = subprocess.Popen(command)
    pins = {}
    for version, process in running.items():
        if process.wait() != 0:
            raise SystemExit(f"CPython {version}: pip could not resolve fercli")
        report = json.loads((folder / f"{version}.json").read_text())
        pins[version] = {i["metadata"]["name"]: i["metadata"]["version"] for i in report["install"]}
    return pins


def lines(pins: dict[str, dict[str, str]]) -> list[str]:
    names = sorted({name for found in pins.values() for name in found}, key=str.lower)
    out = []
    for name in names:
        by_version = defaultdict(list)
        for python, found in pins.items():
            if name in found:
                by_version[found[name]].append(python)
        if len(by_version) == 1 and len(next(iter(by_version.values()))) == len(pins):
            out.append(f"{name}=={next(iter(by_version))}")
            continue
        for version, pythons in by_version.items():
            marker = " or ".join(f'python_version == "{p}"' for p in pythons)
            out.append(f"{name}=={version}; {marker}")
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        pins = resolve(Path(tmp))
    pinned = lines(pins) + [f"{name}=={version}" for name, version in SOURCE_ONLY.items()]
    pinned.sort(key=lambda line: line.split("==")[0].lower())  # by name; one name's lines keep their order
    (ROOT / "constraints.txt").write_text(HEADER + "\n".join(pinned) + "\n")
    print(f"constraints.txt: {sum(len(p) for p in pins.values())} pins over {len(pins)} Pythons")

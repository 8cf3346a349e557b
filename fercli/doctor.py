"""`fer doctor`: what this installation can do, in one table."""

from __future__ import annotations

import importlib.metadata as md
import platform
from pathlib import Path

PACKAGES = ("torch", "torchvision", "timm", "av", "decord2", "mediapipe", "openvino", "numpy", "pyarrow", "pandas", "typer", "rich")


def checks() -> list[tuple[str, str]]:
    """(item, finding) pairs; each check catches its own failure so the report always prints."""
    from . import __version__

    found = [("fer", __version__), ("python", platform.python_version())]
    found += [(name, _version(name)) for name in PACKAGES]
    found += [
        ("torch CUDA", _guard(_torch_cuda)),
        ("CPU video decoder", _guard(_pyav)),
        ("GPU video decoder", _guard(_decoder)),
        ("decord GPU decoding", _guard(_decord_cuda)),
        ("face detector", _guard(_face_detector)),
        ("weights cache", _guard(_weights)),
    ]
    return found


def report():
    from rich.table import Table

    table = Table(title="fer doctor", show_header=False)
    table.add_column("item")
    table.add_column("finding", overflow="fold")
    for item, finding in checks():
        table.add_row(item, finding)
    return table


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def _guard(check) -> str:
    try:
        return check()
    except Exception as e:  # a broken dependency is a finding, not a crash
        return f"error: {type(e).__name__}: {e}".splitlines()[0]


def _torch_cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"not available (torch {torch.__version__})"
    return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


def _pyav() -> str:
    import av

    return f"PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info})"


def _decoder() -> str:
    import decord

    # decord2 (what fer needs: its FFmpeg decodes AV1) and decord 0.6 both install the
    # `decord` folder: with both, one shadows or overwrites the other and uninstalling either
    # breaks the rest, so say so.
    owners = [name for name in ("decord2", "decord") if _version(name) != "not installed"]
    found = f"decord {decord.__version__} ({', '.join(owners) or 'no package metadata'})"
    if len(owners) > 1:
        found += ": both installed; pip uninstall -y decord decord2, then reinstall fer"
    return found


def _decord_cuda() -> str:
    import decord

    # The PyPI wheel is built without NVDEC; a CUDA build links the cuvid decoder.
    lib = Path(decord.__file__).parent / "libdecord.so"
    if lib.exists() and b"cuvid" in lib.read_bytes():
        return "built with CUDA (NVDEC)"
    return "CPU-only build (GPU runs decode on the CPU)"


def _face_detector() -> str:
    import numpy as np

    from .faces import FaceDetector

    with FaceDetector() as det:
        det.detect(np.zeros((64, 64, 3), np.uint8))
    return "MediaPipe BlazeFace (bundled): ok"


def _weights() -> str:
    from . import weights

    root = weights.cache_dir()
    cached = [e.name for e in weights.registry().values() if (root / e.filename).exists()]
    return f"{root}: " + (", ".join(cached) if cached else "nothing cached")

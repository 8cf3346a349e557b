"""`fer doctor`: what this installation can do, in one table."""

from __future__ import annotations

import importlib.metadata as md
import platform

from .core.errors import typed_line

PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "av",
    "ai-edge-litert",
    "openvino",
    "numpy",
    "pyarrow",
    "pandas",
    "typer",
    "rich",
)


def checks() -> list[tuple[str, str]]:
    """(item, finding) pairs; each check catches its own failure so the report always prints."""
    from . import __version__

    found = [("fer", __version__), ("python", platform.python_version())]
    found += [(name, _version(name)) for name in PACKAGES]
    found += [
        ("torch CUDA", _guard(_torch_cuda)),
        ("CPU video decoder", _guard(_pyav)),
        ("GPU video decoder", _guard(_gpu_decoder)),
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
        return f"error: {typed_line(e)}"


def _torch_cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"not available (torch {torch.__version__})"
    return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


def _pyav() -> str:
    import av

    return f"PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info})"


def _gpu_decoder() -> str:
    import torch

    from .core.devices import GPU_DECODER, gpu_decoder_problem

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = gpu_decoder_problem(device) if device.type == "cuda" else "torch sees no CUDA GPU"
    if problem is None:
        return f"{GPU_DECODER} {_version(GPU_DECODER)} (NVDEC): --decoder auto decodes on the GPU with --device cuda"
    return f"not used: {problem}"


def _face_detector() -> str:
    from .media import blazeface
    from .media.faces import FaceDetector

    model = blazeface.MODEL_FILE
    blazeface.verify_model(model)  # a damaged file is this check's error
    with FaceDetector():
        pass  # built and run once on a blank image
    return f"BlazeFace full range, {model} (SHA-256 verified), on LiteRT {_version('ai-edge-litert')}: ok"


def _weights() -> str:
    from .nets import weights

    root = weights.cache_dir()
    states = {e.name: weights.cache_state(e, root) for e in weights.registry().values()}
    cached = [
        name if state != "wrong file" else f"{name} (wrong file: set aside and fetched again when used)"
        for name, state in states.items()
        if state != "missing"
    ]
    return f"{root}: " + (", ".join(cached) if cached else "nothing cached")

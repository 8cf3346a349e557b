"""Where the backbone runs on a CPU: OpenVINO (`pip install 'fercli[openvino]'`; the default on a CPU
where it is installed, `default_engine`) or torch.

Only the per-crop backbone (EfficientNet-B0, nearly all of the model's arithmetic) moves to
OpenVINO; the LSTM and heads stay in torch, as do GPUs. The backbone is converted from the
checkpoint's torch network once per (backbone weights, input size, OpenVINO version) and kept as
OpenVINO IR in fer's cache (`weights.cache_dir()/openvino`), with f32 weights. A later run reads
the IR and compiles it in well under a second, and never builds the timm network, so it does
not import timm (and torchvision behind it) at all.

In f32 (`INFERENCE_PRECISION_HINT`, which OpenVINO would otherwise lower to bf16 on CPUs that
have it) the features match torch's to float rounding; tests/test_engines.py holds the tables
of both engines to TOLERANCE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..core.errors import FerError, first_line

log = logging.getLogger("fercli")

ENGINES = ("torch", "openvino")
AUTO = "auto"  # --engine's default: `default_engine` picks
ENGINE_ENV = "FER_ENGINE"  # pins the engine of every run that names none (e.g. "torch" for a batch script)
# |score - torch fp32's score| an engine's table keeps to (labels equal): tests/test_engines.py.
TOLERANCE = 1e-4
IR_FORMAT = 1  # bump when the conversion changes, so IR cached by older code is not reused
# fer's precisions -> OpenVINO's inference precision hint ("fp16" is CUDA-only in fer)
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
INSTALL_HINT = "pip install -c constraints.txt 'fercli[openvino]'"


def check_engine(engine: str, device, ray: str | None = None) -> None:
    """FerError unless `engine` is known and can run on `device` (a torch.device), here or on Ray."""
    if engine not in ENGINES:
        raise FerError(f"--engine must be one of {', '.join((AUTO, *ENGINES))}, not {engine!r}")
    if engine == "openvino" and device.type != "cpu":
        raise FerError(f"--engine openvino runs on the CPU, not {device}; GPUs run the model with torch")
    if engine != "torch" and ray:
        raise FerError(f"--engine {engine} runs the model in this process; Ray's model actors run torch")
    if engine == "openvino":
        import_openvino()  # before any weights are downloaded: say how to install it


def engine_of(model) -> str:
    """The engine a network's backbone runs on ("torch" unless `load_model` gave it another)."""
    return getattr(model, "engine", "torch")


@dataclass(frozen=True)
class Placement:
    """Where and how a network runs, settled once per run: its engine, torch.device and precision."""

    engine: str
    device: torch.device
    precision: str  # resolved: "fp32", "bf16" or "fp16", never "auto"
    chosen: bool = False  # picked by `default_engine`, not named: torch takes over where OpenVINO fails


def place(engine: str | None, device, precision: str = "auto", ray: str | None = None) -> Placement:
    """--engine, --device and --precision checked and resolved together: the one place they are.

    engine None or "auto": $FER_ENGINE where set (as if named), else `default_engine` for the
    device the model lands on. `annotate` (and `load_model` for a caller of its own) call it once
    and hand the Placement on; nothing below resolves them again.
    """
    from ..core.devices import resolve_precision

    engine = named_engine(engine)
    dev = engine_target(engine or "torch", device)
    chosen = engine is None
    engine = engine or default_engine(dev, ray)
    try:
        check_engine(engine, dev, ray)
    except FerError as e:
        if not chosen:
            raise
        log.warning("%s; the backbone runs with torch", e)  # an OpenVINO that is there but will not import
        engine = "torch"
    return Placement(engine, dev, resolve_precision(precision, dev), chosen)


def asked_engine(engine: str | None) -> str | None:
    """The engine `engine` names: None for None or "auto" ($FER_ENGINE or the default: `place`)."""
    return None if engine == AUTO else engine


def named_engine(engine: str | None) -> str | None:
    """The engine a run names: `engine`, else $FER_ENGINE; None where both leave it to the default."""
    if asked_engine(engine):
        return engine
    pinned = os.environ.get(ENGINE_ENV, "").strip()
    if pinned and pinned != AUTO and pinned not in ENGINES:
        raise FerError(f"{ENGINE_ENV} must be one of {', '.join((AUTO, *ENGINES))}, not {pinned!r}")
    return pinned if pinned in ENGINES else None


def engine_target(engine: str, device):
    """The torch.device `engine` runs on for a requested `device`, checked against what torch
    sees (`devices.resolve_device`): "auto" is the CPU for OpenVINO, the GPU if any for torch."""
    from ..core.devices import resolve_device

    return resolve_device("cpu" if engine == "openvino" and str(device) == "auto" else device)


def default_engine(device: torch.device, ray: str | None = None) -> str:
    """The engine a run takes when none is named, for the torch.device the model runs on
    (`engine_target`): OpenVINO on the CPU where it is installed, torch otherwise (a GPU, Ray's
    model actors, no OpenVINO).

    Chosen by measurement and parity (bench/engines.py, the backbone of HSEmotion's form, batches
    of 16 crops, 2 cores): OpenVINO f32 took 22 core-ms per crop against torch fp32's 31, and its
    table matched torch's (every label equal, scores within 2.4e-6; tests hold TOLERANCE).
    bf16 is no default: unmeasured here (no bf16 CPU) and it moves scores by more. Checking costs
    nothing: OpenVINO is looked up, not imported.
    """
    import importlib.util

    if ray or torch.device(device).type != "cpu":
        return "torch"
    return "openvino" if importlib.util.find_spec("openvino") is not None else "torch"


def import_openvino():
    """The openvino module, or a FerError that says how to install it."""
    try:
        import openvino
    except ImportError:
        raise FerError(f"--engine openvino needs OpenVINO: {INSTALL_HINT}") from None
    return openvino


class OpenVINOBackbone(nn.Module):
    """A compiled OpenVINO backbone in the place of the timm one: (N, 3, H, W) -> (N, F) float32.

    It has no parameters of its own (the weights live in the compiled model). Inputs must be on
    the CPU; the output is a fresh tensor (OpenVINO reuses its output buffer on the next call).
    """

    def __init__(self, compiled):
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.num_features = compiled.output(0).get_partial_shape()[1].get_length()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Channels-last crops are NHWC in memory: one contiguous NCHW copy for OpenVINO to read
        # in place, and one copy out of the output buffer it reuses.
        x = np.ascontiguousarray(images.detach().float().numpy())
        out = self.request.infer({0: x}, share_inputs=True, share_outputs=True)[self.compiled.output(0)]
        return torch.from_numpy(out.copy())


def openvino_backbone(
    state: dict[str, torch.Tensor],
    size: int,
    torch_backbone: Callable[[], nn.Module],
    precision: str = "fp32",
    threads: int | None = None,
    source: str = "checkpoint",
) -> OpenVINOBackbone:
    """The OpenVINO backbone for a checkpoint's `backbone.*` tensors in `state`, converting if not cached.

    `size` is the crop side in pixels; `torch_backbone()` builds the torch backbone to convert
    (called only when the cache lacks it). `threads` defaults to torch's thread count, so both
    engines use the same cores. `source` names the checkpoint in errors.
    """
    ov = import_openvino()
    if precision not in OV_PRECISION:
        raise FerError(f"--engine openvino runs in {' or '.join(OV_PRECISION)}, not {precision}")
    path = ir_path(state, size, ov.__version__)
    if not path.is_file():
        backbone = torch_backbone()
        try:
            _convert(backbone, size, path, ov)
        except Exception as e:  # a layer OpenVINO's frontend cannot trace: its complaint, in one line
            raise FerError(f"{source}: OpenVINO could not convert the backbone ({first_line(e)})") from None
    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
        "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all threads on it
        # Pinned threads cannot step aside for fer's decoding thread: unpinned, one 30 s 720p clip
        # took 4.9-5.5 s against 5.95-6.5 pinned (2-core AMD EPYC, alternating runs).
        "ENABLE_CPU_PINNING": False,
    }
    try:
        compiled = core.compile_model(core.read_model(path), "CPU", config)
    except RuntimeError as e:
        raise FerError(
            f"{path}: OpenVINO could not load this cached backbone ({first_line(e)}); delete it to convert again"
        ) from None
    ran = str(compiled.get_property("INFERENCE_PRECISION_HINT"))  # e.g. "<Type: 'float32'>"
    if precision == "bf16" and "bf" not in ran.lower():  # bf16 / bfloat16; OpenVINO falls back silently
        log.warning("this CPU has no bf16 support: OpenVINO runs the backbone in f32")
    return OpenVINOBackbone(compiled)


def ir_path(state: dict[str, torch.Tensor], size: int, ov_version: str) -> Path:
    """Where the IR of these backbone weights lives in the cache (a hash of all it depends on)."""
    from .weights import cache_dir

    h = hashlib.sha256(json.dumps({"ir": IR_FORMAT, "size": size, "openvino": ov_version}).encode())
    for name in sorted(k for k in state if k.startswith("backbone.")):
        tensor = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return cache_dir() / "openvino" / f"backbone-{h.hexdigest()[:24]}.xml"


def _convert(backbone: nn.Module, size: int, path: Path, ov) -> None:
    """Trace `backbone` into OpenVINO IR at `path` (a dynamic batch), written atomically."""
    example = torch.zeros(2, 3, size, size)
    # OpenVINO traces with torch.jit.trace, which torch now warns about on every call.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = ov.convert_model(backbone.eval().float().cpu(), example_input=example, input=[(-1, 3, size, size)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".convert-") as tmp:
        xml = Path(tmp) / path.name
        ov.save_model(model, xml, compress_to_fp16=False)  # f32 weights: the tables must match torch's
        # The .xml names no .bin; OpenVINO reads the .bin beside it. Move the weights first, so
        # a reader that sees the .xml always finds its weights whole.
        os.replace(xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(xml, path)

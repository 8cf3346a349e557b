"""Any supported weights file becomes one self-describing checkpoint dict; fer's own are written here.

Data flows one way: `weights` turns a name or path into a verified local file, this module turns
the file into a dict, and `model` turns the dict into a network. A checkpoint dict, whatever the
file it came from, holds:

    format, version   "fer-checkpoint", 1
    config            the ModelConfig fields as plain data, "preprocess" included
    state_dict        tensors, keyed as the network fer builds from `config` names them
    weights_sha256    SHA-256 of the file the weights came from (the table's metadata records it)
    source            what was asked for: a registry name or a path

Files read: fer checkpoints (from `fer train`, `torch.load(weights_only=True)`) and HSEmotion's
whole-pickled timm models, read with the same safe unpickler and an allowlist of module classes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import FerError, WeightsError, first_line
from ..core.files import atomic_write
from . import weights

if TYPE_CHECKING:
    import torch

log = logging.getLogger("fercli")

CHECKPOINT_FORMAT = "fer-checkpoint"
IDENTITY_FORMATS = ("dlib-dnn", "dlib-shape-predictor")  # who a face is (`faceid`), not how they feel
CHECKPOINT_VERSION = 1
# torch.save writes a zip archive, which may hold compressed entries that torch inflates in
# memory: a 2 MB file of zeros reached 7.1 GB before it was refused. What the archive declares is
# checked first. fer's largest file (a ResNet-50 run's last.pt, Adam's moments included) is
# about 0.3 GB.
MAX_UNPACKED_BYTES = 2 << 30

# The HSEmotion backbone: timm's TF-ported EfficientNet-B0 with a 10-way head
# (8 emotion logits, valence, arousal).
TIMM_ARCH = "tf_efficientnet_b0"
TIMM_NUM_OUTPUTS = 10

# HSEmotion ships `torch.save(model)`: a pickle of the whole module tree. Unpickling
# that normally runs arbitrary code, so we load with weights_only=True and allow only
# the module *classes* such a file names (types only: no function a pickle could call
# to do work). Found empirically from torch.save(timm.create_model(TIMM_ARCH)): with
# timm 0.9.7 (what the pinned file was saved with) and 1.0.31 it names the same 7 timm
# classes (efficientnet, _efficientnet_blocks x3, conv2d_same, norm_act,
# adaptive_avgmax_pool) and 8 torch.nn ones; the rest cover older layouts and variants.
SAFE_CLASSES = (
    "timm.models.efficientnet.EfficientNet",
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv",
    "timm.models._efficientnet_blocks.InvertedResidual",
    "timm.models._efficientnet_blocks.SqueezeExcite",
    "timm.layers.conv2d_same.Conv2dSame",
    "timm.layers.norm_act.BatchNormAct2d",
    "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d",
    "timm.layers.linear.Linear",
    "timm.layers.activations.Swish",
    "timm.layers.activations_me.SwishMe",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.pooling.AdaptiveAvgPool2d",
    "torch.nn.modules.flatten.Flatten",
    "torch.nn.modules.dropout.Dropout",
)

# A pickle names each class by the module path it had when saved. The pinned file uses
# timm 0.9.7's paths (the current ones), but HSEmotion's copies before 2023 date from
# timm 0.4-0.6 (2021-22), before timm moved `timm.models.layers` to `timm.layers` (0.9)
# and `efficientnet_blocks` to `_efficientnet_blocks` (0.8). Map old path -> current
# class so such copies (users' own caches, mirrors) load without widening the allowlist.
_BLOCKS = "timm.models._efficientnet_blocks"
OLD_PATHS = {
    "timm.models.efficientnet_blocks.DepthwiseSeparableConv": f"{_BLOCKS}.DepthwiseSeparableConv",
    "timm.models.efficientnet_blocks.InvertedResidual": f"{_BLOCKS}.InvertedResidual",
    "timm.models.efficientnet_blocks.SqueezeExcite": f"{_BLOCKS}.SqueezeExcite",
    "timm.models.layers.conv2d_same.Conv2dSame": "timm.layers.conv2d_same.Conv2dSame",
    "timm.models.layers.norm_act.BatchNormAct2d": "timm.layers.norm_act.BatchNormAct2d",
    "timm.models.layers.adaptive_avgmax_pool.SelectAdaptivePool2d": (
        "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d"
    ),
    "timm.models.layers.linear.Linear": "timm.layers.linear.Linear",
    "timm.models.layers.activations.Swish": "timm.layers.activations.Swish",
    "timm.models.layers.activations_me.SwishMe": "timm.layers.activations_me.SwishMe",
    # timm 0.4 stores SqueezeExcite's gate as the *function* activations.sigmoid in
    # `gate_fn`. We keep only the state_dict and never run the module, so a harmless
    # stand-in type fills that attribute and the allowlist stays free of functions.
    "timm.models.layers.activations.sigmoid": "torch.nn.modules.activation.Sigmoid",
}

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")

# What HSEmotion's network is, as fer's config (model.ModelConfig's fields): a frame model, one
# frame per "window". Its preprocessing comes from its registry entry, with the weights.
HSEMOTION_ARCH = {
    "arch": "hsemotion",
    "backbone": TIMM_ARCH,
    "fps": 5.0,
    "window": 1,
    "temporal": "none",
    "hidden": 0,
    "layers": 0,
    "dropout": 0.0,
}


def hsemotion_config(preprocess: dict | None = None) -> dict:
    """The config dict of an HSEmotion frame model; preprocessing from the `hsemotion` registry entry by default."""
    pre = preprocess if preprocess is not None else weights.registry()["hsemotion"].preprocess
    return {**HSEMOTION_ARCH, "preprocess": dict(pre)}


def resolve(name_or_path: str | os.PathLike, progress=None) -> dict:
    """The checkpoint dict for a registry name or a file path (see the module docstring).

    Raises WeightsError naming the file when it is missing, unsafe or not a supported model.
    """
    # A registry name is always the registry's verified file, never a file that happens to bear
    # the name in the working directory: a path is a path (`./hsemotion`, or a Path object).
    if isinstance(name_or_path, str) and name_or_path in weights.registry():
        ckpt = _from_registry(name_or_path, progress)
    elif Path(name_or_path).is_file():
        ckpt = read_file(Path(name_or_path))
    else:
        known = ", ".join(sorted(weights.registry()))
        raise WeightsError(f"{name_or_path}: no such file or registered model (registered: {known})")
    return {**ckpt, "source": str(name_or_path)}


def read_file(path: str | os.PathLike) -> dict:
    """A fer checkpoint, or an HSEmotion-style whole-pickled timm model, as a checkpoint dict."""
    path = Path(path)
    try:
        ckpt = read_checkpoint(path)
        return {**ckpt, "weights_sha256": ckpt.get("weights_sha256") or weights.sha256(path)}
    except WeightsError:
        # Not fer's own: HSEmotion's form is the other one read, and its reader says what is
        # wrong (a refused class, the shape of the head) where fer's would only miss its header.
        state = load_timm_pickle(path)
        return _hsemotion_checkpoint(state, weights.sha256(path), hsemotion_config())


@contextmanager
def _quiet_unpickler():
    """torch's safe unpickler warns, on stderr, of any pickle protocol but 2 (a file made by plain
    pickle): a WeightsError says what is wrong with the file, on one line, or nothing is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a fer checkpoint with the safe unpickler; WeightsError if it is not one."""
    import torch

    path = Path(path)
    _check_archive(path)
    try:
        with _quiet_unpickler():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never for a stranger's file
        raise WeightsError(f"{path}: not a fer checkpoint (a pickle that is not plain weights; not run)") from None
    except Exception as e:  # torch raises several types for non-checkpoint files
        raise WeightsError(f"{path}: not a fer checkpoint ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a fer checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    return ckpt


def save_checkpoint(model, path: str | os.PathLike, **extra) -> Path:
    """Write a self-describing checkpoint of `model` (its `.config` and state_dict) atomically."""
    if getattr(model, "engine", "torch") != "torch":  # its backbone's weights live in the engine, not the state_dict
        raise FerError(
            f"cannot save {path}: the model runs its backbone on {model.engine}; load it with engine='torch'"
        )
    payload = {
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    return write_checkpoint(payload, path)


def write_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint dict (format and version added) atomically."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    atomic_write(path, lambda tmp: torch.save(doc, tmp))
    return path


def _from_registry(name: str, progress) -> dict:
    entry = weights.registry()[name]
    if entry.backbone_only:  # refused before any download
        raise WeightsError(
            f"{name}: backbone weights for training ({entry.description}), not a valence/arousal model for annotate"
        )
    if entry.format in IDENTITY_FORMATS:
        raise WeightsError(
            f"{name}: a face-identity file ({entry.description}), not a valence/arousal model for annotate"
        )
    raw = weights.fetch(name, progress=progress)
    if entry.format == CHECKPOINT_FORMAT:
        return read_file(raw)
    digest = weights.sha256(raw)
    config = hsemotion_config(entry.preprocess)
    # Converted once, then read as a plain checkpoint: no pickled modules on later runs. The name
    # holds the config's hash too, so a conversion made under other settings is never reused.
    tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    converted = raw.with_name(f"{raw.stem}.{digest[:12]}.{tag}.fer.pt")
    if converted.exists():
        return read_checkpoint(converted)
    ckpt = _hsemotion_checkpoint(load_timm_pickle(raw), digest, config)
    write_checkpoint({**ckpt, "source": entry.url}, converted)
    return ckpt


def _hsemotion_checkpoint(timm_state: dict, digest: str, config: dict) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config,
        "state_dict": {f"backbone.{k}": v for k, v in timm_state.items()},
        "weights_sha256": digest,
    }


def load_timm_pickle(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """State dict of a whole-pickled timm TF-EfficientNet-B0 (HSEmotion's file form), loaded safely.

    Also accepts a file holding that model's plain state_dict. The pickle is read with
    weights_only=True and an allowlist of module classes, so no code in the file runs.
    Raises WeightsError when the file is missing, unsafe, or not that model.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    _check_archive(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()), _quiet_unpickler():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _UNSAFE_GLOBAL.search(str(e))
        if unsafe:
            raise WeightsError(
                f"{path}: refused to load: it needs {unsafe.group(1)}, "
                "which is not on the safe allowlist of model classes"
            ) from e
        raise WeightsError(f"{path}: not a PyTorch weights file (unreadable pickle)") from e
    except (
        RuntimeError,
        EOFError,
        ValueError,
        LookupError,
        AttributeError,
        TypeError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
    ) as e:
        # Random or truncated bytes surface as whatever the unpickler tripped on.
        raise WeightsError(f"{path}: not a PyTorch weights file ({_short(e)})") from e
    state = _as_state_dict(obj, path)
    _check_shapes(state, path)
    return state


def _check_archive(path: Path) -> None:
    """Refuse a zip archive (torch.save's format) that declares more than MAX_UNPACKED_BYTES.

    torch's reader sizes each entry's buffer by its declared size, so the declared sizes bound
    what loading can take.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip (a legacy torch file, or no model at all): torch.load says which
    if declared > MAX_UNPACKED_BYTES:
        raise WeightsError(
            f"{path}: unpacks to {declared / 2**30:.1f} GiB, more than any model fer reads "
            f"({MAX_UNPACKED_BYTES / 2**30:.0f} GiB); refused before reading it"
        )


@lru_cache(maxsize=1)
def _safe_globals() -> list:
    """SAFE_CLASSES plus (class, old path) aliases, resolved to the installed timm/torch."""
    allowed: list = [_resolve(path) for path in SAFE_CLASSES]
    allowed += [(_resolve(current), old) for old, current in OLD_PATHS.items()]
    return allowed


def _resolve(dotted: str) -> type:
    module, _, attr = dotted.rpartition(".")
    obj = getattr(importlib.import_module(module), attr)
    if not isinstance(obj, type):
        raise TypeError(f"{dotted} is not a class; the weights allowlist takes classes only")
    return obj


def _as_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, torch.nn.Module):
        _warn_if_not_tf_padding(obj, path)
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}: not a fer checkpoint, a model or a state_dict")
    state = {str(k): v.detach().to("cpu").clone() for k, v in obj.items()}
    return _flatten_head(state)


def _flatten_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # HSEmotion's notebooks replace the head with nn.Sequential(nn.Linear(...)), which
    # saves it as classifier.0.*; it is the same layer as timm's classifier.*.
    if "classifier.weight" in state or "classifier.0.weight" not in state:
        return state
    return {re.sub(r"^classifier\.0\.", "classifier.", k): v for k, v in state.items()}


def _warn_if_not_tf_padding(module, path: Path) -> None:
    # efficientnet_b0 and tf_efficientnet_b0 share keys and shapes but pad differently
    # (Conv2dSame); only the module tree of a whole-model pickle tells them apart.
    from timm.layers import Conv2dSame

    stem = getattr(module, "conv_stem", None)
    if stem is not None and not isinstance(stem, Conv2dSame):
        log.warning(
            "%s: stem is %s, not TF 'same' padding; outputs may differ from %s", path, type(stem).__name__, TIMM_ARCH
        )


def _check_shapes(state: dict[str, torch.Tensor], path: Path) -> None:
    expected = _expected_shapes()
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got == expected:
        return
    missing = sorted(expected.keys() - got.keys())
    extra = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if extra:  # another network altogether (a ResNet): its own names say so best
        detail = f"{len(extra)} of its {len(got)} tensors are not {TIMM_ARCH}'s, e.g. {extra[0]}"
    elif wrong:  # the same network with another head (8 expressions only) or width
        detail = f"{wrong[0]} has shape {got[wrong[0]]}, expected {expected[wrong[0]]}"
    else:
        detail = f"{len(missing)} keys missing, e.g. {missing[0]}"
    raise WeightsError(
        f"{path}: not a fer checkpoint, nor HSEmotion's {TIMM_ARCH} with a {TIMM_NUM_OUTPUTS}-output head ({detail})"
    )


@lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    import timm
    import torch

    # Built on the meta device: shapes only, no memory or init time spent on values.
    with torch.device("meta"):
        model = timm.create_model(TIMM_ARCH, num_classes=TIMM_NUM_OUTPUTS, pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _short(error: BaseException) -> str:
    # torch's messages run to paragraphs; the first sentence carries the cause.
    return f"{type(error).__name__}: {first_line(error).split('. ')[0][:120]}"

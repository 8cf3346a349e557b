"""Weights registry: find, download, verify and safely load model weight files."""

from __future__ import annotations

import hashlib
import http.client
import importlib
import json
import logging
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from fercli.errors import WeightsError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("fercli")

CHUNK_BYTES = 1 << 20  # 1 MiB: read/hash/write granularity
TIMEOUT_S = 30.0  # seconds without data before a download counts as failed
FORMATS = ("timm-pickle", "fer-checkpoint")

# The HSEmotion backbone: timm's TF-ported EfficientNet-B0 with a 10-way head
# (8 emotion logits, valence, arousal).
TIMM_ARCH = "tf_efficientnet_b0"
TIMM_NUM_OUTPUTS = 10

# HSEmotion ships `torch.save(model)`: a pickle of the whole module tree. Unpickling
# that normally runs arbitrary code, so we load with weights_only=True and allow only
# the module *classes* such a file names (types only: no function a pickle could call
# to do work). Found empirically from torch.save(timm.create_model(TIMM_ARCH)).
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

# A pickle names each class by the module path it had when saved. HSEmotion's files
# date from timm 0.4-0.6 (2021-22), before timm moved `timm.models.layers` to `timm.layers`
# (0.9) and `efficientnet_blocks` to `_efficientnet_blocks` (0.8). Map old path ->
# current class so those files load without widening the allowlist.
_BLOCKS = "timm.models._efficientnet_blocks"
OLD_PATHS = {
    "timm.models.efficientnet_blocks.DepthwiseSeparableConv": f"{_BLOCKS}.DepthwiseSeparableConv",
    "timm.models.efficientnet_blocks.InvertedResidual": f"{_BLOCKS}.InvertedResidual",
    "timm.models.efficientnet_blocks.SqueezeExcite": f"{_BLOCKS}.SqueezeExcite",
    "timm.models.layers.conv2d_same.Conv2dSame": "timm.layers.conv2d_same.Conv2dSame",
    "timm.models.layers.norm_act.BatchNormAct2d": "timm.layers.norm_act.BatchNormAct2d",
    "timm.models.layers.adaptive_avgmax_pool.SelectAdaptivePool2d":
        "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d",
    "timm.models.layers.linear.Linear": "timm.layers.linear.Linear",
    "timm.models.layers.activations.Swish": "timm.layers.activations.Swish",
    "timm.models.layers.activations_me.SwishMe": "timm.layers.activations_me.SwishMe",
    # timm 0.4 stores SqueezeExcite's gate as the *function* activations.sigmoid in
    # `gate_fn`. We keep only the state_dict and never run the module, so a harmless
    # stand-in type fills that attribute and the allowlist stays free of functions.
    "timm.models.layers.activations.sigmoid": "torch.nn.modules.activation.Sigmoid",
}

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable weights file in the registry."""

    name: str  # registry key, e.g. "hsemotion"
    filename: str  # name of the file in the cache directory
    url: str  # where fetch() downloads it from
    sha256: str | None  # expected hex digest; None = not yet known (recorded on download)
    format: str  # "timm-pickle" (whole pickled timm model) or "fer-checkpoint"
    description: str  # one line for `fer weights list` and errors


def cache_dir() -> Path:
    """Where downloads go: $FER_CACHE_DIR, else $XDG_CACHE_HOME/fer, else ~/.cache/fer."""
    if os.environ.get("FER_CACHE_DIR"):
        return Path(os.environ["FER_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fer"
    return Path.home() / ".cache" / "fer"


def registry() -> dict[str, WeightsEntry]:
    """The shipped registry (fercli/registry.json), keyed by entry name."""
    raw = json.loads(Path(__file__).with_name("registry.json").read_text(encoding="utf-8"))
    return {name: WeightsEntry(name=name, **fields) for name, fields in raw.items()}


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    name: str | WeightsEntry,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    root: Path | None = None,
) -> Path:
    """Path of the cached weights file for a registry name (or entry), downloading it if needed.

    A cached file whose hash disagrees with the registry is downloaded again once.
    `progress(done_bytes, total_bytes_or_None)` is called as the download proceeds.
    Raises WeightsError when the file cannot be downloaded or fails its hash.
    """
    entry = name if isinstance(name, WeightsEntry) else _lookup(name)
    root = Path(root) if root is not None else cache_dir()
    target = root / entry.filename
    if target.is_file():
        if entry.sha256 is None or sha256(target) == entry.sha256:
            return target
        log.warning("%s does not match its registry hash; downloading it again", target)
    digest = _download(entry.url, target, progress, entry.sha256)
    if entry.sha256 is None:
        _record_hash(target, digest)
    return target


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
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _UNSAFE_GLOBAL.search(str(e))
        if unsafe:
            raise WeightsError(
                f"{path}: refused to load: it needs {unsafe.group(1)}, "
                "which is not on the safe allowlist of model classes"
            ) from e
        raise WeightsError(f"{path}: not a PyTorch weights file (unreadable pickle)") from e
    except (RuntimeError, EOFError, ValueError, LookupError, AttributeError, TypeError,
            zipfile.BadZipFile, UnicodeDecodeError) as e:
        # Random or truncated bytes surface as whatever the unpickler tripped on.
        raise WeightsError(f"{path}: not a PyTorch weights file ({_short(e)})") from e
    state = _as_state_dict(obj, path)
    _check_shapes(state, path)
    return state


def _lookup(name: str) -> WeightsEntry:
    entries = registry()
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise WeightsError(f"unknown weights name {name!r} (registry has: {known})")
    return entries[name]


def _download(
    url: str,
    target: Path,
    progress: Callable[[int, int | None], None] | None,
    expected: str | None,
) -> str:
    """Stream url into target via a temp file in the same directory; return its SHA-256.

    The target only ever holds a complete file that passed the hash check.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target, so os.replace is an atomic rename, never a copy.
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as e:
        raise WeightsError(f"cannot write to {target.parent} ({_first_line(e)})") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, progress, target)
        if expected is not None and digest != expected:
            target.unlink(missing_ok=True)  # a stale cached copy is known bad too
            raise WeightsError(
                f"{url}: downloaded file has SHA-256 {digest}, registry expects {expected}"
            )
        os.replace(tmp, target)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def _stream(
    url: str,
    out: BinaryIO,
    progress: Callable[[int, int | None], None] | None,
    target: Path,
) -> str:
    digest = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress:
                progress(0, total)
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if total is not None and done != total:
            raise http.client.IncompleteRead(b"", total - done)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        raise WeightsError(
            f"cannot download {url} ({_first_line(e)}); "
            f"fetch {url} on a machine with internet and place it at {target}"
        ) from e
    except OSError as e:  # not a network error: disk full, permissions, ...
        raise WeightsError(f"cannot write {target} ({_first_line(e)})") from e
    return digest.hexdigest()


def _record_hash(target: Path, digest: str) -> None:
    # sha256sum's format, so `sha256sum -c` can re-check the file later.
    Path(f"{target}.sha256").write_text(f"{digest}  {target.name}\n", encoding="utf-8")
    log.warning(
        "%s has no registry hash, so it is unverified; its SHA-256 is %s (recorded in %s.sha256)",
        target, digest, target,
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
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a model or a state_dict")
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
        log.warning("%s: stem is %s, not TF 'same' padding; outputs may differ from %s",
                    path, type(stem).__name__, TIMM_ARCH)


def _check_shapes(state: dict[str, torch.Tensor], path: Path) -> None:
    expected = _expected_shapes()
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got == expected:
        return
    missing = sorted(expected.keys() - got.keys())
    extra = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if wrong:
        detail = f"{wrong[0]} has shape {got[wrong[0]]}, expected {expected[wrong[0]]}"
    elif missing:
        detail = f"{len(missing)} keys missing, e.g. {missing[0]}"
    else:
        detail = f"{len(extra)} unexpected keys, e.g. {extra[0]}"
    raise WeightsError(
        f"{path}: not a {TIMM_ARCH} with a {TIMM_NUM_OUTPUTS}-output head ({detail})"
    )


@lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    import timm
    import torch

    # Built on the meta device: shapes only, no memory or init time spent on values.
    with torch.device("meta"):
        model = timm.create_model(TIMM_ARCH, num_classes=TIMM_NUM_OUTPUTS, pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _short(error: BaseException) -> str:
    # torch's messages run to paragraphs; the first sentence carries the cause.
    return f"{type(error).__name__}: {_first_line(error).split('. ')[0][:120]}"

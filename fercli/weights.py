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
    # Expected git blob id (what `git hash-object FILE` prints) of the file in the
    # repository that serves it; None = not pinned. Lets us pin a file whose SHA-256
    # nobody published: the repository's tree names the blob id of every file it holds.
    git_blob: str | None = None
    # How a face becomes this network's input, as its authors feed it (model.Preprocess fields);
    # None for fer checkpoints, which carry their own.
    preprocess: dict | None = None


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
    return _Digests.of_file(path).sha256


def git_blob_id(path: str | os.PathLike) -> str:
    """Git's object id of a file's bytes: hex SHA-1 of `blob <size>\\0` + bytes.

    Equals what `git hash-object FILE` prints (in a SHA-1 repository, without
    filters), and what a repository's tree lists for that file.
    """
    return _Digests.of_file(path).git_blob


class _Digests:
    """SHA-256 and git blob id of one byte stream, computed in a single pass.

    The blob id hashes a header holding the total size before any content, so
    the size must be known up front (Content-Length, or the file's size on disk).
    """

    def __init__(self, size: int):
        self._sha256 = hashlib.sha256()
        # SHA-1 here is git's object naming, not a security choice of ours: it is the
        # id the serving repository publishes, so it is the one we can check against.
        self._blob = hashlib.sha1(f"blob {size}\0".encode("ascii"), usedforsecurity=False)

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> _Digests:
        with open(path, "rb") as f:
            digests = cls(os.fstat(f.fileno()).st_size)
            while chunk := f.read(CHUNK_BYTES):
                digests.update(chunk)
        return digests

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self._blob.update(chunk)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def git_blob(self) -> str:
        return self._blob.hexdigest()


def fetch(
    name: str | WeightsEntry,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    root: Path | None = None,
) -> Path:
    """Path of the cached weights file for a registry name (or entry), downloading it if needed.

    Every download, and every cached file before it is returned, is checked against the
    entry's `git_blob` and `sha256` (those that are set). A cached file that fails is
    downloaded again once; a download that fails is deleted and raises. When the entry has
    no `sha256`, the downloaded file's SHA-256 is recorded in `<file>.sha256`.
    `progress(done_bytes, total_bytes_or_None)` is called as the download proceeds.
    Raises WeightsError when the file cannot be downloaded or fails a check.
    """
    entry = name if isinstance(name, WeightsEntry) else _lookup(name)
    root = Path(root) if root is not None else cache_dir()
    target = root / entry.filename
    if target.is_file():
        if entry.git_blob is None and entry.sha256 is None:
            return target  # nothing to check it against (it was recorded on download)
        if _mismatch(entry, _Digests.of_file(target)) is None:
            return target
        log.warning("%s does not match its registry hash; downloading it again", target)
    digests = _download(entry, target, progress)
    if entry.sha256 is None:
        _record_hash(target, digests.sha256, verified=entry.git_blob is not None)
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


def _mismatch(entry: WeightsEntry, digests: _Digests) -> str | None:
    """None when digests agree with every hash the entry pins, else what disagrees."""
    if entry.git_blob is not None and digests.git_blob != entry.git_blob:
        return f"git blob id {digests.git_blob}, registry expects {entry.git_blob}"
    if entry.sha256 is not None and digests.sha256 != entry.sha256:
        return f"SHA-256 {digests.sha256}, registry expects {entry.sha256}"
    return None


def _download(
    entry: WeightsEntry,
    target: Path,
    progress: Callable[[int, int | None], None] | None,
) -> _Digests:
    """Stream entry.url into target via a temp file in the same directory; return its digests.

    The target only ever holds a complete file that passed the entry's hash checks.
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
            digests = _stream(entry.url, out, progress, target)
        if digests is None:  # no Content-Length: the blob header's size is known only now
            digests = _Digests.of_file(tmp)
        wrong = _mismatch(entry, digests)
        if wrong is not None:
            target.unlink(missing_ok=True)  # a stale cached copy is known bad too
            raise WeightsError(f"{entry.url}: downloaded file has {wrong}; deleted it")
        os.replace(tmp, target)
        return digests
    finally:
        tmp.unlink(missing_ok=True)


def _stream(
    url: str,
    out: BinaryIO,
    progress: Callable[[int, int | None], None] | None,
    target: Path,
) -> _Digests | None:
    """Copy url's body to out; its digests, or None when the server sent no Content-Length."""
    digests = None
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            # Hash while streaming when the size is announced; the size check below
            # makes sure the blob header we hashed up front was the true size.
            digests = _Digests(total) if total is not None else None
            if progress:
                progress(0, total)
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                if digests is not None:
                    digests.update(chunk)
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
    return digests


def _record_hash(target: Path, digest: str, verified: bool) -> None:
    # sha256sum's format, so `sha256sum -c` can re-check the file later.
    Path(f"{target}.sha256").write_text(f"{digest}  {target.name}\n", encoding="utf-8")
    if verified:  # its git blob id matched: the SHA-256 is just recorded, not a warning
        log.info("%s matches its registry git blob id; its SHA-256 is %s (recorded in %s.sha256)",
                 target, digest, target)
        return
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

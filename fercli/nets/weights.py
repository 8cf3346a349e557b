"""Weights registry: a name becomes a verified local file (download, cache, git blob / SHA-256 check).

What the file holds, and how it is read safely, is `checkpoints`' business; building the network
from it is `model`'s. This module imports neither."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable

from ..core.errors import WeightsError, first_line
from ..core.files import read_json_object

log = logging.getLogger("fercli")

CHUNK_BYTES = 1 << 20  # 1 MiB: read/hash/write granularity
TIMEOUT_S = 30.0  # seconds without data before a download counts as failed
# timm-state-dict: a plain timm state dict (backbone weights for `fer train`, no valence/arousal head);
# dlib-dnn, dlib-shape-predictor: dlib's face-recognition network and its landmarks (`faceid`)
FORMATS = ("timm-pickle", "fer-checkpoint", "timm-state-dict", "dlib-dnn", "dlib-shape-predictor")
REGISTRY_FILE = Path(__file__).parents[1] / "registry.json"  # shipped at fercli/registry.json (weights/registry.json)
REGISTRY_ENV = (
    "FER_REGISTRY"  # a registry file of one's own (a lab's mirror, its own models), read over the shipped one
)
BACKBONE_ONLY_FORMAT = "timm-state-dict"  # backbone weights for training: no valence/arousal head, never a --model
SHA256_PREFIX_HEX = 8  # torch.hub's convention: file names end in the first 8 hex digits of the SHA-256


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable weights file in the registry."""

    name: str  # registry key, e.g. "hsemotion"
    filename: str  # name of the file in the cache directory
    url: str  # where fetch() downloads it from first: pinned to a commit or a release, never a branch
    sha256: str | None  # expected hex digest; None = not yet known (recorded on download)
    format: str  # one of FORMATS
    description: str  # one line for `fer weights list` and errors
    # Expected git blob id (what `git hash-object FILE` prints) of the file in the
    # repository that serves it; None = not pinned. Lets us pin a file whose SHA-256
    # nobody published: the repository's tree names the blob id of every file it holds.
    git_blob: str | None = None
    # How a face becomes this network's input, as its authors feed it (model.Preprocess fields);
    # None for fer checkpoints, which carry their own.
    preprocess: dict | None = None
    # The first SHA256_PREFIX_HEX hex digits of the SHA-256, where only those are published (timm's
    # release files, named `<stem>-<prefix>.pth`): a 32-bit check against a wrong or truncated
    # file, not against a forged one. The full digest is recorded on download.
    sha256_prefix: str | None = None
    # Other places that serve the same bytes, tried in order after `url` fails or serves another
    # file; every download is checked against the same hashes, whichever URL it came from.
    mirrors: tuple[str, ...] = ()

    @property
    def pinned(self) -> bool:
        """Whether any hash pins the file (a cached copy is re-checked before use)."""
        return any(h is not None for h in (self.git_blob, self.sha256, self.sha256_prefix))

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL fetch() tries, in order: `url`, then the mirrors."""
        return (self.url, *self.mirrors)

    @property
    def backbone_only(self) -> bool:
        """Whether the file is backbone weights for training, with no valence/arousal head."""
        return self.format == BACKBONE_ONLY_FORMAT


def cache_dir() -> Path:
    """Where downloads go: $FER_CACHE_DIR, else $XDG_CACHE_HOME/fer, else ~/.cache/fer."""
    if os.environ.get("FER_CACHE_DIR"):
        return Path(os.environ["FER_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fer"
    return Path.home() / ".cache" / "fer"


def registry() -> dict[str, WeightsEntry]:
    """The registry keyed by entry name: the shipped one (fercli/registry.json), and over it the
    entries of the file $FER_REGISTRY names, where set (same name: theirs replaces the shipped)."""
    entries = _read_registry(REGISTRY_FILE)
    if os.environ.get(REGISTRY_ENV):
        entries.update(_read_registry(Path(os.environ[REGISTRY_ENV]).expanduser()))
    return entries


def _read_registry(path: Path) -> dict[str, WeightsEntry]:
    raw = read_json_object(path, "no such registry file", "not a registry file", "not a registry file (no JSON object)")
    entries = {}
    for name, fields in raw.items():
        try:
            entry = WeightsEntry(name=name, **fields)
        except TypeError as e:  # a field missing or unknown
            raise WeightsError(f"{path}: entry {name!r}: {first_line(e)}") from None
        urls_listed = isinstance(entry.mirrors, (list, tuple)) and all(isinstance(u, str) for u in entry.urls)
        if entry.format not in FORMATS or not urls_listed:
            raise WeightsError(
                f"{path}: entry {name!r} needs a url, a list of mirrors (may be empty) and a "
                f"format of {', '.join(FORMATS)}"
            )
        entries[name] = replace(entry, mirrors=tuple(entry.mirrors))
    return entries


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
    wrong = None
    if target.is_file():
        if not entry.pinned:
            return target  # nothing to check it against (it was recorded on download)
        wrong = _mismatch(entry, _Digests.of_file(target))
        if wrong is None:
            return target
        aside = _set_aside(target)
        wrong = f"{target} was not the registry's file: it has {wrong} (moved to {aside.name})"
        log.warning("%s; downloading the registry's file", wrong)
    try:
        digests = _download(entry, target, progress)
    except WeightsError as e:
        if wrong is None:
            raise
        # A file of one's own is a path, never the registry's name: say how to pass it.
        raise WeightsError(f"{wrong}; {e}; to use that file as it is, pass it with --model {aside}") from e
    if entry.sha256 is None:
        _record_hash(target, digests.sha256, verified=entry.pinned)
    return target


def cache_state(entry: WeightsEntry, root: Path | None = None) -> str:
    """ "missing", "verified" (its pinned hash matches), "unpinned" (nothing to check) or "wrong file"."""
    target = (Path(root) if root is not None else cache_dir()) / entry.filename
    if not target.is_file():
        return "missing"
    if not entry.pinned:
        return "unpinned"
    return "verified" if _mismatch(entry, _Digests.of_file(target)) is None else "wrong file"


def _set_aside(target: Path) -> Path:
    """Move a cached file that fails its hash out of the cache's way, keeping it: it may be a
    user's own copy, put where fer asked for the file. Named by its own SHA-256, so setting the
    same file aside twice keeps one copy."""
    aside = target.with_name(f"{target.name}.{sha256(target)[:12]}.rejected")
    os.replace(target, aside)
    return aside


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
    if entry.sha256_prefix is not None and not digests.sha256.startswith(entry.sha256_prefix):
        return f"SHA-256 {digests.sha256}, registry expects one starting {entry.sha256_prefix}"
    return None


class _Unavailable(Exception):
    """One URL gave no good file (network error, HTTP error, a file that fails the hashes); the
    next may. Errors writing the cache are WeightsError: no other URL would help."""


def _download(
    entry: WeightsEntry,
    target: Path,
    progress: Callable[[int, int | None], None] | None,
) -> _Digests:
    """Try entry.urls in order until one serves a file that passes the entry's hash checks; it is
    moved to target, and its digests returned. WeightsError naming every URL's failure and the ways
    round it when none does."""
    failures = []
    for url in entry.urls:
        try:
            return _download_from(url, entry, target, progress)
        except _Unavailable as e:
            failures.append(f"{url}: {e}")
            if url != entry.urls[-1]:
                log.warning("%s: %s; trying the next URL", url, e)
    raise WeightsError(f"cannot download {entry.name} ({'; '.join(failures)}); {offline_advice(entry, target)}")


def offline_advice(entry: WeightsEntry, target: Path) -> str:
    """What to do where the registry's URLs cannot be reached: one clause, no full stop."""
    advice = (
        f"on a machine with internet run `fer weights download {entry.name}` (or fetch {entry.url}) "
        f"and place the file at {target}"
    )
    if entry.backbone_only:
        return advice
    return f"{advice}, or pass a weights file you have with --model PATH"


def _download_from(
    url: str,
    entry: WeightsEntry,
    target: Path,
    progress: Callable[[int, int | None], None] | None,
) -> _Digests:
    """Stream url into target via a temp file in the same directory; return its digests.

    The target only ever holds a complete file that passed the entry's hash checks.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target, so os.replace is an atomic rename, never a copy.
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as e:
        raise WeightsError(f"cannot write to {target.parent} ({first_line(e)})") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digests = _stream(url, out, progress, target)
        if digests is None:  # no Content-Length: the blob header's size is known only now
            digests = _Digests.of_file(tmp)
        wrong = _mismatch(entry, digests)
        if wrong is not None:
            raise _Unavailable(f"downloaded file has {wrong}; deleted it")
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
        raise _Unavailable(first_line(e)) from e
    except OSError as e:  # not a network error: disk full, permissions, ...
        raise WeightsError(f"cannot write {target} ({first_line(e)})") from e
    return digests


def _record_hash(target: Path, digest: str, verified: bool) -> None:
    # sha256sum's format, so `sha256sum -c` can re-check the file later.
    Path(f"{target}.sha256").write_text(f"{digest}  {target.name}\n", encoding="utf-8")
    if verified:  # its git blob id or SHA-256 prefix matched: the digest is just recorded
        log.info("%s matches its registry hash; its SHA-256 is %s (recorded in %s.sha256)", target, digest, target)
        return
    log.warning(
        "%s has no registry hash, so it is unverified; its SHA-256 is %s (recorded in %s.sha256)",
        target,
        digest,
        target,
    )

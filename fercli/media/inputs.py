"""Finding the clips to annotate: video files, and folders of frames (the AFEW-VA layout)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..core.errors import valid_text

# What a folder search takes for a video; a file named on its own is tried whatever its suffix.
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".wmv",
        ".flv",
        ".3gp",
        ".ogv",
        ".mxf",
    }
)
# Frames of an image-sequence clip; decode reads exactly these.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
FRAMES_FPS = 25.0  # frames/s of an image-sequence clip unless told otherwise: AFEW-VA's rate


@dataclass(frozen=True)
class Clip:
    path: Path  # a video file, or a folder of image frames
    name: str  # the `video` column: path relative to the input it came from (posix separators)
    frames: bool = False  # True for an image-sequence folder


@dataclass
class Inputs:
    clips: list[Clip]
    skipped: int  # files that are neither videos nor frames of an image-sequence clip
    missing: list[Path]  # arguments that do not exist


def find_clips(paths: Iterable[str | Path]) -> Inputs:
    """Clips under `paths` (files and folders, searched recursively) in a stable order.

    A folder that holds image frames and no videos is one clip. Inside folders, files without a
    video suffix (VIDEO_EXTENSIONS) are skipped and counted; a file named on its own is a clip
    whatever its suffix, so a video with an unusual name is read and anything else fails with a
    one-line error naming it instead of vanishing. A clip reached twice (the same file given
    twice, or inside two given folders) is kept once.
    """
    clips: list[Clip] = []
    seen: set[Path] = set()
    skipped: set[Path] = set()
    missing = []
    for arg in paths:
        root = Path(arg)
        if not root.exists():
            missing.append(root)
            continue
        found, others = _walk(root) if root.is_dir() else (_single(root), [])
        skipped.update(_real(p) for p in others)
        for clip in found:
            key = _real(clip.path)
            if key not in seen:
                seen.add(key)
                clips.append(clip)
    return Inputs(clips, len(skipped), missing)


def _real(path: Path) -> Path:
    """Where a path really leads. Never raises: a symbolic link loop (`notes -> notes`) is itself,
    and opening it later fails for that one clip (Path.resolve raises on loops before 3.13)."""
    return Path(os.path.realpath(path))


def _single(path: Path) -> list[Clip]:
    return [Clip(path, valid_text(path.name))]


def _walk(root: Path) -> tuple[list[Clip], list[Path]]:
    clips, skipped = [], []
    for here, files in _folders(root):
        videos = sorted(f for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS)
        images = [f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        if images and not videos:
            name = here.relative_to(root).as_posix() if here != root else root.name
            clips.append(Clip(here, valid_text(name), frames=True))
            skipped += [here / f for f in files if f not in images]
            continue
        # The name a table keeps: a file name that is not UTF-8 gets escapes Parquet and CSV can store.
        clips += [Clip(here / f, valid_text((here / f).relative_to(root).as_posix())) for f in videos]
        skipped += [here / f for f in files if f not in videos]
    return clips, skipped


def _folders(root: Path) -> Iterable[tuple[Path, list[str]]]:
    """(folder, its file names) under `root`, top-down, sub-folders in name order, as os.walk
    gives them but without recursion (os.walk recursed before CPython 3.12, and a tree 1,100
    folders deep overflowed Python's stack). Links to folders are not followed, as os.walk's."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError:  # unreadable, or gone meanwhile: os.walk skips it the same way
            continue
        folders = sorted(e.name for e in entries if _is_dir(e) and not e.is_symlink())
        yield folder, [e.name for e in entries if not _is_dir(e)]
        stack.extend(folder / name for name in reversed(folders))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop: a file, which then fails alone
        return False


def clip_under(root: str | os.PathLike, video: str) -> Path | None:
    """The file a table's `video` names under `root` (what fer annotate was given), or None.

    Inside `root` only: a table naming `../../x` or `/etc/x` (edited, or from elsewhere) would
    otherwise have a report or an ELAN file link files outside the folder given. Judged by name,
    so a link the user put in the folder stays theirs to follow.
    """
    base = Path(os.path.normpath(Path(root).absolute()))
    path = Path(os.path.normpath(base / video))
    try:
        return path if base in path.parents and path.is_file() else None
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return None

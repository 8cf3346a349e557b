"""Finding the clips to annotate: video files, and folders of frames (the AFEW-VA layout)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# What a folder search takes for a video; a file named on its own is tried whatever its suffix.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv", ".3gp", ".ogv", ".mxf"}
)
# Frames of an image-sequence clip; decode reads exactly these.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})


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
    return [Clip(path, path.name)]


def _walk(root: Path) -> tuple[list[Clip], list[Path]]:
    clips, skipped = [], []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        videos = sorted(f for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS)
        images = [f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        if images and not videos:
            name = here.relative_to(root).as_posix() if here != root else root.name
            clips.append(Clip(here, name, frames=True))
            skipped += [here / f for f in files if f not in images]
            continue
        clips += [Clip(here / f, (here / f).relative_to(root).as_posix()) for f in videos]
        skipped += [here / f for f in files if f not in videos]
    return clips, skipped


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

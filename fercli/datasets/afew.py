"""AFEW-VA on disk: one folder of frames per clip and its labels (`<id>/<id>.json`, or `<id>.json`
beside the folder), every field checked; a DataError names the first bad clip.

`AfewClip` is also the training clip of the other layout fer trains on: `affwild.training_clips`
builds it from Aff-Wild2's annotation files and aligned crops."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import DataError, first_line
from ..core.files import is_regular_file
from ..core.labels import DIMENSIONS, LABEL_MAX, LABEL_MIN
from ..media.inputs import IMAGE_EXTENSIONS

N_LANDMARKS = 68
# A clip's frames are numbered from 0; sizes follow the largest number (n_frames), so one bogus
# key ("20000000") would allocate gigabytes. AFEW-VA clips hold a few hundred frames; this is 9 h
# at 30 frames/s.
MAX_FRAMES = 1_000_000


@dataclass(frozen=True)
class FrameLabel:
    valence: float  # -10..10: integers in AFEW-VA, Aff-Wild2's -1..1 times 10 (affwild.training_clips)
    arousal: float  # -10..10
    landmarks: np.ndarray | None = field(default=None, compare=False)  # (68, 2) x, y pixels


@dataclass
class AfewClip:
    id: str  # folder name, e.g. "001"
    folder: Path
    actor: str | None  # from the JSON; splits keep an actor's clips together
    labels: dict[int, FrameLabel]  # frame index -> labels
    images: dict[int, Path]  # frame index -> image file, for the frames that have one
    json_path: Path  # the label file (Aff-Wild2: the video's .txt)
    aligned: bool = False  # frames are already aligned face crops (Aff-Wild2's cropped_aligned): no detection
    part: str | None = None  # a split the data set itself assigns ("train", "val"), else None

    @property
    def n_frames(self) -> int:
        return max(self.labels) + 1

    def where(self) -> str:
        return f"clip {self.id} ({self.folder})"


def read_dataset(root: str | Path) -> list[AfewClip]:
    """Every clip under an AFEW-VA root, sorted by id. DataError names the first bad clip."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    beside = {p.stem: p for p in root.glob("*.json")}  # also accepted: <root>/<id>.json
    orphans = sorted(set(beside) - set(folders))
    if orphans:
        cid = orphans[0]
        raise DataError(f"clip {cid}: {beside[cid].name} has labels but the frames folder {root / cid} is missing")
    clips = []
    for cid in sorted(folders):
        json_path = folders[cid] / f"{cid}.json"
        if not json_path.is_file():
            json_path = beside.get(cid)
        if json_path is None:
            if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in folders[cid].iterdir()):
                raise DataError(f"clip {cid} ({folders[cid]}): no label file {cid}.json")
            continue  # not a clip (e.g. a cache or notes folder)
        clips.append(read_clip(folders[cid], json_path))
    if not clips:
        raise DataError(f"{root}: no AFEW-VA clips (<id>/<id>.json with frames beside it)")
    return clips


def label_files(root: str | Path) -> dict[Path, Path]:
    """Every clip folder under `root` (searched recursively, `root` itself included) -> its label file.

    Labels sit inside the clip folder (`<id>/<id>.json`) or beside it (`<id>.json` next to
    `<id>/`); inside wins when both exist.
    """
    root = Path(root)
    found = {p.parent: p for p in root.rglob("*.json") if p.stem == p.parent.name}
    for p in root.rglob("*.json"):
        if p.with_suffix("").is_dir():
            found.setdefault(p.with_suffix(""), p)
    return found


def read_clip(folder: str | Path, json_path: str | Path | None = None) -> AfewClip:
    """One clip folder and its labels, every field checked."""
    folder = Path(folder)
    cid = folder.name
    json_path = Path(json_path) if json_path is not None else folder / f"{cid}.json"
    where = f"clip {cid} ({json_path})"
    if not folder.is_dir():
        raise DataError(f"clip {cid}: frames folder {folder} is missing")
    if json_path.exists() and not is_regular_file(json_path):  # a FIFO would block the read forever
        raise DataError(f"{where}: label file is not a regular file")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is not data
    except FileNotFoundError:
        raise DataError(f"{where}: label file missing") from None
    except RecursionError:  # arrays or objects nested deeper than Python's stack
        raise DataError(f"{where}: malformed JSON (nested too deeply)") from None
    except (OSError, ValueError) as e:  # ValueError: undecodable bytes, bad JSON, a 5,000-digit number
        raise DataError(f"{where}: malformed JSON ({first_line(e)})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), dict) or not doc["frames"]:
        raise DataError(f"{where}: malformed JSON (no 'frames' object with per-frame labels)")
    video_id = doc.get("video_id")
    if video_id is not None and str(video_id) != cid:
        raise DataError(f"{where}: video_id {video_id!r} does not match the folder name {cid!r}")
    labels = {}
    for key, entry in doc["frames"].items():
        index = _frame_index(key, where)
        if index in labels:
            raise DataError(f"{where}: frame {key} appears twice")
        labels[index] = _frame_label(entry, f"{where}: frame {key}")
    images = _images(folder)
    last = max(images, default=-1)
    if max(labels) > last:  # labels past the last frame label nothing, and size everything
        has = f"its last frame is {images[last].name}" if images else "it has no frames"
        raise DataError(f"{where}: frame {max(labels)} has labels but no image in {folder} ({has})")
    actor = doc.get("actor")
    return AfewClip(cid, folder, str(actor) if actor not in (None, "") else None, labels, images, json_path)


def _frame_index(key: str, where: str) -> int:
    if not (isinstance(key, str) and _is_number(key)):
        raise DataError(f"{where}: malformed JSON (frame key {key!r} is not a frame number)")
    if len(key) > len(str(MAX_FRAMES)) or int(key) >= MAX_FRAMES:
        raise DataError(
            f"{where}: frame {key[:20]}{'...' if len(key) > 20 else ''} "
            f"is past the largest frame number fer reads ({MAX_FRAMES - 1})"
        )
    return int(key)


def _is_number(text: str) -> bool:
    # ASCII digits only: str.isdigit() is also true of "²", which int() refuses
    return text.isascii() and text.isdigit()


def _frame_label(entry, where: str) -> FrameLabel:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: malformed JSON (expected an object with valence, arousal, landmarks)")
    values = []
    for dim in DIMENSIONS:
        v = entry.get(dim)
        # A float is checked as a float; an int may be too large for one (10**400: JSON allows it).
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or (isinstance(v, float) and not (math.isfinite(v) and v.is_integer()))
        ):
            raise DataError(f"{where}: {dim} {v!r} is not an integer label")
        if not LABEL_MIN <= v <= LABEL_MAX:
            shown = str(int(v)) if abs(v) < 10**12 else f"(a {len(str(abs(int(v))))}-digit number)"
            raise DataError(f"{where}: {dim} {shown} is outside {LABEL_MIN}..{LABEL_MAX}")
        values.append(int(v))
    return FrameLabel(*values, landmarks=_landmarks(entry.get("landmarks"), where))


def _landmarks(raw, where: str) -> np.ndarray | None:
    if raw is None or (isinstance(raw, list) and not raw):
        return None  # the crop then relies on the detector alone
    try:
        points = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
        points = None
    if points is None or points.shape != (N_LANDMARKS, 2) or not np.isfinite(points).all():
        raise DataError(f"{where}: malformed JSON (landmarks must be {N_LANDMARKS} [x, y] pairs)")
    return points


def _images(folder: Path) -> dict[int, Path]:
    found = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and _is_number(p.stem):
            if len(p.stem) > len(str(MAX_FRAMES)) or int(p.stem) >= MAX_FRAMES:
                raise DataError(f"{p}: frame number past the largest fer reads ({MAX_FRAMES - 1})")
            found.setdefault(int(p.stem), p)
    return found

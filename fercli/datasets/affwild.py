"""Aff-Wild2 (ABAW valence-arousal) on disk: one `<video>.txt` per video (header `valence,arousal`,
then line i = frame i, values -1..1, -5 = no label), aligned face crops in
`cropped_aligned/<video>/00001.jpg ...`; the layout's detection, the -1..1 -> 21-class mapping
(the ABAW score, which pools its frames, is `metrics.abaw_score`), and the same videos as training
clips (`training_clips`; `features.labelled_clips` reads a root of either layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.files import is_regular_file
from ..core.labels import to_class
from .afew import AfewClip, FrameLabel

HEADER = "valence,arousal"
NO_LABEL = -5.0  # ABAW's mark for a frame without a label
ABAW_SCALE = 10.0  # fer's -10..10 scale = ABAW's -1..1 times this
SPLIT_FOLDERS = {"Train_Set": "train", "Validation_Set": "val"}  # the release's predefined split
PAIR_SUFFIXES = ("_left", "_right")  # two-person videos: one annotation per person


@dataclass
class AffWildClip:
    id: str  # annotation file's stem, e.g. "video10_1" or "10-60-1280x720_left"
    txt_path: Path
    valence: np.ndarray  # (n_frames,) -1..1, NaN where unlabelled
    arousal: np.ndarray
    images: dict[int, Path]  # 0-based frame index -> aligned crop, for the frames that have one
    split: str | None  # "train" / "val" from Train_Set / Validation_Set, else None

    @property
    def source(self) -> str:
        """The source video's name: two-person annotations share it."""
        for suffix in PAIR_SUFFIXES:
            if self.id.endswith(suffix):
                return self.id[: -len(suffix)]
        return self.id

    @property
    def labelled(self) -> np.ndarray:
        """Frames with both values: a -5 in either column leaves the frame unlabelled (ABAW marks
        both; a frame with one value would train one head on a made-up class)."""
        return ~np.isnan(self.valence) & ~np.isnan(self.arousal)

    def classes(self) -> tuple[np.ndarray, np.ndarray]:
        """Labelled frames' (valence, arousal) on the 21-class -10..10 scale (labels.to_class rule)."""
        m = self.labelled
        return to_class(self.valence[m] * ABAW_SCALE), to_class(self.arousal[m] * ABAW_SCALE)


def is_affwild(root: str | Path) -> bool:
    """True when `root` holds ABAW VA annotation files (a `.txt` whose first line is the header)."""
    return any(_has_header(p) for p in Path(root).rglob("*.txt"))


def annotation_files(root: str | Path) -> list[Path]:
    """The annotation files under an Aff-Wild2 root: every `.txt` in a folder where one has the header.

    A file beside annotation files is one too, so a BOM-less header typo, a wrong header or a
    non-UTF-8 byte is an error naming it (read_clip), not a video silently left out; text files
    in other folders (a README) are not annotations.
    """
    txts = sorted(p for p in Path(root).rglob("*.txt") if "cropped_aligned" not in p.parts)
    folders = {p.parent for p in txts if _has_header(p)}
    return [p for p in txts if p.parent in folders]


def read_dataset(root: str | Path) -> list[AffWildClip]:
    """Every annotated video under an Aff-Wild2 root, sorted by id; DataError names the first bad file."""
    root = Path(root)
    crops = {p.name: p for p in root.rglob("cropped_aligned/*") if p.is_dir()}
    clips = [read_clip(p, crops.get(p.stem)) for p in annotation_files(root)]
    if not clips:
        raise DataError(f"{root}: no Aff-Wild2 annotation files (<video>.txt with '{HEADER}')")
    return sorted(clips, key=lambda c: c.id)


def read_clip(txt_path: str | Path, crop_folder: Path | None = None) -> AffWildClip:
    """One annotation file (and its aligned crops); every line checked."""
    txt_path = Path(txt_path)
    if not is_regular_file(txt_path):  # a FIFO would block the read forever
        raise DataError(f"{txt_path}: not a regular file")
    lines = _text(txt_path).splitlines()
    if not lines or lines[0].strip().lower() != HEADER:
        raise DataError(f"{txt_path}: first line must be '{HEADER}'")
    values = np.array([_line(s, txt_path, i) for i, s in enumerate(lines[1:], start=2) if s.strip()])
    if values.size == 0:
        raise DataError(f"{txt_path}: no frame lines")
    values[values == NO_LABEL] = np.nan
    images = _images(crop_folder) if crop_folder else {}
    if images and max(images) >= len(values):
        raise DataError(f"{txt_path}: {len(values)} frame lines but frame {max(images) + 1} in {crop_folder}")
    split = next((SPLIT_FOLDERS[p] for p in txt_path.parts if p in SPLIT_FOLDERS), None)
    return AffWildClip(txt_path.stem, txt_path, values[:, 0].copy(), values[:, 1].copy(), images, split)


def _text(path: Path) -> str:
    """The file as UTF-8 text (a leading BOM dropped); DataError names a byte that is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: byte 0x{data[e.start]:02x} is not UTF-8 text") from None


def _has_header(path: Path) -> bool:
    if not is_regular_file(path):
        return False
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return f.readline(len(HEADER) + 64).strip().lower() == HEADER
    except OSError:
        return False


def _line(text: str, path: Path, n: int) -> tuple[float, float]:
    parts = text.split(",")
    try:
        v, a = (float(x) for x in parts)
    except ValueError:
        raise DataError(f"{path}: line {n}: expected 'valence,arousal' numbers, got {text.strip()!r}") from None
    for x in (v, a):
        if x != NO_LABEL and not -1.0 <= x <= 1.0:
            raise DataError(f"{path}: line {n}: value {x} outside -1..1 (or -5 for no label)")
    return v, a


def _images(folder: Path) -> dict[int, Path]:
    return {int(p.stem) - 1: p for p in folder.glob("*.jpg") if _is_number(p.stem)}


def _is_number(text: str) -> bool:
    # ASCII digits only: str.isdigit() is also true of "²", which int() refuses
    return text.isascii() and text.isdigit()


def training_clips(root: str | Path) -> list[AfewClip]:
    """Aff-Wild2 videos as training clips: the labelled frames' values times ABAW_SCALE (the
    -10..10 scale, kept continuous so a window's mean label is rounded once, by labels.to_class),
    the aligned crops as frames that need no detection, the source video as the group a split
    keeps together (a two-person video's _left and _right), Train_Set/Validation_Set as `part`.

    Only videos with aligned crops train; a DataError says so when none has them.
    """
    clips = []
    for c in read_dataset(root):
        if not c.images:
            continue
        labels = {
            int(i): FrameLabel(float(c.valence[i]) * ABAW_SCALE, float(c.arousal[i]) * ABAW_SCALE)
            for i in np.flatnonzero(c.labelled)
        }
        if not labels:
            continue
        folder = next(iter(c.images.values())).parent
        clips.append(
            AfewClip(
                c.id, folder, c.source, labels, dict(sorted(c.images.items())), c.txt_path, aligned=True, part=c.split
            )
        )
    if not clips:
        raise DataError(
            f"{root}: no Aff-Wild2 video has both labels and aligned crops "
            "(cropped_aligned/<video>/00001.jpg ...); fer trains on the aligned crops"
        )
    return clips

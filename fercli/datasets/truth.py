"""Ground truth per second, what `fer benchmark accuracy --truth` scores against.

`load_truth` reads an AFEW-VA folder (through `afew`, every label checked as `fer train` checks
it), an Aff-Wild2 root (through `affwild`, on fer's -10..10 scale) or a CSV/Parquet table with
video, second (or frame), valence and arousal. Frame labels become seconds by averaging: frame i
sits at i / frames_fps, in second floor(i / frames_fps). Videos are named as `fer annotate` names
the clips, so truth and predictions share their keys.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import DataError, FerError
from ..core.labels import DIMENSIONS, check_on_scale
from ..tables.rows import SECOND_KEYS, TIME_EPS
from ..tables.writers import PARQUET_SUFFIXES
from . import affwild


def load_truth(path: str | Path, frames_fps: float = 25.0) -> pd.DataFrame:
    """Ground truth per second: DataFrame(video, second, valence, arousal), labels as floats.

    `path` is an AFEW-VA folder (clip folders `<id>/` holding `<id>.json`), an Aff-Wild2 root or a
    CSV/Parquet table with video, second (or frame) and valence, arousal. AFEW-VA videos are named
    by the folder's path relative to `path` ("001"), or the folder's own name when `path` is a clip.
    """
    if not frames_fps > 0:
        raise FerError(f"frames fps must be positive, not {frames_fps}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        frames = affwild_frames(path) if affwild.is_affwild(path) else _afew_frames(path)
    else:
        frames = _truth_table(path)
        if "second" in frames:
            return _checked(frames[[*SECOND_KEYS, *DIMENSIONS]], path, per_second=True)
    frames = _checked(frames, path, per_second=False)
    frames["second"] = seconds_of_frames(frames.pop("frame"), frames_fps)
    out = frames.groupby(list(SECOND_KEYS), sort=True, as_index=False)[list(DIMENSIONS)].mean()
    return out.reset_index(drop=True)


def seconds_of_frames(frames, frames_fps: float) -> np.ndarray:
    """The second each frame index falls in: floor(i / frames_fps), within the time tolerance."""
    return np.floor(np.asarray(frames, dtype=float) / frames_fps + TIME_EPS).astype(np.int64)


def affwild_frames(root: Path) -> pd.DataFrame:
    """Aff-Wild2's labelled frames (video, frame, valence, arousal) on fer's -10..10 scale;
    videos named by their annotation files."""
    rows = []
    for clip in affwild.read_dataset(root):
        frames = np.flatnonzero(clip.labelled)
        rows.append(
            pd.DataFrame(
                {
                    "video": clip.id,
                    "frame": frames,
                    "valence": clip.valence[frames] * affwild.ABAW_SCALE,
                    "arousal": clip.arousal[frames] * affwild.ABAW_SCALE,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _afew_frames(root: Path) -> pd.DataFrame:
    from .afew import label_files, read_clip

    labels = label_files(root)
    if not labels:
        raise DataError(f"{root}: no AFEW-VA annotations (<id>/<id>.json or <id>.json beside <id>/) found")
    rows = []
    for folder, file in sorted(labels.items()):
        # The same naming as inputs.find_clips, so truth and predictions share their keys.
        video = folder.relative_to(root).as_posix() if folder != root else root.name
        clip = read_clip(folder, file)  # the reader `fer train` uses: every label checked
        rows += [(video, i, float(lab.valence), float(lab.arousal)) for i, lab in sorted(clip.labels.items())]
    return pd.DataFrame(rows, columns=["video", "frame", *DIMENSIONS])


def _truth_table(path: Path) -> pd.DataFrame:
    ext = path.suffix.lower()
    try:
        if ext == ".csv":
            df = pd.read_csv(path, dtype={"video": str})
        elif ext in PARQUET_SUFFIXES:
            df = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: truth must be an AFEW-VA folder, a .csv or a .parquet")
    except DataError:
        raise
    except Exception as e:  # pandas/pyarrow raise many kinds for unreadable files
        raise DataError(f"{path}: cannot read table ({e})") from e
    key = "second" if "second" in df else "frame"
    missing = [c for c in ("video", key, *DIMENSIONS) if c not in df]
    if missing:
        needs = "video, second or frame, valence, arousal"
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (needs {needs})")
    return df[["video", key, *DIMENSIONS]].copy()


def _checked(df: pd.DataFrame, path: Path, *, per_second: bool) -> pd.DataFrame:
    df = df.copy()
    key = "second" if per_second else "frame"
    df["video"] = df["video"].astype(str)
    k = pd.to_numeric(df[key], errors="coerce")
    if k.isna().any() or (k < 0).any() or (k != np.floor(k)).any():
        raise DataError(f"{path}: {key} must be whole numbers >= 0")
    df[key] = k.astype(np.int64)
    for dim in DIMENSIONS:
        v = pd.to_numeric(df[dim], errors="coerce")
        if (v.isna() & df[dim].notna()).any():
            raise DataError(f"{path}: {dim} holds values that are not numbers")
        check_on_scale(v.dropna().to_numpy(dtype=float), f"{path}: {dim}")
        df[dim] = v.astype("float64")
    if per_second and df.duplicated(subset=list(SECOND_KEYS)).any():
        raise DataError(f"{path}: more than one row for the same video and second")
    return df.sort_values(["video", key], kind="stable").reset_index(drop=True)

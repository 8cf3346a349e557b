"""Training examples: windows of T samples of a clip, their feature slots and the mean of their
frames' labels (the paper's rule), rounded to classes by `labels.to_class`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import DataError
from ..core.labels import LABEL_MIN, to_class
from ..tables.rows import fill_index
from .features import ClipSamples


@dataclass
class Examples:
    """Training windows over the concatenated samples of all clips."""

    clip: np.ndarray  # (W,) index into the clips list
    end: np.ndarray  # (W,) sample index (within its clip) of the window's last sample
    index: np.ndarray  # (W, T) global sample index per slot, skipped/padded slots already filled
    valence: np.ndarray  # (W,) mean label of the window's present samples (continuous, for CCC)
    arousal: np.ndarray

    def __len__(self) -> int:
        return len(self.clip)

    def subset(self, rows) -> Examples:
        rows = np.asarray(rows, dtype=np.int64)
        return Examples(self.clip[rows], self.end[rows], self.index[rows], self.valence[rows], self.arousal[rows])

    @property
    def valence_class(self) -> np.ndarray:
        """Class index 0..20 of the rounded mean label (the cross-entropy target)."""
        return to_class(self.valence) - LABEL_MIN

    @property
    def arousal_class(self) -> np.ndarray:
        return to_class(self.arousal) - LABEL_MIN

    def names(self, clips: list[ClipSamples]) -> list[str]:
        return [f"{clips[c].clip.id}:{e}" for c, e in zip(self.clip, self.end)]


def training_windows(clips: list[ClipSamples], window: int, stride: int = 1) -> Examples:
    """Examples of `window` samples ending every `stride` samples. A clip shorter than a window
    gives one window, left-padded with its first sample as `fer annotate` pads a clip's start.
    Examples with no present sample are dropped."""
    if window < 1 or stride < 1:
        raise DataError(f"window and stride must be >= 1 (got {window}, {stride})")
    cl, ends, rows, vals, aros = [], [], [], [], []
    offset = 0
    for c, s in enumerate(clips):
        n = len(s.frames)
        fill = fill_index(s.present)
        last = list(range(window - 1, n, stride)) if n >= window else [n - 1]
        for e in last:
            lo = max(0, e - window + 1)
            if not s.present[lo : e + 1].any():
                continue
            slots = np.clip(np.arange(e - window + 1, e + 1), lo, None)
            cl.append(c)
            ends.append(e)
            rows.append(offset + fill[slots])
            vals.append(np.nanmean(s.valence[lo : e + 1]))
            aros.append(np.nanmean(s.arousal[lo : e + 1]))
        offset += n
    return Examples(
        np.asarray(cl, np.int64),
        np.asarray(ends, np.int64),
        np.asarray(rows, np.int64).reshape(-1, window),
        np.asarray(vals, np.float64),
        np.asarray(aros, np.float64),
    )

"""From per-frame features to rows: windows per second (or per frame) and their labels.

Rules, in video time:
- Sample k sits at t_k = k / fps. Second s holds the samples with s <= t_k < s + 1.
- Second s gets a row when a decoded frame starts in [s, s + 1): rows run from second 0 to the
  second the clip's last frame starts in, so a container whose last frame ends a rounding sliver
  past a whole second (4.0003 s) gets no extra, frameless row. The last row's `end` is the clip's
  end (its duration), and samples after the last row's start belong to it.
- A second has a face when the face was found in at least one of its own samples. Seconds
  without one are kept as rows with face = False and null labels.
- Window models: the window for second s is the T samples ending with the last sample of s.
  Samples in it where the face was missed hold the previous face feature (or the next one when
  none came before). At the start of a clip, where fewer than T samples exist, the window is
  padded on the left by repeating its first face feature, so early seconds are still labelled
  from real frames only.
- Frame models: the label of a second is the mean of its face samples' scores.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch

from .labels import decode_logits, to_class

TIME_EPS = 1e-6  # seconds; float sample times that land on a second boundary belong to it


@dataclass
class FrameFeatures:
    index: int  # sample index k
    time: float  # seconds
    faces: dict[int, torch.Tensor]  # face id -> feature vector (window models) or (valence, arousal) scores


@dataclass
class Unit:
    """One future row: where it sits, whose face, and what the model needs to label it."""

    key: dict  # second/start/end, or frame/time
    face_id: int | None
    window: torch.Tensor | None = None  # (T, F) for window models
    scores: torch.Tensor | None = None  # (2,) mean frame scores for frame models

    @property
    def has_face(self) -> bool:
        return self.window is not None or self.scores is not None


def n_seconds(last_start: float) -> int:
    """Rows for a clip whose last frame starts at `last_start` s: seconds 0 .. the one it starts in."""
    return second_of(last_start) + 1


def second_of(time: float) -> int:
    """The second a time (s) falls in; float times landing on a boundary belong to the later one."""
    return math.floor(time + TIME_EPS)


def fill_window(window: list[torch.Tensor | None], before: torch.Tensor | None = None) -> torch.Tensor | None:
    """Forward-fill missed samples from `before` (the face's last feature ahead of the window),
    then back-fill any leading ones (see module rules)."""
    first = before if before is not None else next((f for f in window if f is not None), None)
    if first is None:
        return None
    filled, last = [], first
    for f in window:
        last = f if f is not None else last
        filled.append(last)
    return torch.stack(filled)


@dataclass
class Aggregator:
    """Streams FrameFeatures in, Units out; holds only the last T samples."""

    window: int  # T, samples per window (1 for frame models)
    duration: float  # s: the clip's end, the last row's `end`
    window_model: bool
    per_frame: bool = False
    last_start: float | None = None  # s: start of the clip's last frame; None: just before `duration`
    recent: deque = field(init=False)
    _second: int = 0  # the second being filled
    _present: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # face id -> its samples in _second
    _before: dict[int, torch.Tensor] = field(default_factory=dict)  # face id -> last feature older than `recent`

    def __post_init__(self):
        self.recent = deque(maxlen=self.window)
        last = self.last_start if self.last_start is not None else max(self.duration - 2 * TIME_EPS, 0.0)
        self.seconds = n_seconds(last)

    def push(self, ff: FrameFeatures) -> list[Unit]:
        if self.per_frame:
            self._remember(ff.faces)
            return self._frame_units(ff)
        units = []
        s = min(second_of(ff.time), self.seconds - 1)  # a long last frame: still the last row
        while self._second < s:  # close every second before this sample, also ones with no samples
            units += self._close_second()
        self._remember(ff.faces)
        for face_id, feat in ff.faces.items():
            self._present.setdefault(face_id, []).append(feat)
        return units

    def finish(self) -> list[Unit]:
        if self.per_frame:
            return []
        units = []
        while self._second < self.seconds:
            units += self._close_second()
        return units

    def _remember(self, faces: dict[int, torch.Tensor]) -> None:
        if len(self.recent) == self.recent.maxlen:
            self._before.update(self.recent[0])
        self.recent.append(faces)

    def _close_second(self) -> list[Unit]:
        s = self._second
        end = self.duration if s == self.seconds - 1 else min(s + 1, self.duration)
        key = {"second": s, "start": float(s), "end": float(end)}
        units = [self._unit(key, face_id, samples) for face_id, samples in sorted(self._present.items())]
        self._second, self._present = s + 1, {}
        return units or [Unit(key, None)]

    def _frame_units(self, ff: FrameFeatures) -> list[Unit]:
        key = {"frame": ff.index, "time": ff.time}
        units = [self._unit(key, face_id, [feat]) for face_id, feat in sorted(ff.faces.items())]
        return units or [Unit(key, None)]

    def _unit(self, key: dict, face_id: int, samples: list[torch.Tensor]) -> Unit:
        if not self.window_model:
            return Unit(key, face_id, scores=torch.stack(samples).mean(dim=0))
        pad = [None] * (self.window - len(self.recent))  # start of clip: fewer than T samples yet
        window = pad + [faces.get(face_id) for faces in self.recent]
        return Unit(key, face_id, window=fill_window(window, self._before.get(face_id)))


def label_units(units: list[Unit], head) -> list[dict]:
    """Label a batch of units; `head` maps (B, T, F) windows to (valence, arousal) logits."""
    labels: list[dict] = [_empty_labels() for _ in units]
    windowed = [i for i, u in enumerate(units) if u.window is not None]
    if windowed:
        with torch.inference_mode():
            v_logits, a_logits = head(torch.stack([units[i].window for i in windowed]))
        for i, v, a in zip(windowed, _from_logits(v_logits), _from_logits(a_logits)):
            labels[i] = {**_prefixed("valence", v), **_prefixed("arousal", a)}
    for i, u in enumerate(units):
        if u.scores is not None:
            v, a = (float(x) for x in u.scores)
            labels[i] = {**_prefixed("valence", _from_score(v)), **_prefixed("arousal", _from_score(a))}
    return labels


def label_rows(units: list[Unit], head) -> list[dict]:
    """Table rows (without the video column) for a batch of units: their keys, face and labels."""
    return [{**u.key, "face_id": u.face_id, "face": u.has_face, **lab} for u, lab in zip(units, label_units(units, head))]


def _from_logits(logits: torch.Tensor) -> list[tuple[int, float, float]]:
    labels, scores, confs = (t.cpu().tolist() for t in decode_logits(logits))
    return list(zip(labels, scores, confs))


def _from_score(score: float) -> tuple[int, float, None]:
    return int(to_class(score)), score, None


def _prefixed(name: str, value: tuple) -> dict:
    label, score, conf = value
    return {name: label, f"{name}_score": score, f"{name}_conf": conf}


def _empty_labels() -> dict:
    return {**_prefixed("valence", (None, None, None)), **_prefixed("arousal", (None, None, None))}

"""From per-sample features to rows: windows per second (or per sample, or per video frame) and their labels.

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
- How sure (`valence_sd`, `arousal_sd`, `samples`): a frame model's spread is the standard
  deviation (population, ddof 0) of its face samples' scores within the row, null where it had
  one sample (one value has no spread); a window model's is the standard deviation of its
  21-class distribution (`labels.logits_spread`). `samples` is how many samples the label was
  made from where the face was found: the row's own face samples (frame model), or the window's
  samples that found the face, the rest being filled (window model); 0 without a face.
- What the detector saw (`FaceSeen`) is described per second over the second's own samples where
  the face was found: the mean box and detector score, the mean expression probabilities (their
  most probable name as `expression`), and `face_share`, the share of the second's samples that
  found it (0 without a face). Per-sample and per-frame rows carry their own values (share 1 or 0).
- Rows per video frame (`rows="frame"`): every decoded frame is a sample, keyed by its own index
  in the file and its start time. A window model's window for the frame at t is the T frames on
  screen at t - (T-1)/fps, ..., t (fps: the model's rate, the spacing it was trained on), padded
  as above; a missed face holds the latest frame's feature before it (per sample: the latest
  sample's). A frame model labels each frame from its own score.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..core.labels import EXPRESSIONS, decode_logits, logits_spread, to_class

if TYPE_CHECKING:  # torch is imported where tensors are made: render and metrics read TIME_EPS here
    import torch

TIME_EPS = 1e-6  # seconds; float sample times that land on a second boundary belong to it


ROW_KINDS = ("second", "sample", "frame")  # a row per second, per model sample, per video frame
KEY_COLUMNS = ("second", "start", "end", "sample_index", "frame", "time")  # where a row sits
BOX_COLUMNS = ("face_x0", "face_y0", "face_x1", "face_y1")  # the face box, px of the upright frame
SECOND_KEYS = ("video", "second")  # what names a second of a clip, in fer's tables and in truth
ROW_INDEX = ("second", "sample_index", "frame")  # the column that numbers a table's rows, by row kind


@dataclass(frozen=True)
class FaceSeen:
    """What the detector and the expression classifier saw of one face in one sample."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the upright frame
    score: float  # detector confidence 0..1
    expressions: tuple[float, ...] | None = None  # softmax over EXPRESSIONS; None without the head


@dataclass
class FrameFeatures:
    index: int  # sample index k
    time: float  # seconds
    faces: dict[int, torch.Tensor]  # person id -> feature vector (window models) or (valence, arousal) scores
    seen: dict[int, FaceSeen] = field(default_factory=dict)  # person id -> its box, score, expressions


@dataclass
class Unit:
    """One future row: where it sits, whose face, and what the model needs to label it."""

    key: dict  # second/start/end, or frame/time
    person: int | None
    window: torch.Tensor | None = None  # (T, F) for window models
    scores: torch.Tensor | None = None  # (2,) mean frame scores for frame models
    spread: torch.Tensor | None = None  # (2,) frame models: the scores' standard deviation; None for one sample
    samples: int = 0  # samples the label is made from that found the face (see the module doc)
    columns: dict = field(default_factory=dict)  # face_* and expression columns (see face_columns)

    @property
    def has_face(self) -> bool:
        return self.window is not None or self.scores is not None


def n_seconds(last_start: float) -> int:
    """Rows for a clip whose last frame starts at `last_start` s: seconds 0 .. the one it starts in."""
    return second_of(last_start) + 1


def second_of(time: float) -> int:
    """The second a time (s) falls in; float times landing on a boundary belong to the later one."""
    return math.floor(time + TIME_EPS)


def fill_index(present) -> np.ndarray:
    """For each sample, the sample whose feature it uses: itself when present, else the last
    present one before it, else the first present one after it (the module's filling rule)."""
    present = np.asarray(present, dtype=bool)
    idx = np.maximum.accumulate(np.where(present, np.arange(len(present)), -1))
    first = int(np.argmax(present)) if present.any() else 0
    return np.where(idx < 0, first, idx)


def fill_window(window: list[torch.Tensor | None], before: torch.Tensor | None = None) -> torch.Tensor | None:
    """The window with missed samples filled by `fill_index`'s rule, `before` (the face's last
    feature ahead of the window) counting as a sample just before it."""
    import torch

    feats = ([before] if before is not None else []) + list(window)
    present = [f is not None for f in feats]
    if not any(present):
        return None
    filled = [feats[i] for i in fill_index(present)]
    return torch.stack(filled[len(feats) - len(window) :])


@dataclass
class Aggregator:
    """Streams FrameFeatures in, Units out; holds only the last T samples (or T / fps seconds of frames).

    `rows`: "second" (a row per second), "sample" (per sample at the model's rate) or "frame"
    (per decoded video frame: FrameFeatures come for every frame, and a window model's window for
    a frame is the T frames on screen at the model's spacing 1 / `fps` ending with it).
    """

    window: int  # T, samples per window (1 for frame models)
    duration: float  # s: the clip's end, the last row's `end`
    window_model: bool
    rows: str = "second"
    last_start: float | None = None  # s: start of the clip's last frame; None: just before `duration`
    fps: float = 5.0  # the model's sampling rate (rows="frame": the spacing of a window's frames)
    recent: deque = field(init=False)
    _history: deque = field(default_factory=deque)  # rows="frame": (time, faces) back to T / fps s ago
    _second: int = 0  # the second being filled
    _present: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # person id -> its samples in _second
    _seen: dict[int, list[FaceSeen]] = field(default_factory=dict)  # person id -> what was seen in _second
    _samples: int = 0  # samples in _second, with or without a face
    _before: dict[int, torch.Tensor] = field(default_factory=dict)  # person id -> last feature older than `recent`
    on_screen: dict[int, int] = field(default_factory=dict)  # person id -> samples that found them, whole clip

    def __post_init__(self):
        if self.rows not in ROW_KINDS:
            raise ValueError(f"rows must be one of {ROW_KINDS}, not {self.rows!r}")
        self.recent = deque(maxlen=self.window)
        last = self.last_start if self.last_start is not None else max(self.duration - 2 * TIME_EPS, 0.0)
        self.seconds = n_seconds(last)

    def push(self, ff: FrameFeatures) -> list[Unit]:
        for person in ff.faces:
            self.on_screen[person] = self.on_screen.get(person, 0) + 1
        if self.rows == "sample":
            self._remember(ff.faces)
            return self._instant_units(ff, "sample_index")
        if self.rows == "frame":
            self._keep(ff)
            return self._instant_units(ff, "frame")
        units = []
        s = min(second_of(ff.time), self.seconds - 1)  # a long last frame: still the last row
        while self._second < s:  # close every second before this sample, also ones with no samples
            units += self._close_second()
        self._remember(ff.faces)
        self._samples += 1
        for person, feat in ff.faces.items():
            self._present.setdefault(person, []).append(feat)
            if person in ff.seen:
                self._seen.setdefault(person, []).append(ff.seen[person])
        return units

    def finish(self) -> list[Unit]:
        if self.rows != "second":
            return []
        units = []
        while self._second < self.seconds:
            units += self._close_second()
        return units

    def main_person(self) -> int | None:
        """The person found in the most samples so far (ties: the one seen first); None if nobody."""
        return min(self.on_screen, key=lambda p: (-self.on_screen[p], p), default=None)

    def _remember(self, faces: dict[int, torch.Tensor]) -> None:
        if len(self.recent) == self.recent.maxlen:
            self._before.update(self.recent[0])
        self.recent.append(faces)

    def _close_second(self) -> list[Unit]:
        s = self._second
        end = self.duration if s == self.seconds - 1 else min(s + 1, self.duration)
        key = {"second": s, "start": float(s), "end": float(end)}
        people = {"people": len(self._present)}
        units = [
            self._unit(key, person, samples, {**face_columns(self._seen.get(person, []), self._samples), **people})
            for person, samples in sorted(self._present.items())
        ]
        self._second, self._present, self._seen, self._samples = s + 1, {}, {}, 0
        return units or [Unit(key, None, columns={**face_columns([], self._samples), **people})]

    def _keep(self, ff: FrameFeatures) -> None:
        """rows="frame": remember this frame; forget frames no window will pick again."""
        self._history.append((ff.time, ff.faces))
        earliest = ff.time - (self.window - 1) / self.fps + TIME_EPS
        while len(self._history) > 1 and self._history[1][0] <= earliest:  # [0] is on screen at `earliest`
            self._before.update(self._history.popleft()[1])

    def _instant_units(self, ff: FrameFeatures, index: str) -> list[Unit]:
        key = {index: ff.index, "time": ff.time}
        people = {"people": len(ff.faces)}
        units = [
            self._unit(
                key, person, [feat], {**face_columns([ff.seen[person]] if person in ff.seen else [], 1), **people}
            )
            for person, feat in sorted(ff.faces.items())
        ]
        return units or [Unit(key, None, columns={**face_columns([], 1), **people})]

    def _unit(self, key: dict, person: int, samples: list[torch.Tensor], columns: dict) -> Unit:
        if not self.window_model:
            import torch

            scores = torch.stack(samples)
            spread = scores.std(dim=0, correction=0) if len(samples) > 1 else None
            return Unit(key, person, scores=scores.mean(dim=0), spread=spread, samples=len(samples), columns=columns)
        if self.rows == "frame":
            window = [faces.get(person) if faces is not None else None for faces in self._picks(key["time"])]
        else:
            pad = [None] * (self.window - len(self.recent))  # start of clip: fewer than T samples yet
            window = pad + [faces.get(person) for faces in self.recent]
        found = sum(f is not None for f in window)
        return Unit(key, person, window=fill_window(window, self._before.get(person)), samples=found, columns=columns)

    def _picks(self, time: float) -> list[dict | None]:
        """rows="frame": the faces of the frame on screen at each of the T times time - j / fps
        (j = T-1 .. 0); None before the clip's first frame (padded as the sample rule pads)."""
        picks, i, frames = [], 0, self._history
        for j in range(self.window - 1, -1, -1):
            t = time - j / self.fps + TIME_EPS
            while i + 1 < len(frames) and frames[i + 1][0] <= t:
                i += 1
            picks.append(frames[i][1] if frames[i][0] <= t else None)
        return picks


def face_columns(seen: list[FaceSeen], samples: int) -> dict:
    """A row's face columns from what was seen of its face in its `samples` samples.

    Box and score are means over the samples that found the face, as are the expression
    probabilities (a mean of distributions still sums to 1); `face_share` is how many of the
    row's samples found it. Without a face only the share (0) is set: the rest stay null.
    """
    cols: dict = {"face_share": len(seen) / samples if samples else 0.0}
    if not seen:
        return cols
    box = [sum(s.box[i] for s in seen) / len(seen) for i in range(4)]
    cols.update(zip(BOX_COLUMNS, box))
    cols["face_score"] = sum(s.score for s in seen) / len(seen)
    probs = [s.expressions for s in seen if s.expressions is not None]
    if probs:
        mean = [sum(p[i] for p in probs) / len(probs) for i in range(len(EXPRESSIONS))]
        cols.update(zip(EXPRESSIONS, mean))
        cols["expression"] = EXPRESSIONS[max(range(len(mean)), key=mean.__getitem__)]
    return cols


def label_units(units: list[Unit], head) -> list[dict]:
    """Label a batch of units; `head` maps (B, T, F) windows to (valence, arousal) logits.

    Each unit's labels come with its face columns (`Unit.columns`): all a row holds but its key.
    """
    import torch

    labels: list[dict] = [_empty_labels() for _ in units]
    windowed = [i for i, u in enumerate(units) if u.window is not None]
    if windowed:
        with torch.inference_mode():
            v_logits, a_logits = head(torch.stack([units[i].window for i in windowed]))
        for i, v, a in zip(windowed, _from_logits(v_logits), _from_logits(a_logits)):
            labels[i] = {**_prefixed("valence", v), **_prefixed("arousal", a)}
    for i, u in enumerate(units):
        if u.scores is not None:
            (v, a), (v_sd, a_sd) = u.scores.tolist(), u.spread.tolist() if u.spread is not None else (None, None)
            labels[i] = {**_prefixed("valence", _from_score(v, v_sd)), **_prefixed("arousal", _from_score(a, a_sd))}
    return [{**lab, "samples": u.samples, **u.columns} for u, lab in zip(units, labels)]


def label_rows(units: list[Unit], head) -> list[dict]:
    """Table rows (without the video column) for a batch of units: their keys, face and labels."""
    return [{**u.key, "person": u.person, "face": u.has_face, **lab} for u, lab in zip(units, label_units(units, head))]


def follow(rows: list[dict], person: int | None) -> list[dict]:
    """One row per time key: `person`'s row where they were seen, else a row without a face.

    `rows` are a whole clip's `label_rows`, in time order, with a row per person per key.
    """
    out: dict[tuple, dict] = {}
    for row in rows:
        key = tuple((k, row[k]) for k in ROW_INDEX if k in row)
        if row["person"] == person and row["face"]:
            out[key] = row
        elif key not in out:
            empty = {**_empty_labels(), "samples": 0, "face_share": 0.0, "people": row.get("people", 0)}
            out[key] = {**{k: row[k] for k in KEY_COLUMNS if k in row}, "person": None, "face": False, **empty}
    return list(out.values())


def _from_logits(logits: torch.Tensor) -> list[tuple[int, float, float, float]]:
    labels, scores, confs = (t.cpu().tolist() for t in decode_logits(logits))
    return list(zip(labels, scores, confs, logits_spread(logits).cpu().tolist()))


def _from_score(score: float, spread: float | None) -> tuple[int, float, None, float | None]:
    return int(to_class(score)), score, None, spread


def _prefixed(name: str, value: tuple) -> dict:
    label, score, conf, spread = value
    return {name: label, f"{name}_score": score, f"{name}_conf": conf, f"{name}_sd": spread}


def _empty_labels() -> dict:
    return {**_prefixed("valence", (None,) * 4), **_prefixed("arousal", (None,) * 4)}

"""People in a clip: shot cuts, face tracks within shots, and tracks joined into people.

Within a shot, `faces.FaceTracker` follows each face by box overlap. That cannot carry a face
across a cut (the same person may stand elsewhere in the next shot, and someone else where they
stood), nor past an absence longer than the tracker's time to live. So:

- `ShotCuts` finds cuts from the change in the frame's colour histogram between two samples,
  and `Tracks` ends every track at a cut: box overlap never links two shots.
- Each face sample gets an appearance descriptor made without the model (`appearance`):
  histograms of local binary patterns over a 4 x 4 grid of the face box, the classic texture
  description of faces (Ahonen, Hadid and Pietikainen, 2006). It is blind to lighting and
  colour casts (each pattern only compares a pixel with its neighbours), needs no weights, and
  the producer computes it wherever it decodes (thread, worker process, Ray task).
- When the clip is done, `group_tracks` joins tracks into people: the two groups whose mean
  descriptors are most alike, never two that were on screen together, while they reach
  `SAME_PERSON`. A whole track's mean is far steadier than one sample's descriptor.

Measured with whole-track means: OpenCV's `Megamind.avi` (three people, four cuts; 5 samples/s)
gives 0.887-0.90 between one person's tracks and at most 0.839 between two people's; the test
clip of two photographed faces under per-shot colour casts (`tests/real_faces.cuts_frames`)
0.935 and above against at most 0.808. The threshold sits between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .faces import Detection, FaceTracker

# Half the L1 distance of two samples' colour histograms (0..1) that is a cut. Low on purpose: a
# false cut only splits a track that `group_tracks` joins again, a missed one can hand one
# person's track to another. A large face crossing the frame at 500 px/s reaches 0.086.
CUT_DISTANCE = 0.08
# The same distance between the colour histograms of a track's face box in two samples that
# hands the box to a new track: a cut the whole frame hides (one person, then another, standing
# in front of the same wall). Measured (5 samples/s): one person from sample to sample at most
# 0.18 (OpenCV's Megamind_bugy.avi) and 0.05 (photographed faces); two people at one place
# 0.33-0.34. A false split costs nothing lasting: `group_tracks` joins the parts again.
FACE_CUT_DISTANCE = 0.25
HIST_BINS = 16  # per colour channel
HIST_STEP = 4  # px; at least every 4th pixel each way
# Pixels a shot's histogram is taken from, about: every 7th pixel of a 720p frame, every 11th of
# 1080p. Measured against every 4th (58k pixels of 720p), sample-to-sample distances moved by at
# most 0.0034 (a 720p clip) and 0.008 (OpenCV's Megamind.avi, 720 x 528, at every 8th pixel),
# no cut gained or lost; the histogram costs a third of the time.
HIST_PIXELS = 15_000
SAME_PERSON = 0.86  # cosine similarity of two groups' mean descriptors that makes them one person
LBP_SIDE = 64  # px; the face box is resized to this (plus a 1 px border) before coding
LBP_GRID = 4  # cells each way; a histogram of 256 codes per cell
# The 8 neighbours of a pixel, clockwise from the top left, as offsets into the bordered image.
_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))


class ShotCuts:
    """Says whether each sampled frame starts a new shot (the first frame of a clip does not)."""

    def __init__(self, threshold: float = CUT_DISTANCE):
        self.threshold = threshold
        self._last: np.ndarray | None = None

    def __call__(self, image: np.ndarray) -> bool:
        hist = colour_histogram(image, shot_step(*image.shape[:2]))
        cut = self._last is not None and 0.5 * float(np.abs(hist - self._last).sum()) > self.threshold
        self._last = hist
        return cut


def shot_step(height: int, width: int) -> int:
    """Every how many pixels (each way) `ShotCuts` reads a frame: about HIST_PIXELS of it."""
    return max(HIST_STEP, math.isqrt(height * width // HIST_PIXELS))


def colour_histogram(image: np.ndarray, step: int = HIST_STEP) -> np.ndarray:
    """Per-channel histograms of an RGB uint8 image (every `step`th pixel each way),
    concatenated and summing to 1."""
    small = image[::step, ::step]
    bins = (small // (256 // HIST_BINS)).reshape(-1, 3).astype(np.intp)
    counts = [np.bincount(bins[:, c], minlength=HIST_BINS) for c in range(3)]
    hist = np.concatenate(counts).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def appearance(image: np.ndarray, box) -> np.ndarray:
    """A unit-length descriptor of the face in `box` (pixels): LBP histograms over a grid."""
    from PIL import Image

    face = Image.fromarray(np.ascontiguousarray(_crop(image, box))).convert("L")
    gray = np.asarray(face.resize((LBP_SIDE + 2, LBP_SIDE + 2), Image.BILINEAR), dtype=np.int16)
    centre = gray[1:-1, 1:-1]
    codes = np.zeros(centre.shape, np.intp)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        codes |= (gray[dy : dy + LBP_SIDE, dx : dx + LBP_SIDE] >= centre).astype(np.intp) << bit
    cell = LBP_SIDE // LBP_GRID
    cells = codes.reshape(LBP_GRID, cell, LBP_GRID, cell).transpose(0, 2, 1, 3).reshape(LBP_GRID**2, -1)
    hist = np.stack([np.bincount(c, minlength=256) for c in cells]).ravel()
    desc = np.sqrt(hist.astype(np.float64))  # Hellinger: cosine of square roots compares histograms
    return desc / np.linalg.norm(desc)


@dataclass
class Tracks:
    """Face tracks of one clip, sample by sample, each ended at a shot cut (one per clip).

    `update` takes a sampled frame and its detections and returns {track id: (detection, its
    face's `appearance`)}; track ids are never reused within the clip, so a track is one
    person's stretch on screen within one shot. `cuts` lists the times of the cuts seen.
    """

    tracker: FaceTracker = field(default_factory=FaceTracker)
    shots: ShotCuts = field(default_factory=ShotCuts)
    cuts: list[float] = field(default_factory=list)
    _ids: dict = field(default_factory=dict)  # the tracker's id -> this track's id
    _faces: dict = field(default_factory=dict)  # the tracker's id -> its face box's colours, last sample
    _next: int = 0

    def update(self, time: float, image: np.ndarray, detections: list[Detection]) -> dict[int, tuple]:
        if self.shots(image):
            self.cuts.append(time)
            self.tracker.tracks = {}  # box overlap never links two shots; ids go on counting
            self._ids, self._faces = {}, {}
        out = {}
        for t, det in self.tracker.update(time, detections).items():
            colours = colour_histogram(_crop(image, det.box), step=1)
            last = self._faces.get(t)
            if last is None or 0.5 * float(np.abs(colours - last).sum()) > FACE_CUT_DISTANCE:
                self._ids[t], self._next = self._next, self._next + 1  # a new face at this place
            self._faces[t] = colours
            out[self._ids[t]] = (det, appearance(image, det.box).astype(np.float32))
        return dict(sorted(out.items()))


def _crop(image: np.ndarray, box) -> np.ndarray:
    """The pixels of `box` (x0, y0, x1, y1), clipped to the image, at least one."""
    h, w = image.shape[:2]
    x0, y0 = min(max(int(box[0]), 0), w - 1), min(max(int(box[1]), 0), h - 1)
    return image[y0 : max(min(round(box[3]), h), y0 + 1), x0 : max(min(round(box[2]), w), x0 + 1)]


@dataclass
class _Group:
    looks: np.ndarray  # sum of the group's descriptors
    samples: set  # sample indices in which one of its tracks was seen
    first: int  # its earliest sample

    def similarity(self, other: _Group) -> float:
        return float(self.looks @ other.looks) / float(np.linalg.norm(self.looks) * np.linalg.norm(other.looks))


def group_tracks(looks: dict[int, np.ndarray], samples: dict[int, set], same: float = SAME_PERSON) -> dict[int, int]:
    """{track: person}: tracks joined into people by appearance, once a clip's tracks are known.

    `looks[t]` is the sum of track t's descriptors, `samples[t]` the sample indices it was seen
    in. The two most alike groups are joined while their mean faces reach `same` and they were
    never on screen together (two faces in one frame are two people). People are numbered from 0
    in order of first appearance.
    """
    groups = [_Group(looks[t].astype(np.float64), set(samples[t]), min(samples[t])) for t in looks]
    members = [[t] for t in looks]
    while True:
        pairs = [
            (a.similarity(b), i, j)
            for i, a in enumerate(groups)
            for j, b in enumerate(groups[:i])
            if not a.samples & b.samples
        ]
        best = max(pairs, default=None)
        if best is None or best[0] < same:
            break
        _, i, j = best
        a, b = groups[i], groups[j]
        groups[j] = _Group(a.looks + b.looks, a.samples | b.samples, min(a.first, b.first))
        members[j] += members.pop(i)
        groups.pop(i)
    order = sorted(range(len(groups)), key=lambda g: groups[g].first)
    return {t: person for person, g in enumerate(order) for t in members[g]}

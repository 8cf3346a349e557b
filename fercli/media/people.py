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
- Where dlib's face-recognition weights are present, each track also gets identity embeddings
  (`nets.faceid`: 128-d, made unit length here) from chips of its face cut when
  `Tracks.chip_due` says (its first sample, then one a second): they tell people apart where
  texture cannot (`bench/identity.py distances`).
- When the clip is done, `group_tracks` joins tracks into people: the two groups whose mean
  descriptors are most alike, never two that were on screen together, while they reach the
  threshold of the descriptors' kind (`SAME`). A whole track's mean is far steadier than one
  sample's descriptor.

Texture, measured with whole-track means: OpenCV's `Megamind.avi` (three people, four cuts; 5 samples/s)
gives 0.887-0.90 between one person's tracks and at most 0.839 between two people's; the test
clip of two photographed faces under per-shot colour casts (`tests/real_faces.cuts_frames`)
0.935 and above against at most 0.808. The threshold sits between them. Under the changes
between an interview's shots (scale, light, colour, compression, mirror, blur, roll) one
person's faces fall to 0.674, while two people reach 0.846: at 0.86 texture splits 72% of one
person's pairs of shots (`bench/identity.py distances`); the embedding splits 2.2% and joins
0.6% of two people's (`SAME_FACE`).
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
# 1080p; sample-to-sample distances move by under 0.01 against every 4th pixel, no cut gained or lost.
HIST_PIXELS = 15_000
SAME_PERSON = 0.86  # cosine similarity of two groups' mean texture descriptors that makes them one person
# The same for unit-length face embeddings (dlib's network): docs/people.md gives the distances
# measured on real faces that set it, and its margin.
SAME_FACE = 0.93
SAME = {"texture": SAME_PERSON, "faceid": SAME_FACE}  # descriptor kind -> its threshold
CHIP_INTERVAL_S = 1.0  # seconds between a track's identity chips after its first
LBP_SIDE = 64  # px; the face box is resized to this (plus a 1 px border) before coding
LBP_GRID = 4  # cells each way; a histogram of 256 codes per cell
# The 8 neighbours of a pixel, clockwise from the top left, as offsets into the bordered image.
LBP_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))


class ShotCuts:
    """Says whether each sampled frame starts a new shot (the first frame of a clip does not)."""

    def __init__(self, threshold: float = CUT_DISTANCE):
        self.threshold = threshold
        self._last: np.ndarray | None = None

    def __call__(self, image: np.ndarray) -> bool:
        return self.after(colour_histogram(image, shot_step(*image.shape[:2])))

    def after(self, hist: np.ndarray) -> bool:
        """The same for a frame given by its shot histogram (`colour_histogram` at `shot_step`,
        made where the frame is, a GPU's included)."""
        hist = np.asarray(hist, dtype=np.float64)
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
    for bit, (dy, dx) in enumerate(LBP_NEIGHBOURS):
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
    _chipped: dict = field(default_factory=dict)  # this track's id -> time of its latest chip

    def chip_due(self, track: int, time: float, interval: float = CHIP_INTERVAL_S) -> bool:
        """Whether track `track` (an id `update` gave) should have an identity chip cut at `time`
        (s): at its first sample and then once `interval` has passed; records it when so."""
        last = self._chipped.get(track)
        if last is not None and time - last < interval - 1e-9:
            return False
        self._chipped[track] = time
        return True

    def update(self, time: float, image: np.ndarray, detections: list[Detection]) -> dict[int, tuple]:
        """{track id: (detection, descriptor)} for a sampled frame and its detections."""
        return self.update_seen(
            time,
            colour_histogram(image, shot_step(*image.shape[:2])),
            detections,
            lambda det: colour_histogram(_crop(image, det.box), step=1),
            lambda det: appearance(image, det.box),
        )

    def update_seen(self, time: float, frame_colours, detections: list[Detection], face_colours, describe) -> dict:
        """`update` from what was measured where the frame is (a GPU's included): the frame's
        `colour_histogram`, and callables giving a detection's face colours and descriptor."""
        if self.shots.after(frame_colours):
            self.cuts.append(time)
            self.tracker.tracks = {}  # box overlap never links two shots; ids go on counting
            self._ids, self._faces = {}, {}
        out = {}
        for t, det in self.tracker.update(time, detections).items():
            colours = np.asarray(face_colours(det), dtype=np.float64)
            last = self._faces.get(t)
            if last is None or 0.5 * float(np.abs(colours - last).sum()) > FACE_CUT_DISTANCE:
                self._ids[t], self._next = self._next, self._next + 1  # a new face at this place
            self._faces[t] = colours
            out[self._ids[t]] = (det, np.asarray(describe(det), dtype=np.float32))
        return dict(sorted(out.items()))


def _crop(image: np.ndarray, box) -> np.ndarray:
    """The pixels of `box` (x0, y0, x1, y1), clipped to the image, at least one."""
    x0, y0, x1, y1 = face_pixels(box, image.shape[1], image.shape[0])
    return image[y0:y1, x0:x1]


def face_pixels(box, width: int, height: int) -> tuple[int, int, int, int]:
    """The whole pixels x0, y0, x1, y1 of a face box that its colours and descriptor are made from."""
    x0, y0 = min(max(int(box[0]), 0), width - 1), min(max(int(box[1]), 0), height - 1)
    return x0, y0, max(min(round(box[2]), width), x0 + 1), max(min(round(box[3]), height), y0 + 1)


@dataclass
class _Group:
    looks: np.ndarray  # sum of the group's descriptors
    samples: set  # sample indices in which one of its tracks was seen
    first: int  # its earliest sample

    def similarity(self, other: _Group) -> float:
        return float(self.looks @ other.looks) / float(np.linalg.norm(self.looks) * np.linalg.norm(other.looks))


def group_tracks(
    looks: dict[int, np.ndarray], samples: dict[int, set], same: float | None = None, kind: str = "texture"
) -> dict[int, int]:
    """{track: person}: tracks joined into people by appearance, once a clip's tracks are known.

    `looks[t]` is the sum of track t's unit-length descriptors of one `kind` ("texture":
    `appearance`; "faceid": face embeddings), `samples[t]` the sample indices it was seen in. The
    two most alike groups are joined while the cosine of their sums reaches `same` (default: the
    kind's, `SAME`) and they were never on screen together (two faces in one frame are two
    people). People are numbered from 0 in order of first appearance.
    """
    if same is None:
        if kind not in SAME:
            raise ValueError(f"descriptor kind {kind!r}: one of {', '.join(SAME)}")
        same = SAME[kind]
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

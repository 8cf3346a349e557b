"""Face detection (MediaPipe's BlazeFace, see `blazeface`), tracking across sampled frames, and crops."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from .blazeface import MIN_SCORE

MATCH_IOU = 0.15  # box overlap that continues a track from one sampled frame to the next
TRACK_TTL = 1.0  # seconds a track survives without a detection (brief occlusions, missed frames)
STEADY_IOU = 0.9  # two detections in a row this alike (every box) mean the faces hold still

WARM_UP_SIDE = 64  # px; a blank image run once at start, while LiteRT's start-up line is muted

log = logging.getLogger("fercli")
_stderr_lock = threading.Lock()

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
T = TypeVar("T")


@dataclass(frozen=True)
class Detection:
    box: Box  # pixels, clipped to the frame
    score: float  # detector confidence 0..1
    # (x, y) pixels of each of blazeface.KEYPOINTS (eyes, nose tip, mouth, ears), not clipped;
    # None where the detection came without them
    keypoints: tuple | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


class FaceDetector:
    """MediaPipe's full-range BlazeFace (`blazeface`: the network shipped inside fercli, run by LiteRT)."""

    def __init__(self, min_score: float = MIN_SCORE):
        from .blazeface import BlazeFace

        self.min_score = min_score
        # LiteRT writes "Created TensorFlow Lite XNNPACK delegate" straight to file descriptor 2
        # from native code, on creation and on the first image; no setting turns it off. It is
        # muted for exactly that span, unless fer logs at debug level (-v).
        with _native_stderr_muted(not log.isEnabledFor(logging.DEBUG)):
            self._net = BlazeFace()
            self._net(np.zeros((WARM_UP_SIDE, WARM_UP_SIDE, 3), np.uint8))

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an RGB uint8 image, largest first, boxes clipped to the frame."""
        h, w = image.shape[:2]
        boxes, scores, points = self._net.faces(np.ascontiguousarray(image), self.min_score)
        return frame_detections(boxes, scores, w, h, points)

    def close(self) -> None:
        self._net = None

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frame_detections(boxes, scores, width: int, height: int, keypoints=None) -> list[Detection]:
    """A frame's faces as fer gives them, from the detector's boxes (x0, y0, x1, y1 frame pixels),
    scores and key points (N, 6, 2) if any: boxes clipped to the frame, empty ones dropped, largest first."""
    found = []
    points = np.asarray(keypoints).tolist() if keypoints is not None else [None] * len(np.asarray(scores))
    for (x0, y0, x1, y1), score, face_points in zip(np.asarray(boxes).tolist(), np.asarray(scores).tolist(), points):
        box = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
        if box[2] > box[0] and box[3] > box[1]:
            found.append(Detection(box, score, tuple(map(tuple, face_points)) if face_points is not None else None))
    return sorted(found, key=lambda d: d.area, reverse=True)


@contextmanager
def _native_stderr_muted(mute: bool):
    """Point file descriptor 2 at /dev/null for the block (native code's writes included)."""
    if not mute:
        yield
        return
    with _stderr_lock:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


class SteadyDetector:
    """Skips detection on samples that lie between two detections that agree, decided afterwards.

    After a detection, the next `reuse` samples are held back undetected and the sample after
    them is detected. If its faces agree with the earlier detection (same number of faces, each
    box overlapping its match by STEADY_IOU), the held samples take the earlier boxes; if not,
    each held sample is detected on its own. So a reused box always sits between two detections
    that found the same faces: a face that leaves is seen leaving, and one that enters is seen
    entering, on the sample it happens. It never calls the detector more often than detecting
    every sample would, and it delays the stream by `reuse` + 1 samples. One per clip.
    """

    def __init__(self, detector, reuse: int = 1):
        self.detector = detector  # anything with .detect(image) -> list[Detection]
        self.reuse = max(0, reuse)
        self.detected = 0  # detector calls made
        self.reused = 0  # samples that took boxes from the detections around them

    def detections(self, frames: Iterable[T], image: Callable[[T], np.ndarray]) -> Iterator[tuple[T, list[Detection]]]:
        """(frame, its detections) for each of `frames`, in order; `image(frame)` is what to detect on."""
        frames = iter(frames)
        last: list[Detection] = []  # detections of the latest detected sample
        for frame in frames:
            if not last or self.reuse == 0:  # nothing steady to lean on: a face may walk in
                last = self._detect(image(frame))
                yield frame, last
                continue
            held = [frame, *islice(frames, self.reuse - 1)]
            after = next(frames, None)
            found = self._detect(image(after)) if after is not None else []
            steady = after is not None and _alike(found, last)
            for f in held:
                self.reused += steady
                yield f, last if steady else self._detect(image(f))
            if after is None:
                return
            last = found
            yield after, found

    def _detect(self, image: np.ndarray) -> list[Detection]:
        self.detected += 1
        return self.detector.detect(image)


def _alike(a: list[Detection], b: list[Detection]) -> bool:
    # No faces is never steady: a face may walk in on the next sample.
    if not a or len(a) != len(b):
        return False
    return all(max(iou(d.box, e.box) for e in b) >= STEADY_IOU for d in a)


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: Box
    last_seen: float  # seconds


@dataclass
class FaceTracker:
    """Follows faces across sampled frames of one shot by box overlap.

    A track lives on for `ttl` seconds without a detection (a blink of the detector, a hand
    passing), so a face hidden that briefly keeps its track. Which track is which person, across
    cuts and longer absences, is `people`'s business.
    """

    ttl: float = TRACK_TTL
    tracks: dict[int, _Track] = field(default_factory=dict)
    _next_id: int = 0
    _time: float | None = None

    def update(self, time: float, detections: list[Detection]) -> dict[int, Detection]:
        """Match this frame's detections to tracks; returns {track id: detection}."""
        self._time = time
        self.tracks = {i: t for i, t in self.tracks.items() if time - t.last_seen <= self.ttl}
        matched = self._match(detections)
        for track_id, det in matched.items():
            track = self.tracks[track_id]
            track.box, track.last_seen = det.box, time
        return matched

    def _match(self, detections: list[Detection]) -> dict[int, Detection]:
        pairs = sorted(
            ((iou(t.box, d.box), tid, j) for tid, t in self.tracks.items() for j, d in enumerate(detections)),
            reverse=True,
        )
        matched: dict[int, Detection] = {}
        used: set[int] = set()
        for overlap, tid, j in pairs:
            if overlap < MATCH_IOU:
                break
            if tid not in matched and j not in used:
                matched[tid] = detections[j]
                used.add(j)
        for j, det in enumerate(detections):
            if j not in used:
                tid = self._next_id
                self._next_id += 1
                self.tracks[tid] = _Track(tid, det.box, self._time or 0.0)
                matched[tid] = det
        return matched


def square_box(box: Box, margin: float) -> tuple[int, int, int, int]:
    """A square around the box's centre: its larger side plus `margin` of it on each side."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin)
    half = side / 2
    x0, y0 = math.floor(cx - half), math.floor(cy - half)
    s = max(1, round(side))
    return x0, y0, x0 + s, y0 + s


def crop(image: np.ndarray, box: Box, size: int, margin: float = 0.0, square: bool = True) -> np.ndarray:
    """The face crop, resized to size x size RGB (PIL bilinear).

    square: a square around the box's centre, its larger side plus `margin` of it on each side;
    outside the frame is black. Otherwise the box itself, cut tight out of the frame and
    stretched to a square, as HSEmotion feeds its networks (`margin` must then be 0).
    """
    from PIL import Image

    if square:
        region = _square_region(image, box, margin)
    elif margin:
        raise ValueError("a tight box crop takes no margin")
    else:
        region = _box_region(image, box)
    return np.asarray(Image.fromarray(region).resize((size, size), Image.BILINEAR))


def crop_region(
    box: Box, width: int, height: int, margin: float = 0.0, square: bool = True
) -> tuple[int, int, int, int]:
    """The pixels `crop` resizes, x0, y0, x1, y1 (whole pixels; a square may reach outside the
    frame, where it is black) for a face at `box` in a width x height frame."""
    if square:
        return square_box(box, margin)
    if margin:
        raise ValueError("a tight box crop takes no margin")
    return box_pixels(box, width, height)


def _square_region(image: np.ndarray, box: Box, margin: float) -> np.ndarray:
    x0, y0, x1, y1 = square_box(box, margin)
    h, w = image.shape[:2]
    side = x1 - x0
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return canvas


def _box_region(image: np.ndarray, box: Box) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box_pixels(box, w, h)
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def box_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The tight crop's pixels: the box rounded to whole pixels inside the frame, at least one each way."""
    # Whole pixels, as a detector's integer box indexes the frame.
    x0, y0 = min(max(round(box[0]), 0), width - 1), min(max(round(box[1]), 0), height - 1)
    x1, y1 = max(min(round(box[2]), width), x0 + 1), max(min(round(box[3]), height), y0 + 1)
    return x0, y0, x1, y1

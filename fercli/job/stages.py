"""The annotation stages under public names, shared by every schedule (thread, processes, Ray).

    producer  clip_samples / produce_clips: decode, detect, track and crop (model-free, so it can
              run in a thread, a worker process or a Ray task), sending messages through `put`
    labeler   Labeler: the backbone, batched across clips, the windows and heads, rows per clip
    clock     StageClock / NO_CLOCK: per-stage time for `fer benchmark speed`

Messages from a producer, in order per clip: ("info", key, VideoInfo), ("samples", key,
[SampleCrops...]), then ("end", key, clock payload) or ("error", key, one-line message); and
("exit", None, None) when the producer has no more clips.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..core.devices import autocast, synchronize
from ..core.errors import FerError, typed_line
from ..media.inputs import Clip
from .contract import AnnotateOptions, ProgressEvent, VideoResult

# FFmpeg decoder threads per clip while the model runs on the CPU: the backbone already keeps
# every core busy, and one thread decodes with less overhead than frame threading (measured on
# 2 cores: 2.17 s and 4.1 CPU-s against 2.36 s and 4.5 CPU-s). With a GPU, FFmpeg chooses.
DECODE_THREADS_BESIDE_CPU_MODEL = 1
SAMPLES_PER_MESSAGE = 8  # samples a producer sends at once (each crop is ~150 kB)
HEAD_BATCH = 256  # rows labelled at once at a clip's end: bounds the windows held (256 x T x 1280 floats)


class StageClock:
    """Wall time and item counts per pipeline stage, for `fer benchmark speed`.

    CUDA work is asynchronous, so each stage synchronises before reading the clock; that costs
    a little overlap, which is why the plain pipeline runs with the no-op clock below.
    """

    def __init__(self, device=None):
        self.device = device  # the model's: its queued work is waited for at each reading
        self.seconds: dict[str, float] = defaultdict(float)
        self.items: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str, items: int = 0):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start
            self.items[name] += items

    def iterate(self, name: str, iterable):
        """Charge the time spent producing each item of `iterable` to stage `name`."""
        it = iter(iterable)
        while True:
            with self.stage(name, 1):
                try:
                    item = next(it)
                except StopIteration:
                    self.items[name] -= 1
                    return
            yield item

    def _sync(self) -> None:
        synchronize(self.device)


class _NoClock:
    @contextmanager
    def stage(self, name: str, items: int = 0):
        yield

    def iterate(self, name: str, iterable):
        return iterable


NO_CLOCK = _NoClock()


def is_timed(clock) -> bool:
    return isinstance(clock, StageClock)


def merge_clock(clock, payload) -> None:
    if payload and isinstance(clock, StageClock):
        seconds, items = payload
        for name, value in seconds.items():
            clock.seconds[name] += value
        for name, value in items.items():
            clock.items[name] += value


# -- producer: decode, detect, crop. Model-free, so it can run in worker processes. ---------


@dataclass
class SampleCrops:
    index: int  # sample index k
    time: float  # seconds
    crops: dict  # track id -> size x size x 3 uint8 crop, for every face in the sample
    # track id -> the faces.Detection the crop was cut from: box in pixels of the upright frame
    # and detector score (a box reused by SteadyDetector is the one the crop was cut from)
    detections: dict = field(default_factory=dict)
    # track id -> the face's `people.appearance` descriptor (float32), for joining tracks into people
    looks: dict = field(default_factory=dict)


def clip_samples(clip: Clip, cfg, options: AnnotateOptions, detector, device_type: str = "cpu", clock=NO_CLOCK):
    """The clip's VideoInfo first, then a SampleCrops per sample at the model's rate."""
    from ..media.decode import AUTO_THREADS, open_video
    from ..media.faces import SteadyDetector
    from ..media.people import Tracks

    pre = cfg.preprocess
    threads = DECODE_THREADS_BESIDE_CPU_MODEL if device_type == "cpu" else AUTO_THREADS
    with open_video(clip.path, frames_fps=options.frames_fps, device=device_type, threads=threads) as source:
        yield source.info
        tracks = Tracks()
        steady = SteadyDetector(_TimedDetector(detector, clock), options.reuse_boxes)
        frames = clock.iterate("decode", source.frames() if options.per_frame else source.sample(cfg.fps))
        for frame, detections in steady.detections(frames, lambda f: f.image):
            with clock.stage("faces", 1):
                found = tracks.update(frame.time, frame.image, detections)
                crops = {t: pre.cut(frame.image, det.box) for t, (det, _) in found.items()}
            detections = {t: det for t, (det, _) in found.items()}
            yield SampleCrops(frame.index, frame.time, crops, detections, {t: look for t, (_, look) in found.items()})


@dataclass
class _TimedDetector:
    """A detector whose calls count as the "faces" stage (they run ahead of their sample's turn)."""

    detector: object
    clock: object

    def detect(self, image):
        with self.clock.stage("faces"):
            return self.detector.detect(image)


def clip_error(clip: Clip, e: Exception) -> str:
    if isinstance(e, FerError):
        return str(e)
    return f"{clip.path}: {typed_line(e)}"


def produce_clips(tasks, put, cfg, options, device_type: str, timed: bool) -> None:
    """Decode, detect and crop each (key, clip) of `tasks`, sending messages through `put`."""
    from ..media.faces import FaceDetector

    with FaceDetector() as detector:
        for key, clip in tasks:
            clock = StageClock() if timed else NO_CLOCK
            try:
                _produce_one(key, clip_samples(clip, cfg, options, detector, device_type, clock), put)
                put(("end", key, (dict(clock.seconds), dict(clock.items)) if timed else None))
            except BrokenPipeError:
                raise
            except Exception as e:  # reported for this clip; the others go on
                put(("error", key, clip_error(clip, e)))
    put(("exit", None, None))


def _produce_one(key, stream, put) -> None:
    put(("info", key, next(stream)))
    chunk = []
    for sample in stream:
        chunk.append(sample)
        if len(chunk) >= SAMPLES_PER_MESSAGE:
            put(("samples", key, chunk))
            chunk = []
    if chunk:
        put(("samples", key, chunk))


# -- consumer: the model, batched across clips. ----------------------------------------------


def has_expressions(model) -> bool:
    """Whether `model` gives expression logits (HSEmotion's head): its table has expression columns."""
    return bool(getattr(model, "has_expressions", False))


def _seen(sample: SampleCrops, person: int, probs: list | None):
    from ..tables.rows import FaceSeen

    det = sample.detections.get(person)
    if det is None:  # a producer that sends crops only: no box to report
        return None
    return FaceSeen(tuple(float(v) for v in det.box), float(det.score), tuple(probs) if probs is not None else None)


@dataclass
class _Clip:
    clip: Clip
    agg: object  # rows.Aggregator
    total: int  # samples expected
    started: float  # perf_counter at start
    duration: float
    rows: list = field(default_factory=list)
    samples: int = 0  # samples encoded so far
    # Held until the clip ends, when its tracks are joined into people (`people.group_tracks`):
    frames: list = field(default_factory=list)  # rows.FrameFeatures keyed by track id
    looks: dict = field(default_factory=dict)  # track id -> sum of its appearance descriptors
    seen_in: dict = field(default_factory=dict)  # track id -> sample indices it was seen in


class Labeler:
    """Runs the model over samples from any number of clips, batching crops across clips.

    Feed it `start(key, clip, info)`, then `add(key, sample)` in sample order per clip, then
    `end(key)` or `fail(key, error)`; finished clips go to `on_clip(VideoResult, rows)`.
    """

    def __init__(self, model, options: AnnotateOptions, device, clock, emit, on_clip):
        self.model, self.options, self.device, self.clock, self.emit = model, options, device, clock, emit
        self.precision = options.precision  # settled by pipeline.annotate (or the caller)
        self.on_clip = on_clip
        self.clips: dict = {}
        self.pending: list = []  # (key, SampleCrops) waiting for the backbone
        self.n_crops = 0

    def start(self, key, clip: Clip, info) -> None:
        from ..media.decode import sample_count
        from ..tables.rows import Aggregator

        cfg = self.model.config
        rows = self.options.rows
        agg = Aggregator(cfg.window, info.duration, cfg.is_window_model, rows, info.last_start, cfg.fps)
        total = info.frames if rows == "frame" else sample_count(info.duration, cfg.fps)
        self.clips[key] = _Clip(clip, agg, total, time.perf_counter(), info.duration)
        self.emit(ProgressEvent("start", clip.name, 0, total))

    def add(self, key, sample: SampleCrops) -> None:
        self.pending.append((key, sample))
        self.n_crops += len(sample.crops)
        if self.n_crops >= self.options.batch_size:
            self.flush()

    def end(self, key) -> None:
        from ..tables.rows import follow

        if any(k == key for k, _ in self.pending):
            self.flush()
        state = self.clips.pop(key)
        self._aggregate(state)
        if not self.options.all_faces:  # the person on screen longest, known only now
            state.rows = follow(state.rows, state.agg.main_person())
        vr = VideoResult(state.clip.name, duration=state.duration, elapsed=time.perf_counter() - state.started)
        self.on_clip(vr, state.rows)
        self.emit(ProgressEvent("done", state.clip.name, result=vr))

    def discard(self, key) -> None:
        """Forget a clip's samples so far (its producer died; it will be started again)."""
        self.pending = [(k, s) for k, s in self.pending if k != key]
        self.n_crops = sum(len(s.crops) for _, s in self.pending)
        self.clips.pop(key, None)

    def fail(self, key, clip: Clip, error: str) -> None:
        self.pending = [(k, s) for k, s in self.pending if k != key]
        self.n_crops = sum(len(s.crops) for _, s in self.pending)
        state = self.clips.pop(key, None)
        elapsed = time.perf_counter() - state.started if state else 0.0
        vr = VideoResult(clip.name, error=error, elapsed=elapsed)
        self.on_clip(vr, None)
        self.emit(ProgressEvent("done", clip.name, result=vr))

    def flush(self) -> None:
        from ..tables.rows import FrameFeatures

        feats, probs = self._encode([c for _, s in self.pending for c in s.crops.values()])
        j, touched = 0, {}
        for key, sample in self.pending:
            state = self.clips[key]
            faces = {fid: feats[j + i] for i, fid in enumerate(sample.crops)}
            seen = {fid: _seen(sample, fid, probs[j + i] if probs is not None else None) for i, fid in enumerate(sample.crops)}
            seen = {fid: face for fid, face in seen.items() if face is not None}
            j += len(sample.crops)
            state.frames.append(FrameFeatures(sample.index, sample.time, faces, seen))
            for track, look in sample.looks.items():
                state.looks[track] = state.looks.get(track, 0) + look
                state.seen_in.setdefault(track, set()).add(sample.index)
            state.samples += 1
            touched[key] = state
        self.pending, self.n_crops = [], 0
        for state in touched.values():
            self.emit(ProgressEvent("frames", state.clip.name, state.samples, state.total))

    def _aggregate(self, state: _Clip) -> None:
        """The clip's tracks joined into people, then its rows: per person, per second (or sample)."""
        from ..media.people import group_tracks
        from ..tables.rows import FrameFeatures

        person = group_tracks(state.looks, state.seen_in)
        units = []
        for ff in state.frames:
            faces = {person.get(t, t): f for t, f in ff.faces.items()}
            seen = {person.get(t, t): f for t, f in ff.seen.items()}
            units += state.agg.push(FrameFeatures(ff.index, ff.time, faces, seen))
            if len(units) >= HEAD_BATCH:
                self._label(state, units)
                units = []
        self._label(state, units + state.agg.finish())
        state.frames = []

    def _encode(self, crops: list):
        import numpy as np
        import torch

        from ..nets.model import to_input

        if not crops:
            return None, None
        x = to_input(np.stack(crops), self.model.config.preprocess, self.device)
        with self.clock.stage("backbone", len(crops)), torch.inference_mode(), autocast(self.precision, self.device):
            feats = self.model.encode(x)
            probs = None
            if has_expressions(self.model):  # softmax in fp32: the probabilities must sum to 1
                probs = self.model.expression_logits(feats).float().softmax(dim=-1).cpu().tolist()
            if not self.model.config.is_window_model:
                feats = self.model.frame_scores(feats)
            return feats.float(), probs

    def _label(self, state: _Clip, units: list) -> None:
        from ..tables.rows import label_rows

        if not units:
            return
        head = getattr(self.model, "head", None)
        n = sum(u.window is not None for u in units)
        with self.clock.stage("head", n), autocast(self.precision, self.device):
            state.rows += label_rows(units, head)

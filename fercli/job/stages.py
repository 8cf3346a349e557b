"""The annotation stages, shared by every schedule (thread, worker processes, Ray).

Producer   decode, detect, track and crop clips (model-free, so it can run in a thread, a
           worker process or a Ray task), saying what happens as `events`
Labeler    the sink: the backbone batched across clips, the windows and heads, rows per clip
StageClock per-stage time for `fer benchmark speed`
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from ..core.devices import autocast, head_precision, synchronize
from ..core.errors import FerError, typed_line
from ..media.inputs import Clip
from .contract import AnnotateOptions, ProgressEvent, VideoResult
from .events import (
    ClipEnded,
    ClipEvent,
    ClipFailed,
    ClipLost,
    ClipStarted,
    ProducerDone,
    Sample,
    SamplesReady,
    Timing,
)

# FFmpeg decoder threads per clip while the model runs on the CPU: the backbone keeps every
# core busy already. With a GPU, FFmpeg chooses.
DECODE_THREADS_BESIDE_CPU_MODEL = 1
SAMPLES_PER_EVENT = 8  # samples a producer sends at once (each crop is ~150 kB)
# Rows labelled at once at a clip's end: bounds the windows held (HEAD_BATCH x T x 1280 floats).
HEAD_BATCH = 256


class StageClock:
    """Wall time and item counts per pipeline stage, for `fer benchmark speed`.

    CUDA work is asynchronous, so each stage synchronises before reading the clock; that costs
    a little overlap, which is why the plain pipeline runs with the no-op clock below.
    """

    def __init__(self, device=None):
        self.device = device  # the model's: its queued work is waited for at each reading
        self.timing = Timing()

    @property
    def seconds(self) -> dict[str, float]:
        return self.timing.seconds

    @property
    def items(self) -> dict[str, int]:
        return self.timing.items

    @contextmanager
    def stage(self, name: str, items: int = 0):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.timing.seconds[name] += time.perf_counter() - start
            self.timing.items[name] += items

    def iterate(self, name: str, iterable):
        """Charge the time spent producing each item of `iterable` to stage `name`."""
        it = iter(iterable)
        while True:
            with self.stage(name, 1):
                try:
                    item = next(it)
                except StopIteration:
                    self.timing.items[name] -= 1
                    return
            yield item

    def add(self, timing: Timing | None) -> None:
        self.timing.add(timing)


class _NoClock:
    timing = None

    @contextmanager
    def stage(self, name: str, items: int = 0):
        yield

    def iterate(self, name: str, iterable):
        return iterable

    def add(self, timing: Timing | None) -> None:
        pass


NO_CLOCK = _NoClock()


def is_timed(clock) -> bool:
    return isinstance(clock, StageClock)


def clip_error(clip: Clip, e: Exception) -> str:
    """One line naming the clip for an exception raised while working on it."""
    if isinstance(e, FerError):
        return str(e)
    return f"{clip.path}: {typed_line(e)}"


# -- producer: decode, detect, crop. Model-free, so it can run in worker processes. ---------


def default_detector():
    """The CPU face detector (LiteRT's BlazeFace): what a producer opens unless told otherwise."""
    from ..media.faces import FaceDetector

    return FaceDetector()


@dataclass
class Producer:
    """Decodes, detects, tracks and crops clips on the CPU, saying what happens as events.

    Picklable, so a worker process or a Ray task gets its own; each opens one detector (from
    `detector`, a factory) for all the clips it is given.
    """

    config: object  # the model's ModelConfig: its preprocessing (the crop) and sample rate
    options: AnnotateOptions
    placement: object  # the run's nets.engines.Placement
    timed: bool = False  # measure each stage (`fer benchmark speed`)
    detector: Callable = default_detector
    identity: object = None  # nets.faceid.Identity: "faceid" cuts a chip per track segment for the embedding

    def run(self, tasks: Iterable[tuple[int, Clip]], put: Callable) -> None:
        """Every clip of `tasks` ((key, clip) pairs) as events through `put`, then ProducerDone."""
        with self.detector() as detector:
            for key, clip in tasks:
                for event in self.clip_events(key, clip, detector):
                    put(event)
        put(ProducerDone())

    def clip_events(self, key: int, clip: Clip, detector) -> Iterator[ClipEvent]:
        """ClipStarted, SamplesReady..., then ClipEnded, or ClipFailed: one bad clip ends alone."""
        clock = StageClock() if self.timed else NO_CLOCK
        try:
            stream = self.samples(clip, detector, clock)
            yield ClipStarted(key, next(stream))
            chunk = []
            for sample in stream:
                chunk.append(sample)
                if len(chunk) >= SAMPLES_PER_EVENT:
                    yield SamplesReady(key, chunk)
                    chunk = []
            if chunk:
                yield SamplesReady(key, chunk)
        except BrokenPipeError:  # the consumer is gone: nobody to tell
            raise
        except Exception as e:  # reported for this clip; the others go on
            yield ClipFailed(key, clip_error(clip, e))
            return
        yield ClipEnded(key, clock.timing.frozen() if self.timed else None)

    def samples(self, clip: Clip, detector, clock=NO_CLOCK) -> Iterator:
        """The clip's VideoInfo first, then a Sample per sample at the model's rate (or per frame)."""
        import numpy as np

        from ..media.decode import AUTO_THREADS, open_video
        from ..media.faces import SteadyDetector
        from ..media.people import Tracks

        pre, options = self.config.preprocess, self.options
        on_cpu = self.placement.device.type == "cpu"
        threads = DECODE_THREADS_BESIDE_CPU_MODEL if on_cpu else AUTO_THREADS
        with open_video(clip.path, frames_fps=options.frames_fps, threads=threads) as source:
            yield source.info
            tracks = Tracks()
            steady = SteadyDetector(_TimedDetector(detector, clock), options.reuse_boxes)
            frames = source.frames() if options.per_frame else source.sample(self.config.fps)
            cut_chip = self.chip_cutter()
            for frame, detections in steady.detections(clock.iterate("decode", frames), lambda f: f.image):
                with clock.stage("faces", 1):
                    found = tracks.update(frame.time, frame.image, detections)
                    crops = [pre.cut(frame.image, det.box) for det, _ in found.values()]
                    pixels = np.stack(crops) if crops else np.zeros((0, pre.size, pre.size, 3), np.uint8)
                with clock.stage("identity"):
                    due = {t: cut_chip(frame.image, det) for t, det in chips_due(cut_chip, found, tracks, frame.time)}
                yield Sample(
                    frame.index,
                    frame.time,
                    list(found),
                    pixels,
                    [det for det, _ in found.values()],
                    [look for _, look in found.values()],
                    due,
                )

    def chip_cutter(self) -> Callable | None:
        """(image, detection) -> the face's aligned identity chip; None where ids come from texture."""
        if getattr(self.identity, "kind", "texture") != "faceid":
            return None
        from ..media.align import chip
        from ..nets.faceid import load_landmarks

        predictor = load_landmarks(self.identity.landmarks)  # parsed once per process
        return lambda image, det: chip(image, det.box, det.keypoints, predictor)


def chips_due(cut_chip, found: dict, tracks, time: float) -> list:
    """(track, detection) of the faces in `found` due an identity chip at `time` (none for texture)."""
    if cut_chip is None:
        return []
    return [(t, det) for t, (det, _) in found.items() if det.keypoints is not None and tracks.chip_due(t, time)]


@dataclass
class _TimedDetector:
    """A detector whose calls count as the "faces" stage (they run ahead of their sample's turn)."""

    detector: object
    clock: object

    def detect(self, image):
        with self.clock.stage("faces"):
            return self.detector.detect(image)


# -- the sink: the model, batched across clips. ------------------------------------------------


def has_expressions(model) -> bool:
    """Whether `model` gives expression logits (HSEmotion's head): its table has expression columns."""
    return bool(getattr(model, "has_expressions", False))


@dataclass
class ClipLabelled:
    """A finished clip, as the Labeler hands it on: its result and rows (None when it failed)."""

    result: VideoResult
    rows: list | None
    boxes: list = field(default_factory=list)  # the boxes sidecar's rows (`tables.boxes.box_rows`)


@dataclass
class _ClipState:
    clip: Clip
    aggregator: object  # rows.Aggregator
    total: int  # samples expected
    started: float  # perf_counter at start
    duration: float
    rows: list = field(default_factory=list)
    samples: int = 0  # samples encoded so far
    # Held until the clip ends, when its tracks are joined into people (`people.group_tracks`):
    frames: list = field(default_factory=list)  # rows.FrameFeatures keyed by track id
    appearance_sums: dict = field(default_factory=dict)  # track id -> sum of its texture descriptors
    embedding_sums: dict = field(default_factory=dict)  # track id -> sum of its unit face embeddings
    track_samples: dict = field(default_factory=dict)  # track id -> sample indices it was seen in
    people: dict = field(default_factory=dict)  # track id -> person, once the clip has ended


class Labeler:
    """The sink of every schedule: runs the model over samples of any number of clips at once.

    It receives a producer's events (`receive`), batches crops across clips for the backbone,
    and hands each finished clip to `deliver(ClipLabelled)`; progress goes to `progress`.
    """

    def __init__(
        self, model, options: AnnotateOptions, placement, clips, deliver, progress, clock=NO_CLOCK, identity=None
    ):
        self.model, self.options, self.clips = model, options, clips
        self.identity = identity  # nets.faceid.Identity, or None: texture
        self.faceid = None  # the embedding network, loaded on the model's device on first use
        self.device, self.precision = placement.device, placement.precision
        self.deliver, self.progress, self.clock = deliver, progress, clock
        self.states: dict[int, _ClipState] = {}
        self.pending: list[tuple[int, Sample]] = []  # waiting for the backbone
        self.n_crops = 0

    def receive(self, event: ClipEvent) -> None:
        """Apply one producer event (see `events`); a clip the model cannot take fails alone."""
        if isinstance(event, SamplesReady):
            for sample in event.samples:
                self._add(event.key, sample)
        elif isinstance(event, ClipStarted):
            self._guarded(event.key, self._start, event.info)
        elif isinstance(event, ClipEnded):
            self.clock.add(event.timing)
            self._guarded(event.key, self._end)
        elif isinstance(event, ClipFailed):
            self._fail(event.key, event.error)
        elif isinstance(event, ClipLost):
            self._drop(event.key)

    def _guarded(self, key: int, step, *args) -> None:
        try:
            step(key, *args)
        except Exception as e:
            self._fail(key, clip_error(self.clips[key], e))

    def _start(self, key: int, info) -> None:
        from ..media.decode import sample_count
        from ..tables.rows import Aggregator

        cfg, rows = self.model.config, self.options.rows
        aggregator = Aggregator(cfg.window, info.duration, cfg.is_window_model, rows, info.last_start, cfg.fps)
        total = info.frames if rows == "frame" else sample_count(info.duration, cfg.fps)
        self.states[key] = _ClipState(self.clips[key], aggregator, total, time.perf_counter(), info.duration)
        self.progress(ProgressEvent("start", self.clips[key].name, 0, total))

    def _add(self, key: int, sample: Sample) -> None:
        if key not in self.states:  # the clip failed at its start: its samples go nowhere
            return
        self.pending.append((key, sample))
        self.n_crops += len(sample.tracks)
        if self.n_crops >= self.options.batch_size:
            self.flush()

    def _end(self, key: int) -> None:
        from ..tables.rows import follow

        if key not in self.states:
            return
        if any(k == key for k, _ in self.pending):
            self.flush()
        state = self.states.pop(key)
        self._aggregate(state)
        shown = None
        if not self.options.all_faces:  # the person on screen longest, known only now
            main = state.aggregator.main_person()
            state.rows, shown = follow(state.rows, main), {main}
        boxes = self._boxes(state, shown)
        elapsed = time.perf_counter() - state.started
        result = VideoResult(state.clip.name, duration=state.duration, elapsed=elapsed)
        self._hand_on(ClipLabelled(result, state.rows, boxes))

    def _boxes(self, state: _ClipState, shown) -> list:
        """The boxes sidecar's rows of a finished clip: each shown person's own box per sample."""
        from ..tables.boxes import box_rows

        if self.options.per_frame:  # a per-frame table holds each frame's box itself
            return []
        samples = [(ff.time, {t: (s.box, s.score) for t, s in ff.seen.items()}) for ff in state.frames]
        state.frames = []
        return box_rows(state.clip.name, samples, state.people, shown)

    def _drop(self, key: int) -> None:
        self.pending = [(k, s) for k, s in self.pending if k != key]
        self.n_crops = sum(len(s.tracks) for _, s in self.pending)
        return self.states.pop(key, None)

    def _fail(self, key: int, error: str) -> None:
        state = self._drop(key)
        elapsed = time.perf_counter() - state.started if state else 0.0
        self._hand_on(ClipLabelled(VideoResult(self.clips[key].name, error=error, elapsed=elapsed), None))

    def _hand_on(self, done: ClipLabelled) -> None:
        self.deliver(done)
        self.progress(ProgressEvent("done", done.result.video, result=done.result))

    def hand_on(self, done: ClipLabelled, timing: Timing | None = None) -> None:
        """Pass on a clip another Labeler finished (a Ray model actor's), as if this one had."""
        self.clock.add(timing)
        self.progress(ProgressEvent("start", done.result.video))
        self._hand_on(done)

    def flush(self) -> None:
        """Run the backbone on every pending crop, whatever clip it comes from."""
        from ..tables.rows import FaceSeen, FrameFeatures

        feats, probs = self._encode([s.crops for _, s in self.pending if len(s.tracks)])
        j, touched = 0, {}
        for key, sample in self.pending:
            state = self.states[key]
            faces, seen = {}, {}
            for track, det, look in zip(sample.tracks, sample.detections, sample.appearances):
                faces[track] = feats[j]
                expressions = tuple(probs[j]) if probs is not None else None
                seen[track] = FaceSeen(tuple(float(v) for v in det.box), float(det.score), expressions)
                state.appearance_sums[track] = state.appearance_sums.get(track, 0) + look
                state.track_samples.setdefault(track, set()).add(sample.index)
                j += 1
            state.frames.append(FrameFeatures(sample.index, sample.time, faces, seen))
            state.samples += 1
            touched[key] = state
        self._embed_chips()
        self.pending, self.n_crops = [], 0
        for state in touched.values():
            self.progress(ProgressEvent("frames", state.clip.name, state.samples, state.total))

    def _embed_chips(self) -> None:
        """The pending samples' identity chips through the face-recognition network, in one batch."""
        import numpy as np

        chips = [(key, track, chip) for key, s in self.pending for track, chip in s.chips.items()]
        if not chips:
            return
        from ..nets.faceid import load_faceid, unit_embeddings

        if self.faceid is None:
            self.faceid = load_faceid(self.identity.network, self.device)
        with self.clock.stage("identity", len(chips)):
            embeddings = unit_embeddings(self.faceid, np.stack([np.asarray(c) for _, _, c in chips]))
        for (key, track, _), e in zip(chips, embeddings):
            sums = self.states[key].embedding_sums
            sums[track] = sums.get(track, 0) + e

    def _aggregate(self, state: _ClipState) -> None:
        """The clip's tracks joined into people, then its rows: per person, per second (or sample)."""
        from ..media.people import group_tracks
        from ..tables.rows import FrameFeatures

        kind = getattr(self.identity, "kind", "texture")
        if kind == "faceid" and set(state.track_samples) - set(state.embedding_sums):
            kind = "texture"  # a track without a chip (no key points): the clip's people by texture alone
        descriptors = state.embedding_sums if kind == "faceid" else state.appearance_sums
        person = group_tracks(descriptors, state.track_samples, kind=kind)
        state.people = person
        units = []
        for ff in state.frames:
            faces = {person.get(t, t): f for t, f in ff.faces.items()}
            seen = {person.get(t, t): f for t, f in ff.seen.items()}
            units += state.aggregator.push(FrameFeatures(ff.index, ff.time, faces, seen))
            if len(units) >= HEAD_BATCH:
                self._label(state, units)
                units = []
        self._label(state, units + state.aggregator.finish())

    def _encode(self, crops: list):
        """Features (or frame scores) and expression probabilities for (n, S, S, 3) crop batches."""
        import torch

        from ..nets.model import to_input

        if not crops:
            return None, None
        pixels = torch.cat([torch.as_tensor(c).to(self.device, non_blocking=True) for c in crops])
        x = to_input(pixels, self.model.config.preprocess, self.device)
        with self.clock.stage("backbone", len(x)), torch.inference_mode(), autocast(self.precision, self.device):
            feats = self.model.encode(x)
            probs = None
            if has_expressions(self.model):  # softmax in fp32: the probabilities must sum to 1
                probs = self.model.expression_logits(feats).float().softmax(dim=-1).cpu().tolist()
            if not self.model.config.is_window_model:
                feats = self.model.frame_scores(feats)
            return feats.float(), probs

    def _label(self, state: _ClipState, units: list) -> None:
        from ..tables.rows import label_rows

        if not units:
            return
        head = getattr(self.model, "head", None)
        n = sum(u.window is not None for u in units)
        with self.clock.stage("head", n), autocast(head_precision(self.precision, self.device), self.device):
            state.rows += label_rows(units, head)


# A producer that stops making progress (a decoder stuck on a file, a filesystem that stopped
# answering) is given up on by its schedule: its clip is retried (RETRIES), then reported.
STALL_QUIET_S = 120.0  # s without an event from a clip's producer (an event is SAMPLES_PER_EVENT samples)
STALL_BASE_S = 120.0  # s a clip may take beyond STALL_PER_VIDEO_S per second of video
STALL_PER_VIDEO_S = 10.0  # fer runs many times faster than real time: ten times slower is stuck
RETRIES = 1  # a clip whose producer died or stalled is tried this many more times, on a fresh one


def clip_budget(info) -> float:
    """Seconds a clip may take from its start to its end, from its duration."""
    return STALL_BASE_S + STALL_PER_VIDEO_S * float(info.duration or 0.0)


def tries(n: int) -> str:
    """How a message says a clip was tried `n` times ("twice", "3 times")."""
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


@dataclass
class ClipWatch:
    """The clip a producer is on, and whether it has stopped making progress (`stalled`)."""

    key: int | None = None
    quiet_until: float = float("inf")  # monotonic time by which its next event is due
    finish_by: float = float("inf")  # monotonic time by which the clip must end

    def begin(self, key: int) -> None:
        """The producer was given clip `key`."""
        self.key, self.quiet_until, self.finish_by = key, time.monotonic() + STALL_QUIET_S, float("inf")

    def heard(self, event) -> None:
        """An event of the producer's arrived."""
        if isinstance(event, (ClipEnded, ClipFailed)):
            if event.key == self.key:  # a thread's producer may have begun its next clip already
                self.key, self.quiet_until, self.finish_by = None, float("inf"), float("inf")
            return
        if isinstance(event, ClipStarted):
            self.key, self.finish_by = event.key, time.monotonic() + clip_budget(event.info)
        self.quiet_until = time.monotonic() + STALL_QUIET_S

    @property
    def stalled(self) -> bool:
        return self.key is not None and time.monotonic() > min(self.quiet_until, self.finish_by)

    def why(self) -> str:
        """The stall in words, for the clip's error line."""
        if time.monotonic() > self.finish_by:
            return (
                f"decoding took over its time budget ({STALL_PER_VIDEO_S:g} s per second of video + {STALL_BASE_S:g} s)"
            )
        return f"decoding stopped making progress (nothing for {STALL_QUIET_S:g} s)"

"""The annotation job: clips in, one table of per-second valence/arousal out.

Data flows one way: inputs -> decode (sampled frames) -> faces (track, crop) -> model.encode
(batched, once per sample) -> windows (per-second units) -> model head -> rows -> writers.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .devices import autocast, check_device, resolve_device, resolve_precision  # noqa: F401  (importers use pipeline.*)
from .errors import FerError
from .inputs import Clip, find_clips

log = logging.getLogger("fercli")

DEFAULT_BATCH = 16  # face crops per backbone call; small batches run best on a 2-core CPU
MAIN_FACE = 0  # face id of the main subject when not annotating every face
MAX_WORKERS = 8  # decode/face worker processes at most
STOP_JOIN_S = 5.0  # seconds to wait for the decoding thread to notice a stop
# FFmpeg decoder threads per clip while the model runs on the CPU: the backbone already keeps
# every core busy, and one thread decodes with less overhead than frame threading (measured on
# 2 cores: 2.17 s and 4.1 CPU-s against 2.36 s and 4.5 CPU-s). With a GPU, FFmpeg chooses.
DECODE_THREADS_BESIDE_CPU_MODEL = 1
CPU_CORES_PER_WORKER = 4  # on a CPU-only run, one worker per this many cores (none below it)
SAMPLES_PER_MESSAGE = 8  # samples a worker sends at once (each crop is ~150 kB)
QUEUE_CHUNKS = 4  # messages in flight per worker: bounds memory whatever the video length


@dataclass
class AnnotateOptions:
    model: str = "hsemotion"  # registry name or checkpoint path
    device: str = "auto"  # "auto", "cpu" or "cuda"
    batch_size: int = DEFAULT_BATCH  # face crops per backbone batch
    per_frame: bool = False  # one row per sampled frame instead of per second
    all_faces: bool = False  # a row per tracked face (with face_id) instead of the main subject only
    resume: bool = False  # keep videos already in the output and annotate only the rest
    overwrite: bool = False  # replace an existing output with this run alone (else it is refused)
    frames_fps: float = 25.0  # frame rate of image-sequence clips (frames/s)
    workers: int | None = None  # decode/face worker processes; None = by cores and device, 0 = a thread
    precision: str = "auto"  # "fp32", "bf16", "fp16" (CUDA only); "auto" = bf16 on CUDA, fp32 on a CPU
    reuse_boxes: int = 1  # samples in a row that may reuse steady face boxes; 0 = detect on every sample
    ray: str | None = None  # run on Ray: "local" starts an instance, "auto" or an address joins a cluster


@dataclass
class VideoResult:
    video: str  # the `video` column
    rows: int = 0
    face_rows: int = 0  # rows with a face
    duration: float = 0.0  # seconds of video
    elapsed: float = 0.0  # wall-clock seconds spent on it
    error: str | None = None  # one line, naming the file, when it failed
    resumed: bool = False  # already in the output; not annotated again


@dataclass
class AnnotateResult:
    out: Path
    videos: list[VideoResult] = field(default_factory=list)
    skipped_files: int = 0  # files under the inputs that are not clips
    rows: int = 0  # rows in the output file
    errors_file: Path | None = None

    @property
    def failed(self) -> list[VideoResult]:
        return [v for v in self.videos if v.error]


@dataclass
class ProgressEvent:
    kind: str  # "model", "start", "frames", "done"
    video: str = ""
    done: int = 0  # samples done (kind "frames")
    total: int = 0  # samples expected
    result: VideoResult | None = None


class StageClock:
    """Wall time and item counts per pipeline stage, for `fer benchmark speed`.

    CUDA work is asynchronous, so each stage synchronises before reading the clock; that costs
    a little overlap, which is why the plain pipeline runs with the no-op clock below.
    """

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
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
        if self.cuda:
            import torch

            torch.cuda.synchronize()


class _NoClock:
    @contextmanager
    def stage(self, name: str, items: int = 0):
        yield

    def iterate(self, name: str, iterable):
        return iterable


NO_CLOCK = _NoClock()


def annotate(
    paths: Iterable[str | Path],
    out: str | Path,
    options: AnnotateOptions | None = None,
    *,
    model=None,
    progress: Callable[[ProgressEvent], None] | None = None,
    clock: StageClock | None = None,
) -> AnnotateResult:
    """Annotate every clip under `paths` into the table `out` (.parquet or .csv).

    A clip that fails is reported in the result and in `<out stem>.errors.csv`; the others go on.
    """
    from .model import load_model
    from .runtime import keep_freed_memory
    from .writers import TableWriter, check_output, write_errors

    keep_freed_memory()
    options = options or AnnotateOptions()
    emit = progress or (lambda event: None)
    clock = clock or NO_CLOCK
    out = Path(out)
    check_output(out, resume=options.resume, overwrite=options.overwrite)  # before any work
    device = resolve_device(options.device)
    if options.ray:
        from .cluster import import_ray, run_on_ray

        import_ray()  # says how to install Ray before any output is touched
    inputs = find_clips(paths)
    if inputs.missing:
        raise FerError(f"{inputs.missing[0]}: no such file or folder")
    if model is None:
        emit(ProgressEvent("model"))
        model = load_model(options.model, device)
    writer = TableWriter(
        out, run_metadata(model, options), per_frame=options.per_frame, all_faces=options.all_faces,
        resume=options.resume, overwrite=options.overwrite,
    )  # fmt: skip
    done = writer.done() if options.resume else set()
    result = AnnotateResult(out, skipped_files=inputs.skipped)
    todo = []
    for clip in _unique(inputs.clips, result):
        if clip.name in done:
            result.videos.append(VideoResult(clip.name, resumed=True))
        else:
            todo.append(clip)
    labeler = Labeler(model, options, device, clock, emit, on_clip=lambda vr, rows: _store(vr, rows, writer, clock, result))
    try:
        if options.ray:
            run = run_on_ray
        else:
            run = _run_in_workers if _workers(options, device, len(todo)) else _run_in_thread
        run(todo, labeler, options, device, clock)
    finally:  # also on Ctrl-C: keep what finished, in a whole file
        if result.videos or not out.exists():
            with clock.stage("write"):
                result.rows = writer.finish([c.name for c in inputs.clips])
        errors = [(v.video, v.error) for v in result.videos if v.error]
        result.errors_file = write_errors(out, errors)
    return result


def _unique(clips: list[Clip], result: AnnotateResult) -> Iterator[Clip]:
    seen: set[str] = set()
    for clip in clips:
        if clip.name in seen:
            msg = f"{clip.path}: another input already gives a video named {clip.name!r}; annotate it separately"
            result.videos.append(VideoResult(clip.name, error=msg))
            continue
        seen.add(clip.name)
        yield clip


def _store(vr: VideoResult, rows: list[dict] | None, writer, clock, result: AnnotateResult) -> None:
    if rows is not None:
        with clock.stage("write"):
            vr.rows = writer.add(vr.video, rows)
        vr.face_rows = sum(r["face"] for r in rows)
    if vr.error:
        log.error(vr.error)
    result.videos.append(vr)


# -- producer: decode, detect, crop. Model-free, so it can run in worker processes. ---------


@dataclass
class SampleCrops:
    index: int  # sample index k
    time: float  # seconds
    crops: dict  # face id -> size x size x 3 uint8 crop


def clip_samples(clip: Clip, cfg, options: AnnotateOptions, detector, device_type: str = "cpu", clock=NO_CLOCK):
    """The clip's VideoInfo first, then a SampleCrops per sample at the model's rate."""
    from .decode import AUTO_THREADS, open_video
    from .faces import FaceTracker, SteadyDetector

    pre = cfg.preprocess
    threads = DECODE_THREADS_BESIDE_CPU_MODEL if device_type == "cpu" else AUTO_THREADS
    with open_video(clip.path, frames_fps=options.frames_fps, device=device_type, threads=threads) as source:
        yield source.info
        tracker = FaceTracker()
        steady = SteadyDetector(_TimedDetector(detector, clock), options.reuse_boxes)
        frames = clock.iterate("decode", source.sample(cfg.fps))
        for frame, detections in steady.detections(frames, lambda f: f.image):
            with clock.stage("faces", 1):
                found = _faces_of(tracker, frame, detections, options.all_faces)
                crops = {fid: pre.cut(frame.image, det.box) for fid, det in found.items()}
            yield SampleCrops(frame.index, frame.time, crops)


@dataclass
class _TimedDetector:
    """A detector whose calls count as the "faces" stage (they run ahead of their sample's turn)."""

    detector: object
    clock: object

    def detect(self, image):
        with self.clock.stage("faces"):
            return self.detector.detect(image)


def _faces_of(tracker, frame, detections, all_faces: bool) -> dict:
    matched = tracker.update(frame.time, detections)
    if all_faces:
        return dict(sorted(matched.items()))
    main = tracker.main(matched)
    return {MAIN_FACE: main} if main is not None else {}


def _clip_error(clip: Clip, e: Exception) -> str:
    if isinstance(e, FerError):
        return str(e)
    return f"{clip.path}: {type(e).__name__}: {e}".splitlines()[0]


# -- consumer: the model, batched across clips. ----------------------------------------------


@dataclass
class _Clip:
    clip: Clip
    agg: object  # windows.Aggregator
    total: int  # samples expected
    started: float  # perf_counter at start
    duration: float
    rows: list = field(default_factory=list)
    samples: int = 0  # samples labelled so far


class Labeler:
    """Runs the model over samples from any number of clips, batching crops across clips.

    Feed it `start(key, clip, info)`, then `add(key, sample)` in sample order per clip, then
    `end(key)` or `fail(key, error)`; finished clips go to `on_clip(VideoResult, rows)`.
    """

    def __init__(self, model, options: AnnotateOptions, device, clock, emit, on_clip):
        self.model, self.options, self.device, self.clock, self.emit = model, options, device, clock, emit
        self.precision = resolve_precision(options.precision, device)
        self.on_clip = on_clip
        self.clips: dict = {}
        self.pending: list = []  # (key, SampleCrops) waiting for the backbone
        self.n_crops = 0

    def start(self, key, clip: Clip, info) -> None:
        from .decode import sample_count
        from .windows import Aggregator

        cfg = self.model.config
        agg = Aggregator(cfg.window, info.duration, cfg.is_window_model, self.options.per_frame, info.last_start)
        total = sample_count(info.duration, cfg.fps)
        self.clips[key] = _Clip(clip, agg, total, time.perf_counter(), info.duration)
        self.emit(ProgressEvent("start", clip.name, 0, total))

    def add(self, key, sample: SampleCrops) -> None:
        self.pending.append((key, sample))
        self.n_crops += len(sample.crops)
        if self.n_crops >= self.options.batch_size:
            self.flush()

    def end(self, key) -> None:
        if any(k == key for k, _ in self.pending):
            self.flush()
        state = self.clips.pop(key)
        self._label(state, state.agg.finish())
        vr = VideoResult(state.clip.name, duration=state.duration, elapsed=time.perf_counter() - state.started)
        self.on_clip(vr, state.rows)
        self.emit(ProgressEvent("done", state.clip.name, result=vr))

    def fail(self, key, clip: Clip, error: str) -> None:
        self.pending = [(k, s) for k, s in self.pending if k != key]
        self.n_crops = sum(len(s.crops) for _, s in self.pending)
        state = self.clips.pop(key, None)
        elapsed = time.perf_counter() - state.started if state else 0.0
        vr = VideoResult(clip.name, error=error, elapsed=elapsed)
        self.on_clip(vr, None)
        self.emit(ProgressEvent("done", clip.name, result=vr))

    def flush(self) -> None:
        from .windows import FrameFeatures

        feats = self._encode([c for _, s in self.pending for c in s.crops.values()])
        j, touched = 0, {}
        for key, sample in self.pending:
            state = self.clips[key]
            faces = {fid: feats[j + i] for i, fid in enumerate(sample.crops)}
            j += len(sample.crops)
            touched.setdefault(key, []).extend(state.agg.push(FrameFeatures(sample.index, sample.time, faces)))
            state.samples += 1
        self.pending, self.n_crops = [], 0
        for key, units in touched.items():
            state = self.clips[key]
            self._label(state, units)
            self.emit(ProgressEvent("frames", state.clip.name, state.samples, state.total))

    def _encode(self, crops: list):
        import numpy as np
        import torch

        from .model import to_input

        if not crops:
            return None
        x = to_input(np.stack(crops), self.model.config.preprocess, self.device)
        with self.clock.stage("backbone", len(crops)), torch.inference_mode(), autocast(self.precision, self.device):
            feats = self.model.encode(x)
            if not self.model.config.is_window_model:
                feats = self.model.frame_scores(feats)
            return feats.float()

    def _label(self, state: _Clip, units: list) -> None:
        from .windows import label_units

        if not units:
            return
        head = getattr(self.model, "head", None)
        n = sum(u.window is not None for u in units)
        with self.clock.stage("head", n), autocast(self.precision, self.device):
            labels = label_units(units, head)
        state.rows += [{**u.key, "face_id": u.face_id, "face": u.has_face, **lab} for u, lab in zip(units, labels)]


# -- schedules: the same producer and consumer, in one process or with worker processes. -----


def _run_in_thread(clips: list[Clip], labeler: Labeler, options, device, clock) -> None:
    """Decode and detect in a thread while this one runs the model, so the stages overlap.

    decord, MediaPipe and torch release the GIL in their native code. Measured on 2 cores
    (three 10 s 720p clips): 2.51 s against 2.63 s with the stages in series (bf16: 2.21, 2.48).
    """
    import queue
    import threading

    results: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.5)
                return
            except queue.Full:
                pass
        raise BrokenPipeError("annotation stopped")

    def produce() -> None:
        try:
            _produce_clips(enumerate(clips), put, labeler.model.config, options, device.type, _timed(clock))
        except BrokenPipeError:
            pass
        except BaseException as e:  # the consumer re-raises it
            try:
                put(("crash", None, e))
            except BrokenPipeError:
                pass  # the consumer already stopped for its own reason

    thread = threading.Thread(target=produce, name="fer-decode", daemon=True)
    thread.start()
    try:
        _consume(results, clips, labeler, clock, 1, [thread])
    finally:  # also on Ctrl-C or a model error: stop the producer before returning
        stop.set()
        thread.join(timeout=STOP_JOIN_S)


def _workers(options: AnnotateOptions, device, n_clips: int) -> int:
    """Worker processes for decoding and face detection (0 = all in this process)."""
    if options.workers is not None:
        return max(0, options.workers)
    cores = os.cpu_count() or 1
    if n_clips < 2:
        return 0
    if device.type == "cuda":  # the GPU runs the model; the cores are the producers'
        return min(n_clips, cores - 1, MAX_WORKERS)
    # On a CPU the backbone wants every core: measured on 2 cores, one worker process made the
    # run 1.5x slower than decoding in this process. Workers pay only where cores are spare.
    return min(n_clips, cores // CPU_CORES_PER_WORKER, MAX_WORKERS)


def _run_in_workers(clips: list[Clip], labeler: Labeler, options, device, clock) -> None:
    import multiprocessing as mp

    n = _workers(options, device, len(clips))
    ctx = mp.get_context("spawn")  # fork after torch and MediaPipe threads start is unsafe
    tasks, results, drained = ctx.Queue(), ctx.Queue(maxsize=QUEUE_CHUNKS * n), ctx.Event()
    timed = _timed(clock)
    for key, clip in enumerate(clips):
        tasks.put((key, clip))
    for _ in range(n):
        tasks.put(None)
    procs = [
        ctx.Process(
            target=_worker, args=(tasks, results, drained, labeler.model.config, options, device.type, timed), daemon=True
        )
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    try:
        _consume(results, clips, labeler, clock, n, procs)
        drained.set()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=5)


def _consume(results, clips, labeler: Labeler, clock, n_producers: int, producers) -> None:
    import queue

    finished = 0
    while finished < n_producers:
        try:
            kind, key, payload = results.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in producers):
                raise FerError("decoding workers died unexpectedly") from None
            continue
        if kind == "info":
            labeler.start(key, clips[key], payload)
        elif kind == "samples":
            for sample in payload:
                labeler.add(key, sample)
        elif kind == "end":
            _merge_clock(clock, payload)
            labeler.end(key)
        elif kind == "error":
            labeler.fail(key, clips[key], payload)
        elif kind == "exit":
            finished += 1
        elif kind == "crash":
            raise payload


def _worker(tasks, results, drained, cfg, options, device_type: str, timed: bool) -> None:
    """Worker process: decode, detect and crop whole clips; send samples in small chunks."""
    from .runtime import keep_freed_memory

    keep_freed_memory()
    put = _parent_aware_put(results)
    try:
        _produce_clips(iter(tasks.get, None), put, cfg, options, device_type, timed)
        _wait_until_read(results, drained)
    except (KeyboardInterrupt, BrokenPipeError):
        # Whatever is still buffered can never be read: exit without flushing it.
        results.cancel_join_thread()


def _produce_clips(tasks, put, cfg, options, device_type: str, timed: bool) -> None:
    """Decode, detect and crop each (key, clip) of `tasks`, sending messages through `put`."""
    from .faces import FaceDetector

    with FaceDetector() as detector:
        for key, clip in tasks:
            clock = StageClock() if timed else NO_CLOCK
            try:
                _produce(key, clip_samples(clip, cfg, options, detector, device_type, clock), put)
                put(("end", key, (dict(clock.seconds), dict(clock.items)) if timed else None))
            except BrokenPipeError:
                raise
            except Exception as e:  # reported for this clip; the others go on
                put(("error", key, _clip_error(clip, e)))
    put(("exit", None, None))


def _timed(clock) -> bool:
    return isinstance(clock, StageClock)


def _produce(key, stream, put) -> None:
    put(("info", key, next(stream)))
    chunk = []
    for sample in stream:
        chunk.append(sample)
        if len(chunk) >= SAMPLES_PER_MESSAGE:
            put(("samples", key, chunk))
            chunk = []
    if chunk:
        put(("samples", key, chunk))


def _parent_aware_put(results):
    """A queue put that gives up once the parent is gone (killed), instead of blocking forever."""
    import queue

    def put(item) -> None:
        while True:
            _check_parent()
            try:
                results.put(item, timeout=1.0)
                return
            except queue.Full:
                pass

    return put


def _wait_until_read(results, drained) -> None:
    # A process exits only after its queue's buffer reaches the pipe; if the parent died
    # without reading, that would block forever (this process holds the read end too).
    while not drained.wait(timeout=1.0):
        _check_parent()


def _check_parent() -> None:
    import multiprocessing as mp

    parent = mp.parent_process()
    if parent is not None and not parent.is_alive():
        raise BrokenPipeError("parent process is gone")


def _merge_clock(clock, payload) -> None:
    if payload and isinstance(clock, StageClock):
        seconds, items = payload
        for name, value in seconds.items():
            clock.seconds[name] += value
        for name, value in items.items():
            clock.items[name] += value


def run_metadata(model, options: AnnotateOptions) -> dict:
    """What the output's Parquet metadata records about the run."""
    from . import __version__

    cfg = model.config
    return {
        "fer_version": __version__,
        "model": getattr(model, "source", options.model),
        "arch": cfg.arch,
        "weights_sha256": getattr(model, "weights_sha256", None),
        "fps": cfg.fps,
        "window": cfg.window,
        "per_frame": options.per_frame,
        "all_faces": options.all_faces,
        "precision": resolve_precision(options.precision, resolve_device(options.device)),
        "frames_fps": options.frames_fps,
        "preprocess": cfg.to_dict()["preprocess"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

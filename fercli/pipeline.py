"""The annotation job: clips in, one table of per-second valence/arousal out.

Data flows one way: inputs -> decode (sampled frames) -> faces (track, crop) -> model.encode
(batched, once per sample) -> windows (per-second units) -> model head -> rows -> writers.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import FerError
from .inputs import Clip, find_clips

log = logging.getLogger("fercli")

DEFAULT_BATCH = 16  # face crops per backbone call; small batches run best on a 2-core CPU
MAIN_FACE = 0  # face id of the main subject when not annotating every face


@dataclass
class AnnotateOptions:
    model: str = "hsemotion"  # registry name or checkpoint path
    device: str = "auto"  # "auto", "cpu" or "cuda"
    batch_size: int = DEFAULT_BATCH  # face crops per backbone batch
    per_frame: bool = False  # one row per sampled frame instead of per second
    all_faces: bool = False  # a row per tracked face (with face_id) instead of the main subject only
    resume: bool = False  # keep videos already in the output and annotate only the rest
    frames_fps: float = 25.0  # frame rate of image-sequence clips (frames/s)


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


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise FerError("--device cuda: torch sees no CUDA GPU (use --device cpu or auto)")
    return torch.device(device)


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
    from . import faces
    from .model import load_model
    from .writers import TableWriter, write_errors

    options = options or AnnotateOptions()
    emit = progress or (lambda event: None)
    clock = clock or NO_CLOCK
    out = Path(out)
    device = resolve_device(options.device)
    inputs = find_clips(paths)
    if inputs.missing:
        raise FerError(f"{inputs.missing[0]}: no such file or folder")
    if model is None:
        emit(ProgressEvent("model"))
        model = load_model(options.model, device)
    writer = TableWriter(
        out, run_metadata(model, options), per_frame=options.per_frame, all_faces=options.all_faces, resume=options.resume
    )
    done = writer.done() if options.resume else set()
    result = AnnotateResult(out, skipped_files=inputs.skipped)
    order = [c.name for c in inputs.clips]
    try:
        with faces.FaceDetector() as detector:
            for clip in _unique(inputs.clips, result):
                if clip.name in done:
                    result.videos.append(VideoResult(clip.name, resumed=True))
                    continue
                vr = _annotate_one(clip, model, detector, options, device, writer, emit, clock)
                result.videos.append(vr)
    finally:  # also on Ctrl-C: keep what finished, in a whole file
        if result.videos or not out.exists():
            with clock.stage("write"):
                result.rows = writer.finish(order)
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


def _annotate_one(clip, model, detector, options, device, writer, emit, clock) -> VideoResult:
    vr = VideoResult(clip.name)
    start = time.perf_counter()
    emit(ProgressEvent("start", clip.name))
    try:
        rows = list(annotate_clip(clip, model, detector, options, device, emit, clock))
        with clock.stage("write"):
            vr.rows = writer.add(clip.name, rows)
        vr.face_rows = sum(r["face"] for r in rows)
        vr.duration = max((r.get("end", r.get("time", 0.0)) for r in rows), default=0.0)
    except FerError as e:
        vr.error = str(e)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # one bad clip must not stop the batch
        vr.error = f"{clip.path}: {type(e).__name__}: {e}".splitlines()[0]
    vr.elapsed = time.perf_counter() - start
    if vr.error:
        log.error(vr.error)
    emit(ProgressEvent("done", clip.name, result=vr))
    return vr


def annotate_clip(
    clip: Clip, model, detector, options: AnnotateOptions, device, emit=None, clock=NO_CLOCK
) -> Iterator[dict]:
    """Rows for one clip (without the `video` column), streamed second by second."""
    from .decode import open_video
    from .windows import Aggregator, rows

    emit = emit or (lambda event: None)
    cfg = model.config
    with open_video(clip.path, frames_fps=options.frames_fps, device=device.type) as source:
        duration = source.info.duration
        total = math.ceil(duration * cfg.fps - 1e-9)
        agg = Aggregator(cfg.window, duration, cfg.is_window_model, options.per_frame)
        samples = clock.iterate("decode", source.sample(cfg.fps))
        on_samples = lambda n: emit(ProgressEvent("frames", clip.name, n, total))  # noqa: E731
        features = _features(samples, model, detector, options, device, on_samples, clock)
        units = _units(features, agg)
        yield from rows(units, _timed_head(model, clock), options.batch_size)


def _timed_head(model, clock):
    head = getattr(model, "head", None)
    if head is None:
        return None

    def timed(windows):
        with clock.stage("head", len(windows)):
            return head(windows)

    return timed


def _units(features, agg) -> Iterator:
    for ff in features:
        yield from agg.push(ff)
    yield from agg.finish()


def _features(samples, model, detector, options, device, on_samples, clock=NO_CLOCK) -> Iterator:
    """Detect and crop faces per sample, encode crops in batches, yield FrameFeatures in order."""
    from .faces import FaceTracker, crop
    from .windows import FrameFeatures

    pre = model.config.preprocess
    tracker = FaceTracker()
    pending: list[tuple[int, float, list[int]]] = []  # sample index, time, face ids of its crops
    crops: list = []
    done = 0
    for frame in samples:
        with clock.stage("faces", 1):
            found = _faces_of(tracker, frame, detector, options.all_faces)
            crops += [crop(frame.image, det.box, pre.size, pre.margin) for det in found.values()]
        pending.append((frame.index, frame.time, list(found)))
        if len(crops) >= options.batch_size:
            yield from _flush(pending, crops, model, device, FrameFeatures, clock)
            done += len(pending)
            on_samples(done)
            pending, crops = [], []
    yield from _flush(pending, crops, model, device, FrameFeatures, clock)
    on_samples(done + len(pending))


def _faces_of(tracker, frame, detector, all_faces: bool) -> dict:
    matched = tracker.update(frame.time, detector.detect(frame.image))
    if all_faces:
        return dict(sorted(matched.items()))
    main = tracker.main(matched)
    return {MAIN_FACE: main} if main is not None else {}


def _flush(pending, crops, model, device, FrameFeatures, clock=NO_CLOCK) -> Iterator:
    import numpy as np
    import torch

    from .model import to_input

    feats = None
    if crops:
        with clock.stage("backbone", len(crops)), torch.inference_mode():
            feats = model.encode(to_input(np.stack(crops), model.config.preprocess, device))
            if not model.config.is_window_model:
                feats = model.frame_scores(feats)
            feats = feats.float()
    j = 0
    for index, t, face_ids in pending:
        faces = {fid: feats[j + i] for i, fid in enumerate(face_ids)}
        j += len(face_ids)
        yield FrameFeatures(index, t, faces)


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
        "frames_fps": options.frames_fps,
        "preprocess": cfg.to_dict()["preprocess"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

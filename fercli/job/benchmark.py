"""`fer benchmark speed`: how fast each stage runs, end to end, and against the naive loop.

The timed pipeline is the real one (`pipeline.annotate`) with a StageClock that synchronises
CUDA around each stage. A short warm-up over the first clip comes first, so model set-up is not
charged to the figures; the first timed run still pays for allocator growth and decoder
start-up, so `repeat` runs it again and reports the median run (the later runs are warm, as
in a long batch).
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..core.devices import autocast, synchronize
from ..core.errors import FerError
from ..media.inputs import find_clips
from .contract import AnnotateOptions
from .events import ClipEnded, ClipFailed, SamplesReady, feed
from .pipeline import annotate, make_producer, settle_decoder
from .stages import SAMPLES_PER_EVENT, Labeler, StageClock

STAGES = ("decode", "faces", "backbone", "head", "write")
PRODUCER_STAGES = ("decode", "faces")  # one thread (or worker) each; the rest run in the caller's thread
WARMUP_SAMPLES = 32  # samples of the first clip run through the model before timing starts
# Decoding and detection alone run in one thread: a rate, so the first clips up to this much
# video measure it (on the H200 run all 18 minutes took 83 s, longer than the timed run itself).
PRODUCER_ONLY_VIDEO_S = 120.0  # s of video


@dataclass
class StageFigure:
    seconds: float  # wall time spent in the stage
    items: int  # frames, crops or windows it handled
    per_second: float  # items / seconds


@dataclass
class StartUp:
    """Seconds before a new `fer annotate` process has its first decoded frame, by cause.

    Measured in a fresh Python process (this one has everything imported and warmed already),
    with the process settings `fer` applies, in the order annotate pays them.
    """

    import_s: float  # importing torch, timm, LiteRT and fer's pipeline
    model_load_s: float  # the checkpoint read and the network built (load_model)
    detector_init_s: float  # the face detector started (model file verified, LiteRT interpreter built)
    first_frame_s: float  # the first clip opened and its first frame decoded
    first_batch_s: float  # the first backbone batch (allocator growth, kernel selection)
    second_batch_s: float  # the same batch again: first_batch_s minus this is the warm-up cost

    @property
    def total_s(self) -> float:
        """Everything before steady state: the cost one `fer annotate` call pays once."""
        return self.import_s + self.model_load_s + self.detector_init_s + self.first_frame_s + self.first_batch_s


@dataclass
class ColdRun:
    """Both commands as a user runs them, each in a new process that pays its own start-up.

    fer: `fer annotate` on all the clips in one command. naive: the per-frame loop
    (`naive_loop`) as a script of its own (no fer process settings), every frame of every clip.
    """

    fer_s: float  # wall time of `fer annotate CLIPS` from launch to exit
    naive_s: float  # wall time of the naive loop's script from launch to exit
    naive_frames: int  # frames the naive loop read (every frame of every clip)
    clips: int

    @property
    def speedup(self) -> float:
        return self.naive_s / self.fer_s


@dataclass
class SpeedReport:
    setup: dict  # device, threads, model, batch size, clips and their sizes
    stages: dict[str, StageFigure]
    end_to_end_s: float  # wall time of the whole annotate run (the median run when repeated)
    cpu_s: float  # CPU time of this process and its finished workers during that run (core-seconds)
    video_seconds: float  # seconds of video annotated
    decoded_frames: int  # native frames in the clips (what a decode-everything loop reads)
    sampled_frames: int  # frames fer sampled at the model's rate
    backbone_only_fps: float  # crops/s of the backbone alone, same batch size, no pipeline
    producer_only_fps: float = 0.0  # samples/s of decoding, detection and cropping alone, no model
    naive_s: float | None = None  # the hand-written per-frame loop, if run
    naive_frames: int = 0
    peak_rss_mb: float = 0.0  # of this process, over its whole life
    peak_cuda_mb: float | None = None
    end_to_end_runs_s: list[float] = field(default_factory=list)  # every timed run, in order
    startup: StartUp | None = None  # a new process's fixed cost, if measured
    cold: ColdRun | None = None  # fer annotate against the naive loop, new processes, if measured
    derived: dict = field(default_factory=dict)

    def __post_init__(self):
        e2e = self.end_to_end_s
        self.derived = {
            "decoded_fps": self.decoded_frames / e2e,
            "sampled_fps": self.sampled_frames / e2e,
            "realtime_factor": self.video_seconds / e2e,
            "vs_backbone_only": (self.sampled_frames / e2e) / self.backbone_only_fps
            if self.backbone_only_fps
            else None,
            # Both baselines one after the other on the same cores: what no overlap would give.
            "in_series_fps": 1 / (1 / self.backbone_only_fps + 1 / self.producer_only_fps)
            if self.backbone_only_fps and self.producer_only_fps
            else None,
            "cores_busy": self.cpu_s / e2e,
            "naive_fps": self.naive_frames / self.naive_s if self.naive_s else None,
            # The naive loop reads every frame; compare the time each takes for the same videos.
            "speedup_vs_naive": (self.naive_s / self.naive_frames * self.decoded_frames) / e2e
            if self.naive_s
            else None,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.startup is not None:
            d["startup"]["total_s"] = self.startup.total_s
        if self.cold is not None:
            d["cold"]["speedup"] = self.cold.speedup
        return d

    def write_json(self, path: str | Path) -> Path:
        """The report as JSON at `path`, written atomically."""
        import json

        from ..core.files import atomic_write

        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return Path(path)


def speed(
    paths,
    *,
    model: str = "hsemotion",
    device: str = "auto",
    options: AnnotateOptions | None = None,
    naive: bool = True,
    naive_seconds: float | None = None,
    repeat: int = 1,
    loaded_model=None,
    startup: bool = True,
    cold: bool = False,
) -> SpeedReport:
    """Time `fer annotate` on `paths`, stage by stage and end to end; optionally the naive loop.

    `options` are annotate's own (batch size, workers, precision, Ray, box reuse, engine; rows per
    second: the timed run writes its table).

    `repeat` times the run that many times in this process and reports the median run (for an
    even count, the faster of the middle two), its stages included. `naive_seconds` caps how
    much of each clip the (slow) naive loop reads. `startup` also times a new process's start-up
    (`measure_startup`) with the same model, device and batch size. `cold` also runs `fer
    annotate` and the naive loop on every clip in new processes, start-up included (`measure_cold`).
    `options.engine` runs fer's backbone ("torch" or "openvino"; None: the one annotate would
    take); the naive loop always runs torch, as a hand-written loop would.
    """
    import torch

    from ..media.decode import open_video
    from ..nets.engines import asked_engine, engine_of, place
    from ..nets.model import load_placed

    if repeat < 1:
        raise FerError(f"--repeat must be at least 1, not {repeat}")
    inputs = find_clips(paths)
    if inputs.missing:
        raise FerError(f"{inputs.missing[0]}: no such file or folder")
    clips = inputs.clips
    if not clips:
        raise FerError(f"no video clips under {', '.join(map(str, paths)) or 'the given paths'} to benchmark")
    options = options or AnnotateOptions()
    engine = asked_engine(options.engine) or (engine_of(loaded_model) if loaded_model is not None else None)
    placement = place(engine, device, options.precision, options.ray)  # as annotate settles them, once
    dev = placement.device
    net = loaded_model or load_placed(model, placement)
    engine = engine_of(net)  # torch where a default OpenVINO gave way
    placement = replace(placement, engine=engine)
    options = replace(options, engine=engine, precision=placement.precision)
    options = replace(options, decoder=settle_decoder(options, placement))
    batch_size = options.batch_size
    infos = []
    for clip in clips:
        with open_video(clip.path) as src:
            infos.append(src.info)
    _warm_up(clips[0], net, options, placement)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runs = [_timed_run(clips, options, net, dev) for _ in range(repeat)]
    clock, e2e, cpu = sorted(runs, key=lambda run: run[1])[(repeat - 1) // 2]
    stages = {
        name: StageFigure(clock.seconds[name], clock.items[name], clock.items[name] / clock.seconds[name])
        for name in STAGES
        if clock.seconds.get(name)
    }
    report = SpeedReport(
        setup=_setup(net, dev, options, clips, infos),
        stages=stages,
        end_to_end_s=e2e,
        cpu_s=cpu,
        video_seconds=sum(i.duration for i in infos),
        decoded_frames=sum(i.frames for i in infos),
        sampled_frames=clock.items["decode"],
        backbone_only_fps=backbone_only(
            net, dev, batch_size, max(clock.items["backbone"], batch_size), options.precision
        ),
        producer_only_fps=producer_only(
            _first_minutes(clips, infos, PRODUCER_ONLY_VIDEO_S), net.config, options, placement
        ),
        peak_cuda_mb=torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        end_to_end_runs_s=[run[1] for run in runs],
    )
    if naive:
        naive_net = net if engine_of(net) == "torch" else load_placed(model, place("torch", dev))
        report.naive_s, report.naive_frames = naive_loop(clips, naive_net, dev, naive_seconds)
        report.__post_init__()
    if startup and loaded_model is None:  # a network passed in has no file a new process could load
        report.startup = measure_startup(clips[0].path, model, str(dev), batch_size, engine)
    if cold and loaded_model is None:
        report.cold = measure_cold([c.path for c in clips], model, str(dev), batch_size, engine)
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def measure_startup(clip, model: str, device: str, batch_size: int, engine: str = "torch") -> StartUp:
    """Time a new process's start-up (`StartUp`) for `clip`, `model`, `device` and `engine`."""
    code = "import sys; from fercli.job.benchmark import startup_probe; startup_probe(*sys.argv[1:])"
    _, out = _time_command(
        [sys.executable, "-c", code, str(clip), str(model), device, str(batch_size), engine], "start-up probe"
    )
    return StartUp(**json.loads(out.strip().splitlines()[-1]))


def measure_cold(paths, model: str, device: str, batch_size: int, engine: str = "torch") -> ColdRun:
    """`fer annotate PATHS` and the naive loop's script (torch), each timed from launch to exit."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fer-cold-") as tmp:
        fer = [
            sys.executable,
            "-m",
            "fercli.cli",
            "annotate",
            *map(str, paths),
            "--out",
            str(Path(tmp) / "cold.parquet"),
            "--model",
            str(model),
            "--device",
            device,
            "--batch-size",
            str(batch_size),
            "--engine",
            engine,
        ]
        fer_s, _ = _time_command(fer, "fer annotate (cold run)")
    code = "import sys; from fercli.job.benchmark import naive_probe; naive_probe(*sys.argv[1:])"
    naive_s, out = _time_command(
        [sys.executable, "-c", code, str(model), device, *map(str, paths)], "naive loop (cold run)"
    )
    return ColdRun(fer_s, naive_s, int(out.split()[-1]), len(paths))


def _time_command(cmd: list[str], what: str) -> tuple[float, str]:
    """Seconds from launch to exit, and what the command printed; FerError with its last line if it fails."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise FerError(f"{what} failed: {lines[-1]}")
    return seconds, done.stdout


def naive_probe(model: str, device: str, *paths: str) -> None:
    """The naive loop as a script of its own: imports, the model, then every frame of `paths`."""
    from ..nets.engines import place
    from ..nets.model import load_placed

    placement = place("torch", device)
    _, frames = naive_loop(find_clips(list(paths)).clips, load_placed(model, placement), placement.device)
    print(frames)


def startup_probe(clip: str, model: str, device: str, batch_size: str, engine: str = "torch") -> None:
    """The child side of `measure_startup`: pays each start-up cost in turn, prints them as JSON.

    Call it first thing in a new process; it applies the settings `fer`'s entry point applies.
    With the OpenVINO engine and its backbone cached, annotate imports OpenVINO and never timm.
    """
    import importlib

    from ..core import runtime

    runtime.tune_process()
    marks = [time.perf_counter()]
    import ai_edge_litert.interpreter  # noqa: F401  (what annotate imports, in the order it needs them)
    import torch

    importlib.import_module("timm" if engine == "torch" else "openvino")
    from ..media.decode import open_video
    from ..media.faces import FaceDetector
    from ..nets.engines import place
    from ..nets.model import load_placed
    from . import pipeline  # noqa: F401

    marks.append(time.perf_counter())
    placement = place(engine, device)
    dev = placement.device
    net = load_placed(model, placement)
    marks.append(time.perf_counter())
    with FaceDetector():
        marks.append(time.perf_counter())
    with open_video(clip) as src:
        next(src.sample(net.config.fps))
    marks.append(time.perf_counter())
    size = net.config.preprocess.size
    batch = torch.zeros(int(batch_size), 3, size, size, device=dev).to(memory_format=torch.channels_last)
    for _ in range(2):
        with torch.inference_mode():
            net.encode(batch)
        synchronize(dev)
        marks.append(time.perf_counter())
    names = ("import_s", "model_load_s", "detector_init_s", "first_frame_s", "first_batch_s", "second_batch_s")
    print(json.dumps({n: b - a for n, a, b in zip(names, marks, marks[1:])}))


def _timed_run(clips, options, model, device) -> tuple[StageClock, float, float]:
    """One annotate run over `clips`: its stage clock, wall seconds and CPU core-seconds."""
    clock = StageClock(device)
    with tempfile.TemporaryDirectory() as tmp:
        cpu, start = _cpu_seconds(), time.perf_counter()
        annotate([c.path for c in clips], Path(tmp) / "bench.parquet", model=model, options=options, clock=clock)
        return clock, time.perf_counter() - start, _cpu_seconds() - cpu


def backbone_only(model, device, batch_size: int, n: int, precision: str = "fp32") -> float:
    """Crops per second through the backbone alone, on ready-made input tensors."""
    import torch

    size = model.config.preprocess.size
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    batches = max(1, math.ceil(n / batch_size))
    with torch.inference_mode(), autocast(precision, device):
        model.encode(x)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for _ in range(batches):
            model.encode(x)
        synchronize(device)
    return batches * batch_size / (time.perf_counter() - start)


def _first_minutes(clips, infos, seconds: float) -> list:
    """The first clips whose video adds up to `seconds` (at least one clip)."""
    total, n = 0.0, 0
    while n < len(clips) and total < seconds:
        total += infos[n].duration
        n += 1
    return clips[: max(n, 1)]


def producer_only(clips, cfg, options, placement) -> float:
    """Samples per second through decoding, face detection and cropping alone (no model)."""

    samples = 0

    def count(event) -> None:
        nonlocal samples
        if isinstance(event, SamplesReady):
            samples += len(event.samples)

    start = time.perf_counter()  # the detector's start is charged, as in the pipeline's producer
    make_producer(cfg, options, placement).run(enumerate(clips), count)
    seconds = time.perf_counter() - start
    return samples / seconds if samples else 0.0


def naive_loop(clips, model, device, max_seconds: float | None = None) -> tuple[float, int]:
    """The loop users write by hand: every frame decoded, detected, cropped and run at batch 1,
    then averaged per second. Returns (seconds, frames). It decodes with PyAV, as fer does on a
    CPU, so the comparison is of the schedule, not of two decoders."""
    from itertools import islice

    import av
    import numpy as np
    import torch

    from ..media.faces import FaceDetector
    from ..nets.model import to_input

    pre = model.config.preprocess
    frames = 0
    start = time.perf_counter()
    with FaceDetector() as detector, torch.inference_mode():
        for clip in clips:
            if clip.frames:
                continue  # the hand-written loop reads video files
            per_second: dict[int, list] = {}
            with av.open(str(clip.path)) as container:
                stream = container.streams.video[0]
                fps = float(stream.average_rate or stream.guessed_rate)
                n = stream.frames or None if max_seconds is None else int(max_seconds * fps)
                for i, frame in enumerate(islice(container.decode(stream), n)):
                    image = frame.to_ndarray(format="rgb24")
                    found = detector.detect(image)
                    frames += 1
                    if not found:
                        continue
                    x = to_input(np.stack([pre.cut(image, found[0].box)]), pre, device)
                    per_second.setdefault(int(i // fps), []).append(model.encode(x).float().cpu().numpy())
            _ = {s: np.mean(v, axis=0) for s, v in per_second.items()}
            synchronize(device)
    return time.perf_counter() - start, frames


def _warm_up(clip, model, options, placement) -> None:
    from itertools import islice

    producer = make_producer(model.config, options, placement)
    labeler = Labeler(model, options, placement, [clip], deliver=lambda done: None, progress=lambda event: None)
    with producer.detector() as detector:
        stream = producer.clip_events(0, clip, detector)
        events = list(islice(stream, 1 + -(-WARMUP_SAMPLES // SAMPLES_PER_EVENT)))
        stream.close()
    if isinstance(events[-1], (ClipEnded, ClipFailed)):
        events = events[:-1]
    feed(events + [ClipEnded(0)], labeler)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _setup(model, device, options, clips, infos) -> dict:
    import torch

    from ..nets.engines import engine_of
    from .schedules import workers

    return {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "model": getattr(model, "source", "?"),
        "arch": model.config.arch,
        "fps": model.config.fps,
        "batch_size": options.batch_size,
        "reuse_boxes": options.reuse_boxes,
        "precision": options.precision,
        "engine": engine_of(model),
        "decoder": options.decoder,
        "workers": f"ray {options.ray}" if options.ray else workers(options, device, len(clips)),
        "clips": len(clips),
        "sizes": sorted({f"{i.width}x{i.height}" for i in infos}),
    }

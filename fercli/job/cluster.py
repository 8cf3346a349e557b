"""`fer annotate --ray`: the same pipeline as a Ray Data job, on a cluster or a local instance.

A third schedule beside `schedules.run_in_thread` and `schedules.run_in_workers`, built from the same
stage functions (`stages`); `annotate()` still owns the writer, resume, errors and metadata.

    clips -> map (CPU tasks: decode + faces, `clip_samples`) -> one record per clip
          -> map_batches (model actors, one `Labeler` each; one actor per GPU) -> rows per clip
          -> the driver, which hands each clip to `labeler.on_clip` as the local schedules do

A clip travels as one record because its windows need its samples in order, and Ray Data sends
records to any actor in any order. A record holds the clip's face crops, about 0.75 MB per face
per second of video (5 samples/s x 150 kB): a few MB for a typical clip. Ray's object store
spills to disk, so an hour-long recording (~2.7 GB) works but is better split first.

The model is loaded once, on the driver, and its weights reach the actors through the object
store: the workers need fer installed and the videos at the same path, not the weights file.

A worker process that dies (a decoder crashing, the OOM killer, a node lost) loses the clips it
held; once the job is done, those are run again in a second one, each clip alone on a model
actor, and a clip lost twice is reported as failed (RETRIES).
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import FerError, first_line
from ..media.inputs import Clip
from .contract import ProgressEvent, VideoResult
from .stages import NO_CLOCK, Labeler, StageClock, clip_error, clip_samples, merge_clock

log = logging.getLogger("fercli")

INSTALL_HINT = "--ray needs Ray Data: pip install 'fercli[ray]' (on this machine and on every node of the cluster)"
CLIPS_PER_CALL = 4  # clips a model actor takes at once, so its backbone batches span clips
# On a CPU-only cluster the backbone is ~85% of the work (`fer benchmark speed`): model actors
# get this share of the cores and decode/face tasks the rest, at least one core (as many tasks
# at once as cores are left; see `_Job._dataset`).
CPU_MODEL_SHARE = 0.75
# Lost clips: a worker process that dies (a decoder crashing on a hostile file, the OOM killer,
# a node going away) loses the clip it was decoding, or the clips its model actor held. Ray's own
# retries would send such a batch again as it was, so a poisoned clip would take its batch-mates
# down with it, and by default they go on forever. Ray retries nothing here (`max_errored_blocks`
# below lets the job go on without a lost record); the clips that did not come back are run
# again afterwards, this many times, each alone on its model actor.
RETRIES = 1
LOST = "lost on the Ray cluster: the process decoding or labelling it died, twice (see the Ray logs)"  # 1 + RETRIES


def import_ray():
    """Ray and Ray Data, or a FerError that says how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401  (a bare `ray` install lacks Data's dependencies)
    except ImportError:
        raise FerError(INSTALL_HINT) from None
    return ray


def run_on_ray(
    clips: list[Clip], labeler: Labeler, options, device, clock, address: str | None = None, requested: str = "auto"
) -> None:
    """Annotate `clips` on Ray; each finished clip goes to `labeler.on_clip`, as in the local schedules.

    `address` (default `options.ray`): "local" starts a Ray instance on this machine for the run,
    "auto" joins the cluster this machine belongs to, "HOST:PORT" the one whose head is there. A
    Ray the caller already started in this process (`ray.init(...)`) is used as it is. `device` is
    the driver's; the actors run on the cluster's GPUs unless `requested` (the --device asked for) is "cpu".
    """
    ray = import_ray()
    if not clips:
        return
    # `options.precision` was settled for this machine's device by pipeline.annotate, and the
    # table's metadata records it: the actors use that one, not their own "auto".
    with _connected(ray, address or options.ray or "local"), _data_settings():
        resources = ray.cluster_resources()
        actors, remote_args, actor_device = _model_pool(resources, requested)
        decoders = max(1, int(resources.get("CPU", 0)) - actors)  # the cores the model actors leave
        log.info("ray: %d clips, %d model actor(s) on %s, %d decoding", len(clips), actors, actor_device, decoders)
        weights = ray.put(_portable(labeler.model))  # once, shared by every actor on every node
        job = _Job(clips, labeler, clock, weights, options, actors, remote_args, actor_device, decoders)
        for key in job.run_with_retries(ray):
            labeler.fail(key, clips[key], f"{clips[key].path}: {LOST}")


@dataclass
class _Job:
    """What every pass over the clips shares: the driver's side and the model pool's settings."""

    clips: list
    labeler: Labeler
    clock: object
    weights: object  # ObjectRef of `_portable(model)`
    options: object
    actors: int
    remote_args: dict
    actor_device: str
    decoders: int  # decode tasks at once

    def run_with_retries(self, ray) -> list[int]:
        """Every clip through Ray Data, the lost ones again (RETRIES); the keys still lost."""
        todo = self.run(ray, list(range(len(self.clips))))
        for _ in range(RETRIES):
            if not todo:
                break
            log.warning("ray: %d clip(s) lost with the process that held them; trying each once more", len(todo))
            todo = self.run(ray, todo, alone=True)
        return todo

    def run(self, ray, keys: list[int], alone: bool = False) -> list[int]:
        """One Ray Data job over `keys`; each clip back goes to `on_clip`. Returns the keys lost.

        `alone`: each clip the only one its model actor holds (one per call, one call in flight),
        so a clip that kills its actor again takes no other clip down with it.
        """
        returned = set()
        try:
            for row in self._dataset(ray, keys, alone).iter_rows():
                returned.add(row["key"])
                _finish(self.clips[row["key"]], row["labelled"], self.labeler, self.clock)
        except ray.exceptions.RayError as e:
            raise FerError(f"ray: {type(e).__name__}: {first_line(e)}") from None
        return [key for key in keys if key not in returned]

    def _dataset(self, ray, keys: list[int], alone: bool):
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        timed = isinstance(self.clock, StageClock)
        items = [_item(key, self.clips[key]) for key in keys]
        per_call = 1 if alone else CLIPS_PER_CALL
        size = min(self.actors, -(-len(keys) // per_call))  # no idle actors on a short pass
        compute = ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1 if alone else None)
        # Decode tasks are counted, not given cores: when a node goes, Ray restarts its model
        # actors on the cores left, and decode tasks that needed a core of their own could find
        # none and wait for ever (measured: two 2-CPU nodes, one removed mid-run).
        decoding = TaskPoolStrategy(size=min(self.decoders, len(keys)))
        actor_args = {"weights": [self.weights], "options": self.options, "device": self.actor_device, "timed": timed}
        decode_args = {"cfg": self.labeler.model.config, "options": self.options, "timed": timed}
        with warnings.catch_warnings():
            # Retry limits are still passed as plain Ray remote arguments, deprecated since Ray
            # 2.60 with nothing named to replace them yet (hence the extra's upper bound). They,
            # and the decode tasks' num_cpus=0, also keep Ray Data from fusing the decode tasks
            # into the model actors on a CPU-only cluster, which would serialise decoding and the
            # model again.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
            return (
                ray.data.from_items(items, override_num_blocks=len(items))  # a block, so a task, per clip
                .map(_decode, fn_kwargs=decode_args, compute=decoding, num_cpus=0, max_retries=0)
                .map_batches(
                    _ModelActor,
                    fn_constructor_kwargs=actor_args,
                    batch_size=per_call,
                    batch_format="pandas",
                    compute=compute,
                    max_task_retries=0,  # a dead actor is still replaced (Ray Data's max_restarts=-1)
                    **self.remote_args,
                )
            )


def _item(key: int, clip: Clip) -> dict:
    """A clip as a Ray Data record: what a decode task needs to open it."""
    return {"key": key, "path": str(clip.path), "name": clip.name, "frames": clip.frames}


@dataclass
class _Decoded:
    """A CPU task's output: a whole clip's samples, or why it could not be read."""

    clip: Clip
    info: object | None  # decode.VideoInfo
    samples: list  # SampleCrops, in order
    error: str | None
    seconds: float  # wall time of the task
    clock: tuple | None  # StageClock (seconds, items) when timed


@dataclass
class _Labelled:
    """A model actor's output for one clip: what `on_clip` takes."""

    result: VideoResult
    rows: list | None  # None when it failed
    clock: tuple | None


def _finish(clip: Clip, done: _Labelled, labeler: Labeler, clock) -> None:
    """On the driver: one clip's outcome to `on_clip`, with the progress events of a local run."""
    merge_clock(clock, done.clock)
    labeler.emit(ProgressEvent("start", clip.name))
    labeler.on_clip(done.result, done.rows)
    labeler.emit(ProgressEvent("done", clip.name, result=done.result))


@contextmanager
def _connected(ray, address: str):
    if ray.is_initialized():  # the caller's own Ray session: use it, leave it running
        yield
        return
    verbose = log.isEnabledFor(logging.DEBUG)
    try:  # Ray's notices and the workers' output (LiteRT's chatter) only with --verbose
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.ERROR,
        )
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise FerError(f"--ray {address}: cannot start or join a Ray cluster ({first_line(e)})") from None
    try:
        yield
    finally:
        ray.shutdown()


def _model_pool(resources: dict, device: str) -> tuple[int, dict, str]:
    """How many model actors, their Ray remote arguments, and the device they run on."""
    gpus = int(resources.get("GPU", 0))
    if gpus and device != "cpu":
        return gpus, {"num_gpus": 1, "num_cpus": 1}, "cuda"
    if device.startswith("cuda"):  # "cuda:1" too: a GPU asked for is never replaced by the CPU
        raise FerError(f"--device {device}: the Ray cluster has no GPUs (use --device auto or cpu)")
    cpus = int(resources.get("CPU", 0))
    if cpus < 2:  # an actor holds its core for the whole job; the decode tasks need another
        raise FerError(f"--ray: the cluster has {cpus} CPU; decoding and the model need at least 2")
    return max(1, min(int(cpus * CPU_MODEL_SHARE), cpus - 1)), {"num_cpus": 1}, "cpu"


@contextmanager
def _data_settings():
    """Ray Data settings for this run, put back afterwards for the caller's own datasets."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    settings = {
        "max_errored_blocks": -1,  # a lost record is a clip to run again (RETRIES), not the end of the job
        "enable_progress_bars": False,  # fer shows its own progress
    }
    saved = {name: getattr(ctx, name) for name in settings}
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    for name, value in settings.items():
        setattr(ctx, name, value)
    if not log.isEnabledFor(logging.DEBUG):  # Ray Data's notes on its own stages, only with --verbose
        data_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)
        data_log.setLevel(level)


# -- CPU tasks: decode and crop with the library's producer. ------------------------------------

_detector = None  # one FaceDetector per worker process, kept for every clip it decodes


def _decode(item: dict, cfg, options, timed: bool) -> dict:
    global _detector
    from ..core.runtime import keep_freed_memory
    from ..media.faces import FaceDetector

    keep_freed_memory()  # once per worker process, like annotate does for its own
    clip = Clip(Path(item["path"]), item["name"], item["frames"])
    clock = StageClock() if timed else NO_CLOCK
    start = time.perf_counter()
    info, samples, error = None, [], None
    try:
        if _detector is None:
            _detector = FaceDetector()
        stream = clip_samples(clip, cfg, options, _detector, "cpu", clock)
        info = next(stream)
        samples = list(stream)
    except Exception as e:  # one bad clip must not stop the job: it becomes its error
        info, samples, error = None, [], clip_error(clip, e)
    decoded = _Decoded(clip, info, samples, error, time.perf_counter() - start, _clock_payload(clock))
    return {"key": item["key"], "decoded": decoded}


# -- model actors: a Labeler each, fed whole clips. ---------------------------------------------


class _ModelActor:
    """Backbone and temporal head for a few clips at a time, through the library's Labeler."""

    def __init__(self, weights: list, options, device: str, timed: bool):
        import ray
        import torch

        from ..core.runtime import keep_freed_memory
        from ..nets.model import model_from_checkpoint

        keep_freed_memory()
        ckpt = ray.get(weights[0])
        self.device = torch.device(device)  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        model = model_from_checkpoint(ckpt, ckpt["source"])
        model.source, model.weights_sha256 = ckpt["source"], ckpt["weights_sha256"]
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.options, self.timed = options, timed

    def __call__(self, batch):
        import pandas as pd

        clock = StageClock(self.device) if self.timed else NO_CLOCK
        jobs = [(int(key), d) for key, d in zip(batch["key"], batch["decoded"])]
        done = self._label(jobs, clock)
        out = []
        for i, (key, d) in enumerate(jobs):
            vr, rows = done[d.clip.name]
            vr.elapsed += d.seconds  # the CPU task's decoding and faces
            clocks = [d.clock, _clock_payload(clock) if i == 0 else None]  # the batch's model time, once
            out.append({"key": key, "labelled": _Labelled(vr, rows, _sum_clocks(clocks))})
        return pd.DataFrame(out)

    def _label(self, jobs: list, clock) -> dict:
        """video -> (VideoResult, rows) for every clip in `jobs`, as `schedules.run_in_thread` would give them."""
        done: dict = {}
        on_clip = lambda vr, rows: done.update({vr.video: (vr, rows)})  # noqa: E731
        labeler = Labeler(self.model, self.options, self.device, clock, _ignore, on_clip)
        started = []
        for key, d in jobs:
            if d.error is not None:
                labeler.fail(key, d.clip, d.error)
                continue
            try:  # a clip that fails is reported, the others go on
                labeler.start(key, d.clip, d.info)
                for sample in d.samples:
                    labeler.add(key, sample)
                started.append((key, d))
            except Exception as e:
                labeler.fail(key, d.clip, clip_error(d.clip, e))
        for key, d in started:  # ended together: one clip's last partial batch fills with the next's samples
            try:
                labeler.end(key)
            except Exception as e:
                labeler.fail(key, d.clip, clip_error(d.clip, e))
        return done


def _ignore(event) -> None:
    """Progress inside an actor goes nowhere; the driver reports each clip as it arrives."""


def _portable(model) -> dict:
    """What an actor needs to rebuild `model`: a fer checkpoint dict, tensors on the CPU."""
    return {
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "source": getattr(model, "source", "model"),
        "weights_sha256": getattr(model, "weights_sha256", None),
    }


def _clock_payload(clock) -> tuple | None:
    return (dict(clock.seconds), dict(clock.items)) if isinstance(clock, StageClock) else None


def _sum_clocks(payloads) -> tuple | None:
    payloads = [p for p in payloads if p]
    if not payloads:
        return None
    total = StageClock()
    for p in payloads:
        merge_clock(total, p)
    return dict(total.seconds), dict(total.items)

"""`fer annotate --ray`: the same pipeline as a Ray Data job, on a cluster or a local instance.

A third schedule beside `schedules.run_in_thread` and `schedules.run_in_workers`, built from the same
stages; `annotate()` still owns the writer, resume, errors and metadata.

    clips -> map (CPU tasks: the run's `Producer`) -> one record of events per clip
          -> map_batches (model actors, each feeding a `Labeler` with `events.feed`; one per GPU)
          -> the driver, which passes each finished clip on (`Labeler.hand_on`)

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
from .events import ClipEnded, ClipFailed, feed
from .stages import NO_CLOCK, RETRIES, ClipLabelled, ClipWatch, Labeler, Producer, StageClock, tries

log = logging.getLogger("fercli")

INSTALL_HINT = "--ray needs Ray Data: pip install 'fercli[ray]' (on this machine and on every node of the cluster)"
CLIPS_PER_CALL = 4  # clips a model actor takes at once, so its backbone batches span clips
# On a CPU-only cluster the backbone is ~85% of the work (`fer benchmark speed`): model actors
# get this share of the cores and decode/face tasks the rest, at least one core (as many tasks
# at once as cores are left; see `_Job._dataset`).
CPU_MODEL_SHARE = 0.75
# A worker process that dies (a decoder crashing, the OOM killer, a node going away) loses the
# clips it held. Ray's own retries would send such a batch again as it was, so a poisoned clip
# would take its batch-mates down with it: Ray retries nothing here, and the clips that did not
# come back are run again afterwards (stages.RETRIES), each alone on its model actor.
LOST = (
    "lost on the Ray cluster: the process decoding or labelling it died or stalled, "
    f"{tries(1 + RETRIES)} (see the Ray logs)"
)
WATCH_S = 1.0  # s; how often a decode task looks whether its producer has stalled


def import_ray():
    """Ray and Ray Data, or a FerError that says how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401  (a bare `ray` install lacks Data's dependencies)
    except ImportError:
        raise FerError(INSTALL_HINT) from None
    return ray


def run_on_ray(
    clips: list[Clip], labeler: Labeler, producer: Producer, address: str | None = None, requested: str = "auto"
) -> None:
    """Annotate `clips` on Ray; each finished clip goes on through `labeler`, as in the local schedules.

    `address` (default the run's --ray): "local" starts a Ray instance on this machine for the run,
    "auto" joins the cluster this machine belongs to, "HOST:PORT" the one whose head is there. A
    Ray the caller already started in this process (`ray.init(...)`) is used as it is. The actors
    run on the cluster's GPUs unless `requested` (the --device asked for) is "cpu".
    """
    ray = import_ray()
    if not clips:
        return
    options = producer.options  # its precision was settled by pipeline.annotate: the actors use it
    with _connected(ray, address or options.ray or "local"), _data_settings():
        resources = ray.cluster_resources()
        actors, remote_args, actor_device = _model_pool(resources, requested)
        decoders = max(1, int(resources.get("CPU", 0)) - actors)  # the cores the model actors leave
        log.info("ray: %d clips, %d model actor(s) on %s, %d decoding", len(clips), actors, actor_device, decoders)
        weights = ray.put(_checkpoint_of(labeler.model))  # once, shared by every actor on every node
        job = _Job(clips, labeler, producer, weights, actors, remote_args, actor_device, decoders)
        for key in job.run_with_retries(ray):
            labeler.receive(ClipFailed(key, f"{clips[key].path}: {LOST}"))


@dataclass
class _Job:
    """What every pass over the clips shares: the driver's side and the model pool's settings."""

    clips: list
    labeler: Labeler
    producer: Producer
    weights: object  # ObjectRef of `_checkpoint_of(model)`
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
        """One Ray Data job over `keys`; each clip back goes on. Returns the keys lost.

        `alone`: each clip the only one its model actor holds (one per call, one call in flight),
        so a clip that kills its actor again takes no other clip down with it.
        """
        returned = set()
        try:
            for row in self._dataset(ray, keys, alone).iter_rows():
                returned.add(row["key"])
                self.labeler.hand_on(row["labelled"], row["timing"])
        except ray.exceptions.RayError as e:
            raise FerError(f"ray: {type(e).__name__}: {first_line(e)}") from None
        return [key for key in keys if key not in returned]

    def _dataset(self, ray, keys: list[int], alone: bool):
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        items = [_item(key, self.clips[key]) for key in keys]
        per_call = 1 if alone else CLIPS_PER_CALL
        size = min(self.actors, -(-len(keys) // per_call))  # no idle actors on a short pass
        compute = ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1 if alone else None)
        # Decode tasks are counted, not given cores: when a node goes, Ray restarts its model
        # actors on the cores left, and decode tasks that needed a core of their own could find
        # none and wait for ever.
        decoding = TaskPoolStrategy(size=min(self.decoders, len(keys)))
        actor_args = {
            "weights": [self.weights],
            "options": self.producer.options,
            "device": self.actor_device,
            "timed": self.producer.timed,
            "identity": self.producer.identity,
        }
        with warnings.catch_warnings():
            # Retry limits are plain Ray remote arguments, deprecated since Ray 2.60 with nothing
            # named to replace them yet (hence the extra's upper bound). They, and the decode
            # tasks' num_cpus=0, also keep Ray Data from fusing decoding into the model actors.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
            return (
                ray.data.from_items(items, override_num_blocks=len(items))  # a block, so a task, per clip
                .map(_decode, fn_kwargs={"producer": self.producer}, compute=decoding, num_cpus=0, max_retries=0)
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


# -- CPU tasks: the run's producer, one clip each. ---------------------------------------------

_detector = None  # one detector per worker process, kept for every clip it decodes


def _decode(item: dict, producer: Producer) -> dict:
    """A clip's events, all of them; a task whose producer stalls ends its own process (lost)."""
    global _detector
    from ..core.runtime import keep_freed_memory

    keep_freed_memory()  # once per worker process, like annotate does for its own
    clip = Clip(Path(item["path"]), item["name"], item["frames"])
    if _detector is None:
        _detector = producer.detector()
    watch = ClipWatch()
    watch.begin(item["key"])
    start = time.perf_counter()
    with _watchdog(watch):
        events = []
        for event in producer.clip_events(item["key"], clip, _detector):
            watch.heard(event)
            events.append(event)
    return {"key": item["key"], "clip": clip, "events": events, "seconds": time.perf_counter() - start}


@contextmanager
def _watchdog(watch: ClipWatch):
    """Kills this worker process if `watch` stalls: Ray loses the record, and the clip is retried."""
    import os
    import signal
    import threading

    done = threading.Event()

    def guard() -> None:
        while not done.wait(WATCH_S):
            if watch.stalled:
                log.error("ray: %s; ending this worker process", watch.why())
                os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=guard, name="fer-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


# -- model actors: a Labeler each, fed whole clips. ---------------------------------------------


class _ModelActor:
    """Backbone and temporal head for a few clips at a time, through the library's Labeler."""

    def __init__(self, weights: list, options, device: str, timed: bool, identity=None):
        import ray
        import torch

        from ..core.runtime import keep_freed_memory
        from ..nets.engines import Placement
        from ..nets.model import model_from_checkpoint

        keep_freed_memory()
        ckpt = ray.get(weights[0])
        device = torch.device(device)  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        model = model_from_checkpoint(ckpt, ckpt["source"])
        model.source, model.weights_sha256 = ckpt["source"], ckpt["weights_sha256"]
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        self.placement = Placement("torch", device, options.precision)
        self.options, self.timed, self.identity = options, timed, identity

    def __call__(self, batch):
        import pandas as pd

        clock = StageClock(self.placement.device) if self.timed else NO_CLOCK
        keys = [int(key) for key in batch["key"]]
        clips = dict(zip(keys, batch["clip"]))
        done: dict[str, ClipLabelled] = {}
        labeler = Labeler(
            self.model,
            self.options,
            self.placement,
            clips,
            lambda d: done.update({d.result.video: d}),
            _ignore,
            clock,
            self.identity,
        )
        feed(_batch_events(batch["events"]), labeler)
        timing = clock.timing.frozen() if self.timed else None
        out = []
        for i, (key, seconds) in enumerate(zip(keys, batch["seconds"])):  # the batch's time once, with its first clip
            labelled = done[clips[key].name]
            labelled.result.elapsed += float(seconds)  # the CPU task's decoding and faces
            out.append({"key": key, "labelled": labelled, "timing": timing if i == 0 else None})
        return pd.DataFrame(out)


def _batch_events(per_clip) -> list:
    """The clips' events with every ending last: one clip's last partial backbone batch fills
    with the next clip's samples."""
    events = [e for clip_events in per_clip for e in clip_events]
    ends = [e for e in events if isinstance(e, (ClipEnded, ClipFailed))]
    return [e for e in events if not isinstance(e, (ClipEnded, ClipFailed))] + ends


def _ignore(event) -> None:
    """Progress inside an actor goes nowhere; the driver reports each clip as it arrives."""


def _checkpoint_of(model) -> dict:
    """What an actor needs to rebuild `model`: a fer checkpoint dict, tensors on the CPU."""
    return {
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "source": getattr(model, "source", "model"),
        "weights_sha256": getattr(model, "weights_sha256", None),
    }

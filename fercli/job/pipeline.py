"""The annotation job: clips in, one table of per-second valence/arousal out.

Data flows one way: inputs -> decode (sampled frames) -> faces (track, crop) -> model.encode
(batched, once per sample) -> windows (per-second units) -> model head -> rows -> writers. The
stages live in `stages`; `annotate` picks where they run (a schedule) and owns the table: the
writer, resume, the errors file and the metadata.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..core.errors import DataError, FerError
from ..media.inputs import Clip, find_clips
from .contract import AnnotateOptions, AnnotateResult, ProgressEvent, VideoResult
from .stages import NO_CLOCK, ClipLabelled, Labeler, Producer, StageClock, has_expressions, is_timed

log = logging.getLogger("fercli")

__all__ = ["annotate", "run_metadata", "AnnotateOptions", "AnnotateResult", "ProgressEvent", "VideoResult"]


def annotate(
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    model="hsemotion",
    device=None,
    options: AnnotateOptions | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    clock: StageClock | None = None,
) -> AnnotateResult:
    """Annotate every clip under `paths` into the table `out` (.parquet or .csv).

    model: a registry name ("hsemotion", the default), a checkpoint path, or a loaded network
    (`load_model`). device: "auto", "cpu", "cuda", "cuda:N" or a torch.device; by default the
    loaded network's own device, else "auto". A clip that fails is reported in the result and in
    `<out name>.errors.csv`; the others go on. An existing `out` needs `options.resume` or
    `options.overwrite`. Process-wide tuning (OpenMP spinning, glibc's freed memory) is left
    to the program: see `fercli.core.runtime.tune_process`.
    """
    from ..core.files import OutputLock
    from ..nets.engines import asked_engine, engine_of, place
    from ..nets.faceid import resolve_identity
    from ..nets.model import load_placed
    from ..tables.writers import check_output

    options = options or AnnotateOptions()
    emit = progress or (lambda event: None)
    clock = clock or NO_CLOCK
    out = Path(out)
    options.rows  # noqa: B018  (refuses --per-frame with --per-sample before any work)
    check_output(out, resume=options.resume, overwrite=options.overwrite)  # before any work
    loaded = not isinstance(model, (str, Path))
    requested = device if device is not None else (None if loaded else "auto")
    if options.ray:
        from .cluster import import_ray

        import_ray()  # says how to install Ray before any output is touched
    inputs = find_clips(paths)
    if inputs.missing:
        raise FerError(f"{inputs.missing[0]}: no such file or folder")
    engine = asked_engine(options.engine) or (engine_of(model) if loaded else None)
    if loaded and engine != engine_of(model):
        raise FerError(
            f"the network passed in runs on {engine_of(model)}, not {engine}: load it "
            f"with load_model(..., engine={engine!r})"
        )
    # The one place a run's engine, device and precision are settled: the model, the stages, the
    # schedules and the table's metadata read them from here on.
    placement = place(
        engine, _network_device(model) if requested is None else requested, options.precision, options.ray
    )
    if loaded:
        model = model.to(placement.device)
    else:
        emit(ProgressEvent("model"))
        name = str(model)
        on_bytes = lambda done, total: emit(ProgressEvent("download", name, done, total or 0))  # noqa: E731
        model = load_placed(model, placement, on_bytes)
        placement = replace(placement, engine=engine_of(model))  # torch where a default OpenVINO gave way
    options = replace(
        options, engine=placement.engine, precision=placement.precision, decoder=settle_decoder(options, placement)
    )
    identity = resolve_identity(
        options.identity, progress=lambda done, total: emit(ProgressEvent("download", "identity", done, total or 0))
    )
    with OutputLock(out):  # one run at a time writes `out`, its parts and its errors file
        return _annotate_into(out, model, options, placement, identity, requested, inputs, clock, emit)


def _annotate_into(out, model, options, placement, identity, requested, inputs, clock, emit) -> AnnotateResult:
    from ..tables.intervals import load_for_run
    from ..tables.writers import TableWriter, write_errors

    metadata, calibration = {**run_metadata(model, options, placement.device), "identity": identity.describe()}, None
    if options.calibration is not None:  # refused before any work when made for another model
        calibration, metadata = load_for_run(options.calibration, metadata, out)
    writer = TableWriter(
        out,
        metadata,
        rows=options.rows,
        all_faces=options.all_faces,
        resume=options.resume,
        overwrite=options.overwrite,
        expressions=has_expressions(model),
        intervals=calibration is not None,
    )
    done = writer.done() if options.resume else set()
    earlier = _earlier_errors(out, inputs.clips) if options.resume else []
    result = AnnotateResult(out, skipped_files=inputs.skipped, engine=options.engine)
    todo = []
    for clip in _unique(inputs.clips, result):
        if clip.name in done:
            result.videos.append(VideoResult(clip.name, resumed=True))
        else:
            todo.append(clip)
    producer = make_producer(model.config, options, placement, is_timed(clock), identity)
    boxes: list = []
    store = lambda done: _store(done, writer, clock, result, calibration, boxes)  # noqa: E731
    labeler = Labeler(model, options, placement, todo, store, emit, clock, identity)
    ended = False
    try:
        _run_schedule(todo, labeler, producer, options, placement.device, requested)
        ended = True
    finally:  # also on Ctrl-C: keep what finished, in a whole file
        if not ended and options.overwrite and out.exists():
            # An interrupted --overwrite leaves the table it was to replace as it was: only a
            # finished run swaps in its table. Its finished videos wait in the parts (--resume).
            log.warning("%s: interrupted, left as it was; this run's finished videos are in %s", out, writer.parts)
        else:
            if result.videos or not out.exists():
                with clock.stage("write"):
                    result.rows = writer.finish([c.name for c in inputs.clips])
                    _write_boxes(out, boxes, done, options)
            errors = earlier + [(v.video, v.error) for v in result.videos if v.error]
            result.errors_file = write_errors(out, errors)
    return result


def _earlier_errors(out: Path, clips) -> list[tuple[str, str]]:
    """The resumed table's failed videos that this run does not list: their record stays (the
    errors file is all that says why they are not in the table). Listed ones are tried again."""
    from ..tables.writers import read_errors

    listed = {c.name for c in clips}
    try:
        return [(video, error) for video, error in read_errors(out) if video not in listed]
    except DataError:  # not an errors file of fer's: write_errors leaves it, or says so
        return []


def settle_decoder(options: AnnotateOptions, placement) -> str:
    """--decoder settled for the run's device: "gpu" only where the model runs on a GPU that decodes."""
    from ..core.devices import check_decoder, resolve_decoder

    check_decoder(options.decoder)
    if options.ray or options.per_frame:  # Ray's decode tasks and per-frame rows read on the CPU
        if options.decoder == "gpu":
            raise FerError(
                f"--decoder gpu: not with {'--ray' if options.ray else '--per-frame'} (use --decoder auto or cpu)"
            )
        return "cpu"
    return resolve_decoder(options.decoder, placement.device)


def make_producer(config, options: AnnotateOptions, placement, timed: bool = False, identity=None) -> Producer:
    """The run's producer: on the model's GPU where clips are decoded there, else on the CPU."""
    if options.decoder == "gpu":
        from .devicepath import DeviceProducer, device_detector_for

        detector = device_detector_for(placement)
        return DeviceProducer(config, options, placement, timed, detector=detector, identity=identity)
    return Producer(config, options, placement, timed, identity=identity)


def _write_boxes(out: Path, boxes: list, resumed: set, options: AnnotateOptions) -> None:
    """The boxes sidecar beside `out`: this run's clips, and the resumed ones' rows as they were."""
    from ..tables.boxes import boxes_path, read_boxes, write_boxes

    if options.per_frame:
        return
    path = boxes_path(out)
    kept = []
    if resumed and path.exists():
        try:
            earlier = read_boxes(path)
            kept = earlier[earlier.video.isin(resumed)].to_dict("records")
        except DataError as e:  # a damaged sidecar costs the resumed clips' per-person overlay only
            log.warning("%s", e)
    write_boxes(path, kept + boxes)


def _run_schedule(clips, labeler, producer, options: AnnotateOptions, device, requested) -> None:
    """Run the producers where the options say: Ray, worker processes, or a thread beside the model.

    `requested` is the --device asked for: Ray places its model actors by it. Each schedule only
    moves the producers' events to the Labeler (`events.feed`); Ray is an optional extra.
    """
    from .schedules import run_in_thread, run_in_workers, workers

    if options.ray:
        from .cluster import run_on_ray

        run_on_ray(clips, labeler, producer, requested=str(requested or device.type))
    elif options.decoder == "gpu":  # CUDA work stays in this process: a thread per NVDEC session
        from .devicepath import PRODUCER_THREADS

        run_in_thread(clips, labeler, producer, min(PRODUCER_THREADS, len(clips)))
    elif n := workers(options, device, len(clips)):
        run_in_workers(clips, labeler, producer, n)
    else:
        run_in_thread(clips, labeler, producer)


def _network_device(model):
    import torch

    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _unique(clips: list[Clip], result: AnnotateResult) -> Iterator[Clip]:
    seen: set[str] = set()
    for clip in clips:
        if clip.name in seen:
            msg = f"{clip.path}: another input already gives a video named {clip.name!r}; annotate it separately"
            result.videos.append(VideoResult(clip.name, error=msg))
            continue
        seen.add(clip.name)
        yield clip


def _store(done: ClipLabelled, writer, clock, result: AnnotateResult, calibration=None, boxes=None) -> None:
    from ..tables.intervals import with_intervals

    if boxes is not None and done.rows is not None:
        boxes += done.boxes
    vr, rows = done.result, done.rows
    if rows is not None and calibration is not None:
        rows = with_intervals(rows, calibration)
    if rows is not None:
        with clock.stage("write"):
            vr.rows = writer.add(vr.video, rows)
        vr.face_rows = sum(r["face"] for r in rows)
    if vr.error:
        log.error(vr.error)
    result.videos.append(vr)


def _engine_version(engine: str) -> str:
    import importlib.metadata

    return f"{engine} {importlib.metadata.version(engine)}"


def run_metadata(model, options: AnnotateOptions, device) -> dict:
    """What the output's Parquet metadata records about the run."""
    from .. import __version__
    from ..nets.engines import engine_of

    cfg = model.config
    return {
        "fer_version": __version__,
        "model": getattr(model, "source", type(model).__name__),
        "arch": cfg.arch,
        "weights_sha256": getattr(model, "weights_sha256", None),
        "fps": cfg.fps,
        "window": cfg.window,
        "per_frame": options.per_frame,
        "per_sample": options.per_sample,
        "all_faces": options.all_faces,
        "precision": options.precision,
        "decoder": options.decoder,
        "engine": _engine_version(engine_of(model)),
        "frames_fps": options.frames_fps,
        "preprocess": cfg.to_dict()["preprocess"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

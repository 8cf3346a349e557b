"""Where the stages run: decode and detect in a thread beside the model, or in worker processes.

Both schedules run the same producer (`stages.produce_clips`) and consumer (`stages.Labeler`)
and speak the same messages (see `stages`); `cluster` is the third schedule, on Ray.
"""

from __future__ import annotations

import os

from .errors import FerError
from .inputs import Clip
from .options import AnnotateOptions
from .stages import Labeler, is_timed, merge_clock, produce_clips

MAX_WORKERS = 8  # decode/face worker processes at most
STOP_JOIN_S = 5.0  # seconds to wait for the decoding thread to notice a stop
CPU_CORES_PER_WORKER = 4  # on a CPU-only run, one worker per this many cores (none below it)
QUEUE_CHUNKS = 4  # messages in flight per worker: bounds memory whatever the video length


def run_in_thread(clips: list[Clip], labeler: Labeler, options, device, clock) -> None:
    """Decode and detect in a thread while this one runs the model, so the stages overlap.

    PyAV, LiteRT and torch release the GIL in their native code. Measured on 2 cores
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
            produce_clips(enumerate(clips), put, labeler.model.config, options, device.type, is_timed(clock))
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
        consume(results, clips, labeler, clock, 1, [thread])
    finally:  # also on Ctrl-C or a model error: stop the producer before returning
        stop.set()
        thread.join(timeout=STOP_JOIN_S)


def workers(options: AnnotateOptions, device, n_clips: int) -> int:
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


def run_in_workers(clips: list[Clip], labeler: Labeler, options, device, clock) -> None:
    import multiprocessing as mp

    n = workers(options, device, len(clips))
    ctx = mp.get_context("spawn")  # fork after torch and LiteRT threads start is unsafe
    tasks, results, drained = ctx.Queue(), ctx.Queue(maxsize=QUEUE_CHUNKS * n), ctx.Event()
    timed = is_timed(clock)
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
        consume(results, clips, labeler, clock, n, procs)
        drained.set()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=5)


def consume(results, clips, labeler: Labeler, clock, n_producers: int, producers) -> None:
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
            merge_clock(clock, payload)
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
        produce_clips(iter(tasks.get, None), put, cfg, options, device_type, timed)
        _wait_until_read(results, drained)
    except (KeyboardInterrupt, BrokenPipeError):
        # Whatever is still buffered can never be read: exit without flushing it.
        results.cancel_join_thread()


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

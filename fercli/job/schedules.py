"""Where the stages run: decode and detect in a thread beside the model, or in worker processes.

Both schedules run the same producer (`stages.produce_clips`) and consumer (`stages.Labeler`)
and speak the same messages (see `stages`); `cluster` is the third schedule, on Ray.
"""

from __future__ import annotations

import logging
import os

from ..core.errors import FerError, typed_line
from ..media.inputs import Clip
from .contract import AnnotateOptions
from .stages import Labeler, is_timed, merge_clock, produce_clips

log = logging.getLogger("fercli")

MAX_WORKERS = 8  # decode/face worker processes at most
STOP_JOIN_S = 5.0  # seconds to wait for the decoding thread to notice a stop
CPU_CORES_PER_WORKER = 4  # on a CPU-only run, one worker per this many cores (none below it)
QUEUE_CHUNKS = 4  # messages in flight from the decoding thread: bounds memory whatever the video length
WORKER_CHECK_S = 1.0  # s; how often the consumer looks for worker processes that died
RETRIES = 1  # a clip whose worker died is tried this many more times, each on a fresh worker
IDLE_DEATHS = 3  # workers that may die between clips before the run stops (something kills them all)


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
    """Decode and detect in worker processes, each handed one clip at a time over its own pipe.

    A worker that dies (killed by the OOM killer, or a decoder crashing on a hostile file) is
    noticed within WORKER_CHECK_S: its clip is tried once more on a fresh worker, and a clip that
    kills its worker twice is reported as failed while the batch goes on. Each worker has its own
    pipe and nothing is shared between workers, so a killed one cannot leave a lock held.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork after torch and LiteRT threads start is unsafe
    pool = _Pool(ctx, (labeler.model.config, options, device.type, is_timed(clock)))
    for _ in range(workers(options, device, len(clips))):
        pool.spawn()
    try:
        _consume_workers(pool, clips, labeler, clock)
    finally:
        pool.close()


class _Worker:
    def __init__(self, process, conn, reserved=None):
        self.process, self.conn = process, conn
        self.current = None  # key of the clip it is working on
        self.reserved = reserved  # a clip retried after its worker died: this fresh worker's first
        self.closed = False  # its pipe reached end of file: the process is gone


class _Pool:
    """Worker processes, each with a duplex pipe: tasks go down, messages come up."""

    def __init__(self, ctx, args):
        self.ctx, self.args = ctx, args
        self.workers: list[_Worker] = []

    def spawn(self, reserved=None) -> None:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        process.start()
        child.close()  # the worker's end lives in the worker: our copy would hide its death
        self.workers.append(_Worker(process, parent, reserved))

    def retire(self, worker: _Worker) -> None:
        self.workers.remove(worker)
        worker.conn.close()
        worker.process.join(timeout=STOP_JOIN_S)

    def close(self) -> None:
        for worker in list(self.workers):
            if worker.process.is_alive():
                worker.process.terminate()
            self.retire(worker)


def _consume_workers(pool: _Pool, clips: list[Clip], labeler: Labeler, clock) -> None:
    from collections import Counter, deque
    from multiprocessing.connection import wait

    todo = deque(range(len(clips)))
    deaths: Counter = Counter()  # key -> workers it was in when they died (None: between clips)
    while pool.workers:
        wait([w.conn for w in pool.workers] + [w.process.sentinel for w in pool.workers], timeout=WORKER_CHECK_S)
        for worker in list(pool.workers):
            while not worker.closed and _readable(worker.conn):
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):  # its end is closed: it died (mid-message, perhaps)
                    worker.closed = True
                    break
                if _handle(message, worker, pool, todo, clips, labeler, clock):
                    break  # it said it is done
            if worker in pool.workers and worker.closed:
                worker.process.join(timeout=STOP_JOIN_S)  # reap it, for its exit code
                _lost(worker, pool, todo, deaths, clips, labeler)


def _readable(conn) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False


def _handle(message, worker: _Worker, pool: _Pool, todo, clips, labeler: Labeler, clock) -> bool:
    """Act on one message from a worker; True once the worker has finished, or is found dead."""
    if message[0] == "next":
        task = worker.reserved if worker.reserved is not None else (todo.popleft() if todo else None)
        worker.reserved, worker.current = None, task
        try:
            worker.conn.send(None if task is None else (task, clips[task]))
        except OSError:  # it died after asking (BrokenPipeError): the clip never reached it
            worker.reserved, worker.current, worker.closed = task, None, True
            return True
        return False
    kind = _dispatch(message, clips, labeler, clock)
    if kind in ("end", "error"):
        worker.current = None
    elif kind == "exit":
        pool.retire(worker)
        return True
    return False


def _lost(worker: _Worker, pool: _Pool, todo, deaths, clips, labeler: Labeler) -> None:
    """A worker died without saying it was done: retry its clip once on a fresh worker."""
    key = worker.current
    code = worker.process.exitcode
    pool.retire(worker)
    how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    if key is None:  # between clips: a fresh worker takes over the rest, a few times at most
        deaths[None] += 1
        if deaths[None] > IDLE_DEATHS:
            raise FerError(f"decoding worker processes keep dying between clips ({how}, {deaths[None]} times)")
        if todo or worker.reserved is not None:
            pool.spawn(reserved=worker.reserved)  # a clip it was given but never started is the fresh one's
        return
    labeler.discard(key)
    deaths[key] += 1
    if deaths[key] > RETRIES:
        log.warning("%s: the decoding process died again (%s); the clip is reported as failed", clips[key].path, how)
        labeler.fail(key, clips[key], f"{clips[key].path}: the decoding process died ({how}), twice")
        if todo:
            pool.spawn()
        return
    log.warning("%s: the decoding process died (%s); trying the clip once more in a new one", clips[key].path, how)
    pool.spawn(reserved=key)


def consume(results, clips, labeler: Labeler, clock, n_producers: int, producers) -> None:
    """Apply the producers' messages from a queue until each of them has said it is done."""
    import queue

    finished = 0
    while finished < n_producers:
        try:
            message = results.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in producers):
                raise FerError("decoding workers died unexpectedly") from None
            continue
        finished += _dispatch(message, clips, labeler, clock) == "exit"


def _dispatch(message, clips, labeler: Labeler, clock) -> str:
    """Apply one producer message (see `stages`) to the labeler; returns its kind."""
    kind, key, payload = message
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
    elif kind == "crash":
        raise payload
    return kind


def _worker(conn, cfg, options, device_type: str, timed: bool) -> None:
    """Worker process: asks for a clip, decodes, detects and crops it, sends its samples in small
    chunks, and asks again; a closed pipe means the parent is gone."""
    from ..core.runtime import keep_freed_memory

    keep_freed_memory()

    def tasks():
        while True:
            conn.send(("next", None, None))
            task = conn.recv()
            if task is None:
                return
            yield task

    try:
        produce_clips(tasks(), conn.send, cfg, options, device_type, timed)
    except (KeyboardInterrupt, BrokenPipeError, EOFError, ConnectionError):
        pass  # stopped, or the parent is gone: nobody is left to tell
    except BaseException as error:  # outside any clip (the detector would not start): the run's error
        try:
            conn.send(("crash", None, error))
        except Exception:  # unpicklable, or the parent is gone
            conn.send(("crash", None, FerError(f"a decoding worker failed: {typed_line(error)}")))

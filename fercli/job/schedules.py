"""Where the producers run on this machine: a thread beside the model, or worker processes.

Each schedule is a source of `events` for the one feed loop (`events.feed`) into the Labeler;
`cluster` is the third schedule, on Ray. A producer that dies or stops making progress
(`stages.clip_budget`) costs its clip one more try on a fresh producer (`stages.RETRIES`), then
the clip is reported as failed while the batch goes on.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from dataclasses import dataclass, field

from ..core.errors import FerError, typed_line
from ..media.inputs import Clip
from .contract import AnnotateOptions
from .events import ClipFailed, ClipLost, ProducerCrashed, ProducerDone, feed
from .stages import RETRIES, ClipWatch, Labeler, Producer, tries

log = logging.getLogger("fercli")

MAX_WORKERS = 8  # decode/face worker processes at most
STOP_JOIN_S = 5.0  # seconds to wait for a producer to notice a stop
CPU_CORES_PER_WORKER = 4  # on a CPU-only run, one worker per this many cores (none below it)
QUEUE_EVENTS = 4  # events in flight from a producer thread: bounds memory whatever the video length
POLL_S = 0.5  # s; how often a schedule looks for producers that died or stalled
IDLE_DEATHS = 3  # workers that may die between clips before the run stops (something kills them all)


@dataclass
class _Retries:
    """Clips whose producer died or stalled: each is tried RETRIES more times, then fails."""

    clips: list[Clip]
    losses: Counter = field(default_factory=Counter)

    def lost(self, key: int, how: str) -> ClipFailed | None:
        """None when the clip gets another try; else its failure."""
        self.losses[key] += 1
        path = self.clips[key].path
        if self.losses[key] > RETRIES:
            log.warning("%s: %s again; the clip is reported as failed", path, how)
            return ClipFailed(key, f"{path}: {how}, {tries(self.losses[key])}")
        log.warning("%s: %s; trying the clip once more on a fresh one", path, how)
        return None


# -- a thread beside the model ---------------------------------------------------------------


def run_in_thread(clips: list[Clip], labeler: Labeler, producer: Producer, threads: int = 1) -> None:
    """Decode and detect in `threads` producer threads while this one runs the model, so the
    stages overlap (PyAV, LiteRT, NVDEC and torch release the GIL in their native code).

    A thread that stops making progress cannot be killed: it is left behind (a daemon, whose late
    events reach nobody) and a fresh one takes its clip again and the clips after.
    """
    todo = deque(range(len(clips)))
    feed(_thread_events(clips, todo, producer, max(1, threads)), labeler)


class _ProducerThread:
    """One producer in a daemon thread, taking clips from the shared `todo` until none is left."""

    def __init__(self, clips: list[Clip], todo: deque, producer: Producer, events):
        import threading

        self.events = events  # shared by the run's threads: (thread, event) pairs
        self.stop = threading.Event()
        self.watch = ClipWatch()
        self.clips, self.todo, self.producer = clips, todo, producer
        self.thread = threading.Thread(target=self._run, name="fer-decode", daemon=True)
        self.thread.start()

    def _tasks(self):
        while not self.stop.is_set():
            try:
                key = self.todo.popleft()
            except IndexError:
                return
            self.watch.begin(key)
            yield key, self.clips[key]

    def _put(self, event) -> None:
        import queue

        while not self.stop.is_set():
            try:
                self.events.put((self, event), timeout=POLL_S)
                return
            except queue.Full:
                pass
        raise BrokenPipeError("annotation stopped")

    def _run(self) -> None:
        try:
            self.producer.run(self._tasks(), self._put)
        except BrokenPipeError:
            pass
        except BaseException as e:  # the feed loop raises it
            try:
                self._put(ProducerCrashed(e))
            except BrokenPipeError:
                pass  # the consumer already stopped for its own reason

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=STOP_JOIN_S)


def _thread_events(clips: list[Clip], todo: deque, producer: Producer, n: int):
    """Events from producer threads until each has said it is done; a stalled one is replaced."""
    import queue

    events: queue.Queue = queue.Queue(maxsize=QUEUE_EVENTS * n)
    retries = _Retries(clips)
    live = [_ProducerThread(clips, todo, producer, events) for _ in range(n)]
    try:
        while live:
            try:
                thread, event = events.get(timeout=POLL_S)
            except queue.Empty:
                yield from _stalled_threads(live, clips, todo, producer, events, retries)
                if not any(t.thread.is_alive() for t in live) and events.empty():
                    raise FerError("the decoding thread ended unexpectedly") from None
                continue
            if thread not in live:  # left behind: it woke up, but its clip went to another
                continue
            thread.watch.heard(event)
            if isinstance(event, ProducerDone):
                live.remove(thread)
                continue
            yield event
    finally:  # also on Ctrl-C or a model error: stop the producers before returning
        for thread in live:
            thread.close()


def _stalled_threads(live: list, clips, todo: deque, producer: Producer, events, retries: _Retries):
    """Leave behind each thread that stopped making progress; its clip is retried or fails."""
    for thread in [t for t in live if t.watch.stalled]:
        key = thread.watch.key
        thread.stop.set()  # if it ever wakes, it stops at its next event
        live.remove(thread)
        yield ClipLost(key)
        failure = retries.lost(key, thread.watch.why())
        if failure is None:
            todo.appendleft(key)
        else:
            yield failure
        live.append(_ProducerThread(clips, todo, producer, events))


# -- worker processes ------------------------------------------------------------------------


def workers(options: AnnotateOptions, device, n_clips: int) -> int:
    """Worker processes for decoding and face detection (0 = all in this process)."""
    if options.workers is not None:
        return max(0, options.workers)
    cores = os.cpu_count() or 1
    if n_clips < 2:
        return 0
    if device.type == "cuda":  # the GPU runs the model; the cores are the producers'
        return min(n_clips, cores - 1, MAX_WORKERS)
    # On a CPU the backbone wants every core: a worker pays only where cores are spare.
    return min(n_clips, cores // CPU_CORES_PER_WORKER, MAX_WORKERS)


@dataclass(frozen=True)
class WantClip:
    """A worker's request for its next clip (answered with (key, clip), or None when none is left)."""


def run_in_workers(clips: list[Clip], labeler: Labeler, producer: Producer, n_workers: int) -> None:
    """Decode and detect in worker processes, each handed one clip at a time over its own pipe.

    A worker that dies (the OOM killer, a decoder crashing on a hostile file) or stops making
    progress is noticed within POLL_S: its clip is tried again on a fresh worker (RETRIES), then
    reported as failed while the batch goes on. Each worker has its own pipe and nothing is shared
    between workers, so a killed one cannot leave a lock held.
    """
    import multiprocessing as mp

    pool = _Pool(mp.get_context("spawn"), producer)  # fork after torch and LiteRT threads start is unsafe
    for _ in range(n_workers):
        pool.spawn()
    try:
        feed(_worker_events(pool, clips), labeler)
    finally:
        pool.close()


class _Worker:
    def __init__(self, process, conn, reserved=None):
        self.process, self.conn = process, conn
        self.watch = ClipWatch()  # the clip it is working on
        self.reserved = reserved  # a clip retried after its worker died: this fresh worker's first
        self.closed = False  # its pipe reached end of file: the process is gone
        self.stalled = ""  # why we stopped it for making no progress


class _Pool:
    """Worker processes, each with a duplex pipe: tasks go down, events come up."""

    def __init__(self, ctx, producer: Producer):
        self.ctx, self.producer = ctx, producer
        self.workers: list[_Worker] = []

    def spawn(self, reserved=None) -> None:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker, args=(child, self.producer), daemon=True)
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


def _worker_events(pool: _Pool, clips: list[Clip]):
    from multiprocessing.connection import wait

    todo = deque(range(len(clips)))
    retries = _Retries(clips)
    idle_deaths = 0
    while pool.workers:
        wait([w.conn for w in pool.workers] + [w.process.sentinel for w in pool.workers], timeout=POLL_S)
        for worker in list(pool.workers):
            done = False
            while not done and not worker.closed and _readable(worker.conn):
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):  # its end is closed: it died (mid-message, perhaps)
                    worker.closed = True
                    break
                if isinstance(message, WantClip):
                    done = _hand_out(worker, todo, clips)
                    continue
                worker.watch.heard(message)
                yield message
                if isinstance(message, ProducerDone):
                    pool.retire(worker)
                    done = True
            if worker in pool.workers and not worker.closed and worker.watch.stalled:
                worker.stalled, worker.closed = worker.watch.why(), True
                worker.process.kill()
            if worker in pool.workers and worker.closed:
                worker.process.join(timeout=STOP_JOIN_S)  # reap it, for its exit code
                idle_deaths += worker.watch.key is None
                if idle_deaths > IDLE_DEATHS:
                    raise FerError(f"decoding worker processes keep dying between clips ({idle_deaths} times)")
                yield from _lost(worker, pool, todo, retries)


def _readable(conn) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False


def _hand_out(worker: _Worker, todo: deque, clips: list[Clip]) -> bool:
    """Answer a worker's WantClip; True when it died before the answer reached it."""
    key = worker.reserved if worker.reserved is not None else (todo.popleft() if todo else None)
    worker.reserved = None
    try:
        worker.conn.send(None if key is None else (key, clips[key]))
    except OSError:  # it died after asking (BrokenPipeError): the clip never reached it
        worker.reserved, worker.closed = key, True
        return True
    if key is not None:
        worker.watch.begin(key)
    return False


def _lost(worker: _Worker, pool: _Pool, todo: deque, retries: _Retries):
    """A worker died (or was stopped) without saying it was done: its clip's events."""
    key = worker.watch.key
    code = worker.process.exitcode
    pool.retire(worker)
    if key is None:  # between clips: a fresh worker takes over the rest
        if todo or worker.reserved is not None:
            pool.spawn(reserved=worker.reserved)  # a clip it was given but never started is the fresh one's
        return
    yield ClipLost(key)
    if worker.stalled:
        how = f"{worker.stalled}: its process was stopped"
    else:
        status = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        how = f"the decoding process died ({status})"
    failure = retries.lost(key, how)
    if failure is None:
        pool.spawn(reserved=key)
        return
    yield failure
    if todo:
        pool.spawn()


def _worker(conn, producer: Producer) -> None:
    """Worker process: asks for a clip, sends its events, and asks again; a closed pipe means the
    parent is gone."""
    from ..core.runtime import keep_freed_memory

    keep_freed_memory()

    def tasks():
        while True:
            conn.send(WantClip())
            task = conn.recv()
            if task is None:
                return
            yield task

    try:
        producer.run(tasks(), conn.send)
    except (KeyboardInterrupt, BrokenPipeError, EOFError, ConnectionError):
        pass  # stopped, or the parent is gone: nobody is left to tell
    except BaseException as error:  # outside any clip (the detector would not start): the run's error
        try:
            conn.send(ProducerCrashed(error))
        except Exception:  # unpicklable, or the parent is gone
            conn.send(ProducerCrashed(FerError(f"a decoding worker failed: {typed_line(error)}")))

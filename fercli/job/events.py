"""The contract between producers and the labeler: typed events, one feed loop.

A producer (decode, detect, track and crop, wherever it runs) says what happens to each clip as
events, in order per clip:

    ClipStarted -> SamplesReady ... -> ClipEnded | ClipFailed

and ProducerDone once it has no more clips (ProducerCrashed if it stopped outside any clip).
A schedule (a thread, worker processes, Ray) only moves events from its producers to `feed`,
which hands them to the sink (`stages.Labeler`); ClipLost tells the sink that a clip's producer
died and the clip will be started again. A new schedule or device is a new producer of these
events, never a second pipeline.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Union


@dataclass
class Timing:
    """Busy seconds and items per stage, measured where the work ran (`fer benchmark speed`)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    items: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: Timing | None) -> None:
        """Count `other`'s seconds and items into this one."""
        if other is None:
            return
        for name, value in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value
        for name, value in other.items.items():
            self.items[name] = self.items.get(name, 0) + value

    def frozen(self) -> Timing:
        """A plain-dict copy, safe to send to another process."""
        return Timing(dict(self.seconds), dict(self.items))


@dataclass
class Sample:
    """One sampled frame's faces, one entry per face track, in track order."""

    index: int  # sample index k (or the frame's index with --per-frame)
    time: float  # seconds
    tracks: list[int]  # track id of each face
    # (faces, size, size, 3) uint8 crops: a numpy array on the host, or a torch tensor on a device
    crops: Any
    detections: list  # faces.Detection each crop was cut from (box in the upright frame, score)
    appearances: list  # each face's descriptor for joining tracks into people (people.appearance)
    chips: dict = field(default_factory=dict)  # track id -> aligned identity chip (150 x 150 x 3), when due


@dataclass(frozen=True)
class ClipStarted:
    key: int  # the clip's index in the run's list
    info: Any  # decode.VideoInfo


@dataclass(frozen=True)
class SamplesReady:
    key: int
    samples: list[Sample]


@dataclass(frozen=True)
class ClipEnded:
    key: int
    timing: Timing | None = None  # the producer's stages for this clip, when timed


@dataclass(frozen=True)
class ClipFailed:
    key: int
    error: str  # one line naming the file


@dataclass(frozen=True)
class ClipLost:
    """The producer holding the clip died; what the sink has of it is dropped (it will be redone)."""

    key: int


@dataclass(frozen=True)
class ProducerDone:
    """The producer has no more clips."""


@dataclass(frozen=True)
class ProducerCrashed:
    """The producer stopped outside any clip (its detector would not start): the run's error."""

    error: BaseException


ClipEvent = Union[ClipStarted, SamplesReady, ClipEnded, ClipFailed, ClipLost]
Event = Union[ClipEvent, ProducerDone, ProducerCrashed]


class Sink(Protocol):
    """What receives a run's clip events: `stages.Labeler`."""

    def receive(self, event: ClipEvent) -> None: ...


def feed(events: Iterable[Event], sink: Sink) -> None:
    """The one loop every schedule runs: each event to the sink, in order, until the source ends.

    A producer's crash is the run's error; ProducerDone is the source's business (it knows how
    many producers it has) and passes through to nobody.
    """
    for event in events:
        if isinstance(event, ProducerCrashed):
            raise event.error
        if not isinstance(event, ProducerDone):
            sink.receive(event)

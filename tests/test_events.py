"""fercli.job.events: the typed contract between producers and the Labeler, and the one feed loop."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
from conftest import DURATIONS

from fercli.job.contract import AnnotateOptions
from fercli.job.events import (
    ClipEnded,
    ClipFailed,
    ClipStarted,
    ProducerCrashed,
    ProducerDone,
    Sample,
    SamplesReady,
    Timing,
    feed,
)
from fercli.job.stages import Producer
from fercli.media.inputs import find_clips
from fercli.nets.engines import place
from fercli.nets.model import ModelConfig


class Recorder:
    def __init__(self):
        self.events = []

    def receive(self, event):
        self.events.append(event)


def produce(paths, timed=False):
    events = []
    clips = find_clips(paths).clips
    Producer(ModelConfig(), AnnotateOptions(), place("torch", "cpu"), timed=timed).run(enumerate(clips), events.append)
    return clips, events


def test_a_producer_tells_each_clip_in_order_then_that_it_is_done(clips_dir, broken_dir):
    clips, events = produce([clips_dir / "moving.mp4", broken_dir / "empty.mp4", clips_dir / "odd.avi"], timed=True)
    assert isinstance(events[-1], ProducerDone)
    for key, clip in enumerate(clips):
        mine = [e for e in events if getattr(e, "key", None) == key]
        if clip.name == "empty.mp4":  # a clip that cannot be opened: one failure naming it, nothing else
            assert len(mine) == 1 and isinstance(mine[0], ClipFailed) and str(clip.path) in mine[0].error
            continue
        assert isinstance(mine[0], ClipStarted) and isinstance(mine[-1], ClipEnded)
        samples = [s for e in mine[1:-1] for s in e.samples]
        assert all(isinstance(e, SamplesReady) for e in mine[1:-1])
        # One sample per 1/5 s of the clip (the model's rate), in order, at k / 5 s.
        assert [s.index for s in samples] == list(range(math.ceil(DURATIONS[clip.name] * 5)))
        assert [s.time for s in samples] == pytest.approx([s.index / 5 for s in samples])
        timing = mine[-1].timing
        assert timing.items["decode"] == len(samples) and timing.seconds["faces"] > 0


def test_a_samples_crops_are_one_array_one_entry_per_track(clips_dir):
    _, events = produce([clips_dir / "two.mkv"])
    samples = [s for e in events if isinstance(e, SamplesReady) for s in e.samples]
    for s in samples:  # two faces on screen the whole clip
        assert isinstance(s, Sample) and s.crops.dtype == np.uint8 and s.crops.shape == (2, 224, 224, 3)
        assert len(s.tracks) == len(s.detections) == len(s.appearances) == 2
    # The crop is the pixels of its box, cut by the model's preprocessing from the frame PyAV gives.
    with av.open(str(clips_dir / "two.mkv")) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    cfg = ModelConfig()
    for crop, det in zip(samples[0].crops, samples[0].detections):
        np.testing.assert_array_equal(crop, cfg.preprocess.cut(first, det.box))


def test_feed_hands_clip_events_on_and_raises_a_crash():
    sink = Recorder()
    events = [ClipStarted(0, None), SamplesReady(0, []), ClipEnded(0), ProducerDone()]
    feed(iter(events), sink)
    assert sink.events == events[:3]  # ProducerDone is the source's business
    with pytest.raises(OSError, match="detector"):
        feed([ClipStarted(1, None), ProducerCrashed(OSError("detector failed")), ClipEnded(1)], sink)
    assert sink.events[-1] == ClipStarted(1, None)  # nothing after the crash is applied


def test_timings_add_up_and_travel_as_plain_dicts():
    a, b = Timing(), Timing({"decode": 1.5}, {"decode": 3})
    a.seconds["decode"] += 0.5
    a.items["faces"] += 2
    a.add(b)
    a.add(None)
    frozen = a.frozen()
    assert frozen.seconds == {"decode": 2.0} and frozen.items == {"faces": 2, "decode": 3}
    assert type(frozen.seconds) is dict

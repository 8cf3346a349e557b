"""fercli.job.devicepath: the GPU path's producer gives the CPU path's samples and table.

Its CPU twin runs here and in CI: the same producer on the CPU, frames decoded by PyAV and
uploaded, faces found by the torch BlazeFace, crops cut by `Preprocess.cut_batch`. The same check
on a GPU with NVDEC is `test_the_gpu_path_gives_the_cpu_tables_table_on_cuda` (requires_cuda).
"""

from __future__ import annotations

import collections
import shutil

import media
import numpy as np
import pandas as pd
import pytest
import real_faces
import torch

import fercli
from fercli.job import pipeline
from fercli.job.contract import AnnotateOptions
from fercli.job.devicepath import DeviceProducer, device_detector_for
from fercli.job.events import SamplesReady
from fercli.job.stages import Producer
from fercli.media import people
from fercli.media.inputs import find_clips
from fercli.nets.engines import place
from fercli.nets.weights import cache_dir
from fercli.tables.writers import read_table

pytest.importorskip("tflite", reason="the torch BlazeFace reads its graph with the tflite package (test extra)")

CLIPS = ["moving.mp4", "two.mkv", "sub/gap.mkv"]


@pytest.fixture(scope="module")
def lstm(lstm_checkpoint):
    return fercli.load_model(lstm_checkpoint, "cpu")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def samples_of(producer, clip):
    events = []
    producer.run([(0, clip)], events.append)
    return [s for e in events if isinstance(e, SamplesReady) for s in e.samples]


@pytest.mark.parametrize("name", CLIPS)
def test_the_device_producer_gives_the_cpu_producers_samples(clips_dir, lstm, name):
    placement = place("torch", "cpu")
    clip = find_clips([clips_dir / name]).clips[0]
    cpu = samples_of(Producer(lstm.config, AnnotateOptions(), placement), clip)
    device = samples_of(
        DeviceProducer(
            lstm.config, AnnotateOptions(), placement, detector=device_detector_for(placement), decoder="cpu"
        ),
        clip,
    )
    assert [(s.index, s.time, s.tracks) for s in device] == [(s.index, s.time, s.tracks) for s in cpu]
    for a, b in zip(cpu, device):
        assert all(iou(x.box, y.box) >= 0.99 for x, y in zip(a.detections, b.detections))
        assert isinstance(b.crops, torch.Tensor) and b.crops.shape == a.crops.shape
        # Same boxes to within the detectors' rounding: the crops differ by at most a level or two.
        if len(a.tracks):
            assert np.abs(b.crops.numpy().astype(int) - a.crops.astype(int)).mean() < 1.0
        for x, y in zip(a.appearances, b.appearances):
            assert float(x @ y) > 0.99


def test_the_device_path_gives_the_cpu_paths_table(clips_dir, lstm, tmp_path, monkeypatch):
    # The "one table": labels equal in >= 99% of seconds, scores within 0.1, boxes IoU >= 0.95, same people.
    paths = [clips_dir / name for name in CLIPS]
    options = AnnotateOptions(workers=0, all_faces=True)
    fercli.annotate(paths, tmp_path / "cpu.csv", model=lstm, device="cpu", options=options)
    monkeypatch.setattr(pipeline, "make_producer", device_producer)
    fercli.annotate(paths, tmp_path / "device.csv", model=lstm, device="cpu", options=options)
    keys = ["video", "second", "person"]
    a, b = (read_table(tmp_path / f"{n}.csv").sort_values(keys).reset_index(drop=True) for n in ("cpu", "device"))
    pd.testing.assert_frame_equal(a[keys + ["face"]], b[keys + ["face"]])
    faced = a.face.to_numpy(bool)
    for dim in ("valence", "arousal"):
        assert (a[dim][faced] == b[dim][faced]).mean() >= 0.99
        assert np.abs(a[f"{dim}_score"][faced] - b[f"{dim}_score"][faced]).max() <= 0.1
    boxes = ["face_x0", "face_y0", "face_x1", "face_y1"]
    assert all(iou(x, y) >= 0.95 for x, y in zip(a[boxes][faced].to_numpy(), b[boxes][faced].to_numpy()))


@pytest.fixture(scope="module")
def cuts_clip(tmp_path_factory):
    if real_faces.messi() is None:
        pytest.skip("Debian's opencv-doc is missing (messi5.jpg): apt-get install opencv-doc")
    # The first three shots at the models' 5 fps: person 0, person 1, then person 0 again after a cut.
    frames = real_faces.cuts_frames(5)[: 9 * 5]
    return media.write_video(tmp_path_factory.mktemp("cuts") / "cuts.mp4", frames, 5)


def device_producer(config, options, placement, timed=False, identity=None):
    """The device path's producer on the CPU (PyAV decodes, frames uploaded), as make_producer's stand-in."""
    detector = device_detector_for(placement)
    return DeviceProducer(config, options, placement, timed, detector=detector, identity=identity, decoder="cpu")


def test_the_device_path_gives_the_cpu_paths_people_by_faceid(cuts_clip, lstm, dlib_files, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))  # the later tests' --identity auto stays as it was
    cache_dir().mkdir(parents=True, exist_ok=True)  # the weights as a first run would have fetched them
    for path in dlib_files.values():
        shutil.copy(path, cache_dir() / path.name)
    kinds = []  # the descriptors each clip's people were joined by: texture where a track had no chip
    group_tracks = people.group_tracks
    monkeypatch.setattr(people, "group_tracks", lambda *a, kind: kinds.append(kind) or group_tracks(*a, kind=kind))
    options = AnnotateOptions(workers=0, all_faces=True, identity="faceid")
    fercli.annotate([cuts_clip], tmp_path / "cpu.csv", model=lstm, device="cpu", options=options)
    monkeypatch.setattr(pipeline, "make_producer", device_producer)
    fercli.annotate([cuts_clip], tmp_path / "device.csv", model=lstm, device="cpu", options=options)
    assert kinds == ["faceid", "faceid"]  # every track of both paths had its chip, cut from the key points
    keys = ["second", "person", "face"]
    a, b = (read_table(tmp_path / f"{n}.csv").sort_values(keys).reset_index(drop=True) for n in ("cpu", "device"))
    pd.testing.assert_frame_equal(a[keys], b[keys])
    assert sorted(b.person[b.face].unique()) == [0, 1]


@pytest.mark.requires_cuda
def test_the_gpu_path_gives_the_cpu_tables_table_on_cuda(clips_dir, lstm_checkpoint, tmp_path):
    paths = [clips_dir / name for name in CLIPS]
    cpu = AnnotateOptions(workers=0, all_faces=True, precision="fp32")
    fercli.annotate(paths, tmp_path / "cpu.csv", model=str(lstm_checkpoint), device="cpu", options=cpu)
    gpu = AnnotateOptions(all_faces=True, precision="fp32", decoder="gpu")
    fercli.annotate(paths, tmp_path / "gpu.csv", model=str(lstm_checkpoint), device="cuda", options=gpu)
    keys = ["video", "second", "person"]
    a, b = (read_table(tmp_path / f"{n}.csv").sort_values(keys).reset_index(drop=True) for n in ("cpu", "gpu"))
    pd.testing.assert_frame_equal(a[keys + ["face"]], b[keys + ["face"]])
    faced = a.face.to_numpy(bool)
    for dim in ("valence", "arousal"):
        assert (a[dim][faced] == b[dim][faced]).mean() >= 0.99
        assert np.abs(a[f"{dim}_score"][faced] - b[f"{dim}_score"][faced]).max() <= 0.1


HOST_READS = ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__")
# Per decoded batch: the detector's candidate count, its faces' transfer (.cpu and .numpy) and the
# descriptors' (two each); then one per merging round of the weighted NMS (the most faces a frame
# has, and the round that finds none left). The old path read the device 264 times here.
READS_PER_BATCH = 5


def host_reads(monkeypatch) -> collections.Counter:
    """Counts, by name, each call that reads a tensor's values on the host (a wait for a GPU)."""
    counts = collections.Counter()
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def test_the_device_producer_reads_the_device_a_few_times_per_batch(clips_dir, lstm, monkeypatch):
    placement = place("torch", "cpu")
    clip = find_clips([clips_dir / "two.mkv"]).clips[0]  # 15 samples of two faces: one decoded batch
    producer = device_producer(lstm.config, AnnotateOptions(all_faces=True), placement)
    with producer.detector() as detector:
        counts = host_reads(monkeypatch)
        samples = list(producer.samples(clip, detector))[1:]
    monkeypatch.undo()
    print(f"host reads for {len(samples)} samples, {sum(len(s.tracks) for s in samples)} faces: {dict(counts)}")
    assert len(samples) == 15 and max(len(s.tracks) for s in samples) == 2
    assert sum(counts.values()) <= READS_PER_BATCH + 2 + 1

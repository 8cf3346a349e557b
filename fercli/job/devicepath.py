"""The producer for a model on a GPU: frames decoded there (NVDEC), faces found, tracked and cut
there, so a frame never crosses to the host; only boxes and key points, histograms, descriptors and
the surroundings of a face due an identity chip do, each in one transfer per decoded batch.

It speaks the same events as the CPU `stages.Producer` and gives the same samples: the same frames
(decode's sampling rule), the same faces (BlazeFace in torch, `SteadyDetector`'s reuse rule over
detections made a batch at a time), the same tracks and the same crops (`Preprocess.cut_batch`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from itertools import groupby
from typing import Iterator

from ..media.inputs import Clip
from .events import Sample
from .stages import NO_CLOCK, Producer, chips_due

# Producer threads (NVDEC sessions) at once: an H100 has 7 NVDEC engines; to be set by measurement.
PRODUCER_THREADS = 4


@dataclass
class _Seen:
    """One sample of a device batch: the frame at `row` of `batch.images` and its faces."""

    batch: object  # nvdec.DeviceBatch
    row: int
    detections: list


class _Given:
    """A detector whose answer for a sample was found with its batch (for SteadyDetector's rule)."""

    def detect(self, seen: _Seen) -> list:
        return seen.detections


def device_detector_for(placement):
    """A factory of the batched torch detector on the run's device (what `Producer.detector` takes)."""
    return lambda: nullcontext(_device_detector(placement.device))


def _device_detector(device):
    from ..media.blazeface_torch import TorchFaceDetector

    return TorchFaceDetector(device)


@dataclass
class DeviceProducer(Producer):
    """Decodes on `placement.device` (`decoder` "gpu": NVDEC; "cpu": PyAV, frames uploaded) and
    detects, tracks and crops there; a sample's crops are a tensor on that device."""

    decoder: str = "gpu"

    def samples(self, clip: Clip, detector, clock=NO_CLOCK) -> Iterator:
        from ..media.faces import SteadyDetector
        from ..media.nvdec import DeviceVideo
        from ..media.people import Tracks

        device = self.placement.device
        with DeviceVideo(clip.path, device, decoder=self.decoder, frames_fps=self.options.frames_fps) as video:
            yield video.info
            tracks = Tracks()
            batches = clock.iterate("decode", video.sample(self.config.fps))
            steady = SteadyDetector(_Given(), self.options.reuse_boxes)
            cut_chip = self.chip_cutter()
            decided = steady.detections(self._seen(batches, detector, clock), lambda s: s)
            for _, group in groupby(decided, key=lambda pair: id(pair[0].batch)):
                group = list(group)
                with clock.stage("faces", len(group)):
                    samples = self._batch_samples(group, tracks, cut_chip)
                yield from samples

    def _seen(self, batches, detector, clock) -> Iterator[_Seen]:
        """Each sample of each batch with its detections, found a batch at a time."""
        for batch in batches:
            with clock.stage("faces"):
                found = detector.detect_batch(batch.images)
            for row, detections in enumerate(found):
                yield _Seen(batch, row, detections)

    def _batch_samples(self, group: list, tracks, cut_chip) -> list[Sample]:
        """The samples of one decoded batch, from its (seen, detections) pairs in order."""
        images = group[0][0].batch.images
        found_all = self._tracked(images, group, tracks)
        chips = self._chips(images, group, found_all, tracks, cut_chip)
        crops = self._crops(images, group, found_all)
        return [
            Sample(
                item.batch.index[item.row],
                item.batch.time[item.row],
                list(found),
                crops[k],
                [det for det, _ in found.values()],
                [look for _, look in found.values()],
                chips[k],
            )
            for k, ((item, _), found) in enumerate(zip(group, found_all))
        ]

    def _tracked(self, images, group: list, tracks) -> list[dict]:
        """Each sample's {track: (detection, descriptor)}: the frames' and faces' histograms and
        descriptors made on the device and read in one transfer, the tracks updated on the host."""
        from ..media.people import face_pixels, shot_step
        from ..media.torchframes import colour_histograms, describe_regions, to_host

        h, w = images.shape[1:3]
        faces = [(item.row, det) for item, detections in group for det in detections]
        regions = [face_pixels(det.box, w, h) for _, det in faces]
        face_colours, looks = describe_regions(images, [row for row, _ in faces], regions)
        frame_colours, face_colours, looks = to_host(colour_histograms(images, shot_step(h, w)), face_colours, looks)
        found_all, at = [], 0
        for item, detections in group:
            mine = {id(d): at + k for k, d in enumerate(detections)}  # a reused box is one object in many samples
            at += len(detections)
            found = tracks.update_seen(
                item.batch.time[item.row],
                frame_colours[item.row],
                detections,
                lambda d, mine=mine: face_colours[mine[id(d)]],
                lambda d, mine=mine: looks[mine[id(d)]],
            )
            found_all.append(found)
        return found_all

    def _crops(self, images, group: list, found_all: list) -> list:
        """Each sample's face crops, a slice of one `cut_batch` over the whole batch's faces."""
        import numpy as np

        rows = [item.row for (item, _), found in zip(group, found_all) for _ in found]
        boxes = [det.box for found in found_all for det, _ in found.values()]
        pre = self.config.preprocess
        if not boxes:
            return [images.new_zeros((0, pre.size, pre.size, 3))] * len(group)
        cut = pre.cut_batch(images, rows, boxes)
        ends = np.cumsum([len(found) for found in found_all])
        return [cut[end - len(found) : end] for end, found in zip(ends, found_all)]

    def _chips(self, images, group: list, found_all: list, tracks, cut_chip) -> list[dict]:
        """Identity chips for the tracks due one, each cut on the host from its face's surroundings
        only; the batch's surroundings cross to the host in one transfer."""
        from ..media.torchframes import to_host

        h, w = images.shape[1:3]
        due = []
        for k, ((item, _), found) in enumerate(zip(group, found_all)):
            for track, det in chips_due(cut_chip, found, tracks, item.batch.time[item.row]):
                x0, y0, x1, y1 = det.box
                side = max(x1 - x0, y1 - y0)  # the chip's padded face lies well inside three sides
                left, top = max(0, int(x0 - side)), max(0, int(y0 - side))
                right, bottom = min(w, int(x1 + side) + 1), min(h, int(y1 + side) + 1)
                due.append((k, track, det, left, top, images[item.row, top:bottom, left:right]))
        out = [{} for _ in group]
        for (k, track, det, left, top, _), region in zip(due, to_host(*(d[-1] for d in due))):
            moved = type(det)(
                tuple(v - o for v, o in zip(det.box, (left, top, left, top))),
                det.score,
                tuple((x - left, y - top) for x, y in det.keypoints),
            )
            out[k][track] = cut_chip(region, moved)
        return out

"""The producer for a model on a GPU: frames decoded there (NVDEC), faces found, tracked and cut
there, so a frame never crosses to the host; only boxes, histograms and face pixels do.

It speaks the same events as the CPU `stages.Producer` and gives the same samples: the same frames
(decode's sampling rule), the same faces (BlazeFace in torch, `SteadyDetector`'s reuse rule over
detections made a batch at a time), the same tracks and the same crops (`Preprocess.cut_batch`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
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
    frame_colours: object  # its `colour_histogram`, made on the device


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
            seen = self._seen(batches, detector, clock)
            steady = SteadyDetector(_Given(), self.options.reuse_boxes)
            cut_chip = self.chip_cutter()
            for item, detections in steady.detections(seen, lambda s: s):
                with clock.stage("faces", 1):
                    yield self._sample(item, detections, tracks, cut_chip)

    def _seen(self, batches, detector, clock) -> Iterator[_Seen]:
        """Each sample of each batch with its detections and frame histogram, made a batch at a time."""
        from ..media.people import shot_step
        from ..media.torchframes import colour_histograms

        for batch in batches:
            with clock.stage("faces"):
                found = detector.detect_batch(batch.images)
                step = shot_step(*batch.images.shape[1:3])
                colours = colour_histograms(batch.images, step).cpu().numpy()
            for row, detections in enumerate(found):
                yield _Seen(batch, row, detections, colours[row])

    def _sample(self, item: _Seen, detections: list, tracks, cut_chip) -> Sample:
        from ..media.people import appearance, face_pixels
        from ..media.torchframes import region_histograms

        images = item.batch.images
        h, w = images.shape[1:3]
        regions = [face_pixels(d.box, w, h) for d in detections]
        face_colours = region_histograms(images, [item.row] * len(regions), regions).cpu().numpy()
        colours = {id(d): face_colours[i] for i, d in enumerate(detections)}

        def describe(det):  # the face's own pixels only come to the host for its descriptor
            x0, y0, x1, y1 = face_pixels(det.box, w, h)
            face = images[item.row, y0:y1, x0:x1].cpu().numpy()
            return appearance(face, (0.0, 0.0, float(x1 - x0), float(y1 - y0)))

        time = item.batch.time[item.row]
        found = tracks.update_seen(time, item.frame_colours, detections, lambda d: colours[id(d)], describe)
        chips = self._chips(images[item.row], found, tracks, time, cut_chip)
        dets = [det for det, _ in found.values()]
        pre = self.config.preprocess
        if dets:
            crops = pre.cut_batch(images, [item.row] * len(dets), [d.box for d in dets])
        else:
            crops = images.new_zeros((0, pre.size, pre.size, 3))
        return Sample(
            item.batch.index[item.row],
            item.batch.time[item.row],
            list(found),
            crops,
            dets,
            [look for _, look in found.values()],
            chips,
        )

    def _chips(self, image, found: dict, tracks, time: float, cut_chip) -> dict:
        """Identity chips for the tracks due one, each cut on the host from its face's surroundings only."""
        h, w = image.shape[:2]
        out = {}
        for track, det in chips_due(cut_chip, found, tracks, time):
            x0, y0, x1, y1 = det.box
            side = max(x1 - x0, y1 - y0)  # the chip's padded face lies well inside three sides
            left, top = max(0, int(x0 - side)), max(0, int(y0 - side))
            region = image[top : min(h, int(y1 + side) + 1), left : min(w, int(x1 + side) + 1)].cpu().numpy()
            moved = type(det)(
                (x0 - left, y0 - top, x1 - left, y1 - top),
                det.score,
                tuple((x - left, y - top) for x, y in det.keypoints),
            )
            out[track] = cut_chip(region, moved)
        return out

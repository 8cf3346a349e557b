import media
import numpy as np
import pytest
from PIL import Image

from fercli.media.faces import (
    Detection,
    FaceDetector,
    FaceTracker,
    crop,
    iou,
    square_box,
)


@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as d:
        yield d


@pytest.mark.parametrize(
    "size,placement",
    [
        ((640, 360), (200, 60, 200)),
        ((320, 240), (20, 30, 180)),
        ((321, 241), (150, 10, 120)),
        ((1280, 720), (700, 300, 360)),
    ],
)
def test_detection_box_matches_the_known_paste_position(detector, size, placement):
    frame = media.scene(*size, [placement])
    found = detector.detect(frame)
    assert len(found) == 1
    assert iou(found[0].box, media.face_box(placement)) > 0.5


def test_no_face_on_background(detector):
    assert detector.detect(media.background(320, 240)) == []


def test_two_faces_largest_first(detector):
    big, small = (40, 40, 240), (420, 120, 110)
    found = detector.detect(media.scene(640, 360, [small, big]))
    assert len(found) == 2
    assert iou(found[0].box, media.face_box(big)) > 0.5
    assert iou(found[1].box, media.face_box(small)) > 0.5


def det(x, y, side, score=0.9):
    return Detection((x, y, x + side, y + side), score)


def test_tracker_follows_a_moving_face_with_one_id():
    tracker = FaceTracker()
    ids = {tuple(tracker.update(k / 5, [det(100 + 8 * k, 50, 80)])) for k in range(20)}
    assert ids == {(0,)}


def test_square_box_adds_margin_around_centre():
    assert square_box((10, 20, 50, 100), margin=0.0) == (-10, 20, 70, 100)
    x0, y0, x1, y1 = square_box((100, 100, 200, 200), margin=0.1)
    assert (x1 - x0, y1 - y0) == (120, 120) and (x0, y0) == (90, 90)


def test_crop_inside_frame_equals_resized_region():
    frame = media.scene(320, 240, [(60, 40, 160)])
    out = crop(frame, (100, 50, 180, 130), size=64, margin=0.0)
    expected = np.asarray(Image.fromarray(frame[50:130, 100:180]).resize((64, 64), Image.BILINEAR))
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out, expected)


def test_crop_outside_frame_is_black():
    frame = np.full((100, 100, 3), 200, np.uint8)
    out = crop(frame, (0, 0, 50, 50), size=100, margin=0.5)  # square (-25,-25)-(75,75)
    assert out[:20, :20].max() == 0
    assert out[40:, 40:].min() == 200


def run_steady(boxes_per_sample, reuse=1):
    """Boxes each sample got from a SteadyDetector over samples whose true boxes are given."""
    from fercli.media.faces import SteadyDetector

    inner = CountingDetector(boxes_per_sample)
    steady = SteadyDetector(inner, reuse=reuse)
    got = [[d.box for d in found] for _, found in steady.detections(range(len(boxes_per_sample)), lambda k: k)]
    return got, inner, steady


class CountingDetector:
    """Returns the true boxes of whichever sample it is shown (the sample's index stands for its image)."""

    def __init__(self, boxes_per_sample):
        self.truth = boxes_per_sample
        self.calls = 0

    def detect(self, k):
        self.calls += 1
        return [Detection(b, 0.9) for b in self.truth[k]]


def test_steady_faces_skip_every_other_detection():
    still = [[(10, 10, 110, 110)]] * 11
    got, inner, steady = run_steady(still)
    assert inner.calls == 6  # 0, 2, 4, 6, 8, 10: each held sample sits between two that agree
    assert steady.reused == 5 and steady.detected == 6
    assert got == still


def test_moving_faces_are_detected_on_every_sample():
    moving = [[(10 + 20 * k, 10, 110 + 20 * k, 110)] for k in range(10)]  # IoU 0.67 step to step
    got, inner, _ = run_steady(moving)
    assert inner.calls == 10
    assert got == moving


def test_reuse_zero_always_detects():
    got, inner, _ = run_steady([[(10, 10, 110, 110)]] * 8, reuse=0)
    assert inner.calls == 8 and len(got) == 8


def test_no_face_is_never_steady():
    truth = [[]] * 5 + [[(10, 10, 110, 110)]] * 5
    got, inner, _ = run_steady(truth)
    assert got[:6] == truth[:6]  # the face is found on the sample it walks in
    assert inner.calls == 8  # 0-5 each, then 7 and 9: 6 and 8 sit between detections that agree
    assert got == truth


@pytest.mark.parametrize("reuse", [1, 2, 3])
@pytest.mark.parametrize("leaves", range(1, 9))
def test_a_face_that_leaves_is_never_given_a_box(reuse, leaves):
    # Still face on samples 0 .. leaves-1, gone after: every reused box must be a true one.
    truth = [[(10, 10, 110, 110)] if k < leaves else [] for k in range(12)]
    got, inner, _ = run_steady(truth, reuse=reuse)
    assert got == truth
    assert inner.calls <= 12


def test_a_clip_that_ends_on_held_samples_detects_them():
    truth = [[(10, 10, 110, 110)]] * 3
    got, inner, _ = run_steady(truth, reuse=3)
    assert got == truth and inner.calls == 3

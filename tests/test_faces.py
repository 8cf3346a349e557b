import numpy as np
import pytest
from PIL import Image

import media
from fercli.faces import Detection, FaceDetector, FaceTracker, crop, iou, square_box


@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as d:
        yield d


@pytest.mark.parametrize(
    "size,placement",
    [((640, 360), (200, 60, 200)), ((320, 240), (20, 30, 180)), ((321, 241), (150, 10, 120)), ((1280, 720), (700, 300, 360))],
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


def test_passing_face_does_not_steal_the_main_subject():
    tracker = FaceTracker()
    mains = []
    for k in range(30):
        t = k / 5
        dets = [det(100, 100, 120)]  # the subject, all along
        if 10 <= k < 20:  # a larger face passes by for 2 s
            dets.append(det(300 + 5 * k, 40, 160))
        matched = tracker.update(t, dets)
        mains.append(tracker.main(matched).box)
    assert all(b == (100, 100, 220, 220) for b in mains)


def test_hidden_subject_gives_no_face_not_the_background_face():
    tracker = FaceTracker()
    for k in range(10):
        tracker.update(k / 5, [det(100, 100, 120), det(400, 50, 40)])
    matched = tracker.update(2.0, [det(400, 50, 40)])  # subject hidden for one sample
    assert tracker.main(matched) is None


def test_subject_gone_for_good_lets_another_face_become_main():
    tracker = FaceTracker(ttl=1.0)
    for k in range(10):
        tracker.update(k / 5, [det(100, 100, 120)])
    main = None
    for k in range(10, 30):
        matched = tracker.update(k / 5, [det(400, 50, 60)])
        main = tracker.main(matched)
    assert main is not None and main.box == (400, 50, 460, 110)


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


def test_subject_walking_in_past_a_small_background_face_becomes_main():
    tracker = FaceTracker()
    mains = []
    for k in range(40):
        dets = [det(500, 20, 40)]  # small background face, all along
        if k >= 5:
            dets.append(det(100, 100, 160))
        mains.append(tracker.main(tracker.update(k / 5, dets)).box)
    assert mains[0] == (500, 20, 540, 60)
    assert all(b == (100, 100, 260, 260) for b in mains[15:])


class CountingDetector:
    def __init__(self, boxes_per_call):
        self.boxes = iter(boxes_per_call)
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        return [Detection(b, 0.9) for b in next(self.boxes)]


def test_steady_faces_skip_every_other_detection():
    from fercli.faces import SteadyDetector

    still = [[(10, 10, 110, 110)]] * 20
    inner = CountingDetector(still)
    det = SteadyDetector(inner, reuse=1)
    results = [det.detect(None) for _ in range(11)]
    assert inner.calls == 6  # detect, detect (now steady), reuse, detect, reuse, ...
    assert all(r[0].box == (10, 10, 110, 110) for r in results)


def test_moving_faces_are_detected_on_every_sample():
    from fercli.faces import SteadyDetector

    moving = [[(10 + 20 * k, 10, 110 + 20 * k, 110)] for k in range(20)]  # IoU 0.67 step to step
    inner = CountingDetector(moving)
    det = SteadyDetector(inner, reuse=1)
    results = [det.detect(None) for _ in range(10)]
    assert inner.calls == 10
    assert [r[0].box[0] for r in results] == [10 + 20 * k for k in range(10)]


def test_reuse_zero_always_detects():
    from fercli.faces import SteadyDetector

    inner = CountingDetector([[(10, 10, 110, 110)]] * 10)
    det = SteadyDetector(inner, reuse=0)
    for _ in range(8):
        det.detect(None)
    assert inner.calls == 8


def test_no_face_is_never_steady():
    from fercli.faces import SteadyDetector

    inner = CountingDetector([[]] * 5 + [[(10, 10, 110, 110)]] * 5)
    det = SteadyDetector(inner, reuse=1)
    assert [len(det.detect(None)) for _ in range(6)] == [0, 0, 0, 0, 0, 1]
    assert inner.calls == 6

"""fercli.media.blazeface against mediapipe 0.10.21 (boxes it recorded on real faces) and hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import real_faces
from blazeface_reference import REFERENCE

from fercli.core.errors import WeightsError
from fercli.media import blazeface
from fercli.media.faces import FaceDetector, iou

PARITY_IOU = 0.99  # each of mediapipe's boxes against fer's (measured: 0.9967 at the lowest)
PARITY_SCORE = 0.005  # |score difference| (measured: 1.0e-3 at the largest)


@pytest.fixture(scope="module")
def net():
    return blazeface.BlazeFace()


@pytest.fixture(scope="module")
def frames():
    return real_faces.frames()


def reference_frames():
    return json.loads(REFERENCE.read_text())["frames"]


@pytest.mark.smoke
@pytest.mark.parametrize("name", sorted(reference_frames()))
def test_same_faces_and_boxes_as_mediapipe(net, frames, name):
    if name not in frames:
        pytest.skip(f"{real_faces.MESSI} is missing (Debian: apt-get install opencv-doc)")
    want = reference_frames()[name]
    boxes, scores = net(frames[name])
    assert len(boxes) == len(want["faces"]), "a face found by one detector and not the other"
    for face in want["faces"]:
        overlaps = [iou(tuple(face["box"]), tuple(b)) for b in boxes.tolist()]
        best = int(np.argmax(overlaps))
        assert overlaps[best] >= PARITY_IOU
        assert abs(scores[best] - face["score"]) <= PARITY_SCORE


def test_the_reference_covers_what_the_issue_lists():
    # Moving, half off-screen, small, large, rolled both ways, two faces, no face: each found as
    # mediapipe found it (a frame where it found nothing would prove nothing about boxes).
    faces = {name: len(f["faces"]) for name, f in reference_frames().items()}
    assert faces["no_face"] == 0 and faces["two_faces"] == 2
    for name in (
        "moving_0",
        "moving_4",
        "half_off_left",
        "half_off_top",
        "small_720p",
        "large_720p",
        "rolled_-25",
        "rolled_+25",
    ):
        assert faces[name] == 1, name


def test_input_is_the_frame_centred_in_a_square_scaled_to_minus_one_one():
    # A 384 x 192 frame: the square is 384 px, so the input is the frame halved, with 48 rows of
    # zero (-1 after scaling) above and below. Every 2 x 2 block is constant, so each sample at
    # an even coordinate sees its own pixel exactly.
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (96, 192, 3), dtype=np.uint8)
    frame = blocks.repeat(2, axis=0).repeat(2, axis=1)
    tensor, square = blazeface.to_input(frame)
    assert tensor.shape == (192, 192, 3) and tensor.dtype == np.float32
    assert square == blazeface.Square(0.0, -96.0, 384.0)
    np.testing.assert_allclose(tensor[:48], -1.0)
    np.testing.assert_allclose(tensor[144:], -1.0)
    np.testing.assert_allclose(tensor[48:144], blocks / 127.5 - 1.0, atol=1e-6)


def bilinear_by_hand(frame: np.ndarray) -> np.ndarray:
    """OpenCV's bilinear warp of the centre square onto 192 x 192, pixel by pixel in float64:
    sample positions rounded to 1/32 px, zero outside the frame, rounded half to even."""
    h, w = frame.shape[:2]
    side = max(h, w)
    out = np.zeros((192, 192, 3))
    for i in range(192):
        y = round(((h - side) / 2 + i * side / 192) * 32) / 32
        for j in range(192):
            x = round(((w - side) / 2 + j * side / 192) * 32) / 32
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[i, j] += wy * wx * frame[yy, xx]
    return np.float32(np.rint(out)) * np.float32(2 / 255) - np.float32(1)


@pytest.mark.parametrize("shape", [(72, 128), (61, 47)])
def test_input_is_the_bilinear_warp_bit_for_bit(shape):
    frame = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    tensor, _ = blazeface.to_input(frame)
    assert np.array_equal(tensor, bilinear_by_hand(frame))


def test_decode_places_an_anchor_offset_by_hand():
    raw = np.zeros((2304, 16), np.float32)
    logits = np.full(2304, -10.0, np.float32)
    k = 10 * 48 + 20  # anchor at column 20, row 10: centre ((20.5) / 48, (10.5) / 48)
    raw[k, :4] = [9.6, -4.8, 38.4, 19.2]  # dx, dy, w, h in input pixels (192 = 1)
    logits[k] = 2.0
    boxes, scores = blazeface.decode(raw, logits)
    cx, cy, w, h = 20.5 / 48 + 0.05, 10.5 / 48 - 0.025, 0.2, 0.1
    np.testing.assert_allclose(boxes, [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], atol=1e-6)
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-2.0))])


def test_decode_places_key_points_from_the_anchor_by_hand():
    raw = np.zeros((2304, 16), np.float32)
    logits = np.full(2304, -10.0, np.float32)
    k = 5 * 48 + 7  # anchor at column 7, row 5
    raw[k, 4:] = np.arange(12) * 1.92  # each key point's dx, dy in input pixels (192 = 1)
    logits[k] = 3.0
    faces, _ = blazeface.decode_faces(raw, logits)
    anchor = np.array([7.5 / 48, 5.5 / 48])
    np.testing.assert_allclose(faces[0, 4:].reshape(6, 2), anchor + np.arange(12).reshape(6, 2) * 0.01, atol=1e-6)
    np.testing.assert_allclose(blazeface.decode(raw, logits)[0], faces[:, :4])


def test_key_points_are_merged_with_their_boxes_and_projected_like_them():
    rows = np.array([[0.0, 0.0, 1.0, 1.0, 0.2, 0.4], [0.1, 0.0, 1.1, 1.0, 0.6, 0.8]])
    merged, _ = blazeface.weighted_nms(rows, np.array([0.6, 0.9]))
    np.testing.assert_allclose(merged, [(0.6 * rows[0] + 0.9 * rows[1]) / 1.5])
    square = blazeface.Square(-40.0, 0.0, 400.0)
    np.testing.assert_allclose(
        blazeface.to_frame(np.array([[0.1, 0.2, 0.5, 0.6, 0.25, 0.5]]), square), [[0, 80, 160, 240, 60, 200]]
    )


def test_the_eyes_are_where_dlibs_landmarks_put_them(dlib_reference):
    photo = real_faces.astronaut()
    with FaceDetector() as detector:
        face = detector.detect(photo)[0]
    rect = dlib_reference["detector"](photo, 0)[0]
    corners = np.array([[p.x, p.y] for p in dlib_reference["five"](photo, rect).parts()], np.float64)
    right, left = corners[2:4].mean(axis=0), corners[0:2].mean(axis=0)  # the person's right eye is on the image's left
    eyes = np.array(face.keypoints[:2])
    assert np.linalg.norm(eyes - [right, left], axis=1).max() < 0.25 * np.linalg.norm(left - right)


def test_decode_keeps_scores_at_the_threshold_and_survives_huge_logits():
    raw = np.zeros((2304, 16), np.float32)
    logits = np.full(2304, -1e30, np.float32)
    at = np.log(0.6 / 0.4)  # sigmoid(at) = 0.6
    logits[:3] = [at + 1e-6, at - 1e-3, 1e30]
    with np.errstate(all="raise"):
        _, scores = blazeface.decode(raw, logits)
    np.testing.assert_allclose(scores, [0.6, 1.0], atol=1e-6)


def test_weighted_nms_merges_overlaps_by_score_and_keeps_the_rest():
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [2.0, 2.0, 3.0, 3.0]])
    scores = np.array([0.6, 0.9, 0.7])
    merged, kept = blazeface.weighted_nms(boxes, scores)
    # The 0.9 box absorbs the 0.6 one (IoU 0.82): weighted mean by score; its own score stays.
    want = (0.9 * boxes[1] + 0.6 * boxes[0]) / 1.5
    np.testing.assert_allclose(merged, [want, boxes[2]])
    np.testing.assert_allclose(kept, [0.9, 0.7])


def test_weighted_nms_leaves_boxes_at_the_threshold_apart():
    # IoU exactly 0.3 is not "more than 0.3": both stay.
    a = np.array([0.0, 0.0, 1.0, 1.0])
    b = np.array([1 - 0.6 / 1.3, 0.0, 2 - 0.6 / 1.3, 1.0])  # overlap 0.6/1.3 wide: IoU 0.3
    merged, _ = blazeface.weighted_nms(np.stack([a, b]), np.array([0.9, 0.8]))
    assert len(merged) == 2


def test_boxes_come_back_to_frame_pixels():
    square = blazeface.Square(-40.0, 0.0, 400.0)  # a 320 x 400 portrait frame
    np.testing.assert_allclose(
        blazeface.to_frame(np.array([[0.1, 0.2, 0.5, 0.6]]), square), [[0.0, 80.0, 160.0, 240.0]]
    )


def test_detector_boxes_are_clipped_to_the_frame_largest_first(frames):
    with FaceDetector() as detector:
        found = detector.detect(frames["half_off_left"])
        assert len(found) == 1 and found[0].box[0] == 0.0
        two = detector.detect(frames["two_faces"]) if "two_faces" in frames else None
    if two is not None:
        assert len(two) == 2 and two[0].area > two[1].area


def test_the_shipped_model_file_is_the_verified_one():
    assert blazeface.MODEL_FILE.stat().st_size == blazeface.MODEL_BYTES
    assert len(blazeface.verify_model()) == blazeface.MODEL_BYTES


def test_a_damaged_model_file_is_refused_naming_it(tmp_path):
    bad = tmp_path / "face.tflite"
    data = bytearray(blazeface.MODEL_FILE.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"face\.tflite: the face detector's model file is damaged") as error:
        blazeface.BlazeFace(bad)
    assert "\n" not in str(error.value)
    with pytest.raises(WeightsError, match="cannot be read"):
        blazeface.BlazeFace(tmp_path / "missing.tflite")

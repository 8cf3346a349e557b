"""fercli.media.blazeface_torch against LiteRT's run of the same file and blazeface's numpy graph."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import real_faces
import torch

from fercli.core.errors import FerError
from fercli.media import blazeface, blazeface_torch
from fercli.media.faces import FaceDetector, iou

PARITY_IOU = 0.99  # each of LiteRT's faces against the torch detector's (measured: 0.999999 at the lowest)
PARITY_SCORE = 1e-5  # |score difference| (measured: 2e-7 at the largest)
RAW_BOXES = 1e-3  # input pixels; raw box outputs against LiteRT's (measured: 2.1e-4)
RAW_LOGITS = 1e-3  # score logits against LiteRT's (measured: 3.1e-4)
PARITY_KEYPOINTS = 0.01  # frame pixels; each key point against LiteRT's (measured: 7.6e-5 at the largest)


@pytest.fixture(scope="module")
def detector():
    return blazeface_torch.TorchFaceDetector("cpu")


@pytest.fixture(scope="module")
def frames():
    return real_faces.frames()


@pytest.fixture(scope="module")
def litert_faces(frames):
    with FaceDetector() as cpu:
        return {name: cpu.detect(frame) for name, frame in frames.items()}


def test_raw_outputs_are_litert_s(detector, frames):
    net = blazeface.BlazeFace()
    for name in ("astronaut_photo", "large_720p", "portrait_frame"):
        x, _ = blazeface.to_input(frames[name])
        net._net.set_tensor(net._input, x[None])
        net._net.invoke()
        boxes, logits = net._net.get_tensor(net._boxes)[0], net._net.get_tensor(net._scores)[0, :, 0]
        with torch.inference_mode():
            got_boxes, got_logits = detector.net(torch.from_numpy(x[None]))
        assert np.abs(got_boxes[0].numpy() - boxes).max() <= RAW_BOXES, name
        assert np.abs(got_logits[0].numpy() - logits).max() <= RAW_LOGITS, name


@pytest.mark.smoke
def test_same_faces_as_litert_on_every_parity_frame(detector, frames, litert_faces):
    for name, frame in frames.items():
        want = litert_faces[name]
        got = detector.detect_batch(torch.from_numpy(frame[None].copy()))[0]
        assert len(got) == len(want), f"{name}: a face found by one detector and not the other"
        for a, b in zip(want, got):  # both largest first
            assert iou(a.box, b.box) >= PARITY_IOU, name
            assert abs(a.score - b.score) <= PARITY_SCORE, name
            assert np.abs(np.subtract(a.keypoints, b.keypoints)).max() <= PARITY_KEYPOINTS, name


def test_a_batch_gives_each_frame_its_own_faces(detector, frames, litert_faces):
    # Frames of one size with one, none and one face, in one call: nothing leaks between them.
    names = ["moving_0", "no_face", "half_off_left", "rolled_-25", "moving_4", "no_face"]
    got = detector.detect_batch(torch.from_numpy(np.stack([frames[n] for n in names])))
    for name, faces in zip(names, got):
        assert len(faces) == len(litert_faces[name]), name
        for a, b in zip(litert_faces[name], faces):
            assert iou(a.box, b.box) >= PARITY_IOU
    if "two_faces" in frames:
        two = detector.detect_batch(torch.from_numpy(np.stack([frames["small_720p"], frames["two_faces"]])))
        assert [len(f) for f in two] == [1, 2] and two[1][0].area > two[1][1].area


@pytest.mark.parametrize("size", [(321, 241), (360, 640), (1280, 720)])
def test_the_input_is_blazefaces_to_the_bit(size):
    w, h = size
    rng = np.random.default_rng(w)
    images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    got, square = blazeface_torch.to_input_batch(torch.from_numpy(images))
    for image, tensor in zip(images, got):
        want, want_square = blazeface.to_input(image)
        assert square == want_square
        np.testing.assert_array_equal(tensor.numpy(), want)


def candidates(rng, n):
    """n faces' worth of overlapping candidate boxes (input units) and their scores, shuffled."""
    boxes = []
    for _ in range(n):
        x, y, s = rng.uniform(0, 0.7), rng.uniform(0, 0.7), rng.uniform(0.05, 0.3)
        boxes += [[x, y, x + s, y + s] + rng.normal(0, 0.01, 4) for _ in range(rng.integers(1, 6))]
    boxes.append([0.5, 0.5, 0.5, 0.6])  # degenerate: overlaps nothing, itself included
    boxes = np.asarray(boxes, np.float32)
    return boxes, rng.uniform(0.6, 1.0, len(boxes))


def test_weighted_nms_of_a_batch_is_blazefaces_per_frame():
    rng = np.random.default_rng(3)
    sets = [candidates(rng, n) for n in (0, 1, 3, 5)]
    sets[0] = (np.zeros((0, 4), np.float32), np.zeros(0))
    k = max(len(s) for _, s in sets)
    boxes = torch.zeros((len(sets), k, 4))
    scores = torch.zeros((len(sets), k), dtype=torch.float64)
    real = torch.zeros((len(sets), k), dtype=torch.bool)
    for i, (b, s) in enumerate(sets):
        order = np.argsort(-s, kind="stable")  # the batch function takes candidates best first
        boxes[i, : len(s)], scores[i, : len(s)], real[i, : len(s)] = (
            torch.from_numpy(b[order]),
            torch.from_numpy(s[order]),
            True,
        )
    merged, merged_scores, kept = blazeface_torch.weighted_nms_batch(boxes, scores, real)
    for i, (b, s) in enumerate(sets):
        want_boxes, want_scores = blazeface.weighted_nms(b, s)
        np.testing.assert_allclose(merged[i][kept[i]].numpy(), want_boxes, atol=1e-6)
        np.testing.assert_allclose(merged_scores[i][kept[i]].numpy(), want_scores)


def test_decoding_a_batch_keeps_blazefaces_anchors_best_first():
    rng = np.random.default_rng(5)
    raw = rng.normal(0, 20, (3, 2304, 16)).astype(np.float32)
    logits = rng.normal(-3, 2, (3, 2304)).astype(np.float32)
    logits[1] = -50  # a frame with nothing over the threshold
    logits[2, [7, 9]] = 2.0  # a tie: anchor order decides, as numpy's stable sort
    boxes, scores, real = blazeface_torch.decode_batch(torch.from_numpy(raw), torch.from_numpy(logits))
    for i in range(3):
        want_boxes, want_scores = blazeface.decode_faces(raw[i], logits[i])  # boxes and key points
        order = np.argsort(-want_scores, kind="stable")
        np.testing.assert_allclose(boxes[i][real[i]].numpy(), want_boxes[order], atol=1e-6)
        np.testing.assert_allclose(scores[i][real[i]].numpy(), want_scores[order])
    assert not real[1].any()


def test_without_the_tflite_package_the_detector_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite", None)
    with pytest.raises(FerError, match=r"pip install 'fercli\[gpu\]'") as error:
        blazeface_torch.TorchFaceDetector("cpu")
    assert "\n" not in str(error.value)


@pytest.mark.requires_cuda
def test_on_the_gpu_the_faces_are_the_cpu_s(frames, litert_faces):
    detector = blazeface_torch.TorchFaceDetector("cuda")
    for name, frame in frames.items():
        got = detector.detect_batch(torch.from_numpy(frame[None]).cuda())[0]
        assert len(got) == len(litert_faces[name]), name
        for a, b in zip(litert_faces[name], got):
            assert iou(a.box, b.box) >= PARITY_IOU and abs(a.score - b.score) <= 1e-3, name

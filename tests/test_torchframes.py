"""fercli.media.torchframes against the CPU path: PIL's crops, numpy's histograms, and the GPU path's
whole face work (torch detector, device crops) against LiteRT's boxes and PIL's crops, on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import real_faces
import torch

from fercli.media import people
from fercli.media.faces import FaceDetector, crop, crop_region
from fercli.media.torchframes import colour_histograms, crop_batch, describe_regions, region_histograms, to_host
from fercli.nets.model import HSEMOTION_CONFIG, Preprocess

# The GPU path's work against the CPU path's on the parity frames (torch detector and crop_batch
# against LiteRT and PIL). Measured on all 17 faces of the 17 frames, both crops: every crop equal
# (the boxes round to the same pixels), so the network's outputs are too. The bounds leave room
# for a box that rounds one pixel apart.
CROP_MEAN_LEVELS = 0.5  # mean |difference| per channel value of a crop, 0..255
# valence / arousal outputs of an HSEmotion-form network with random weights, as a share of their
# spread across the faces (a random network's outputs span a scale of its own)
SCORE_SHARE = 0.01


@pytest.fixture(scope="module")
def frames():
    return real_faces.frames()


def boxes_around(rng, width, height, n):
    """Face-like boxes of many sizes, some off the frame's edges, a few of a pixel or less."""
    out = []
    for k in range(n):
        cx, cy = rng.uniform(-40, width + 40), rng.uniform(-40, height + 40)
        side = rng.uniform(0.3, 3) if k % 5 == 0 else rng.uniform(8, 260)
        out.append((cx - side / 2, cy - side * 0.6, cx + side / 2, cy + side * 0.6))
    return out


@pytest.mark.parametrize("square, margin", [(True, 0.1), (True, 0.0), (False, 0.0)])
def test_crops_are_pils_bit_for_bit(frames, square, margin):
    images = [frames["moving_1"], frames["half_off_top"]]  # 640 x 360 each
    rng = np.random.default_rng(int(square) * 10 + int(margin * 10))
    boxes = boxes_around(rng, 640, 360, 8)
    boxes += [
        (100.0, 50.0, 324.0, 274.0),
        (0.0, 0.0, 640.0, 360.0),
        (300.2, 10.0, 340.7, 350.0),
    ]  # 224 px; whole frame; tall
    index = [k % 2 for k in range(len(boxes))]
    regions = [crop_region(b, 640, 360, margin, square) for b in boxes]
    got = crop_batch(torch.from_numpy(np.stack(images)), index, regions, 224).numpy()
    for k, (i, box) in enumerate(zip(index, boxes)):
        np.testing.assert_array_equal(got[k], crop(images[i], box, 224, margin, square), err_msg=f"box {box}")


def test_a_region_shrunk_most_in_height_is_resized_rows_first_as_pil_does(frames):
    # Pillow 13 resizes rows first when the height shrinks by more than twice the width: 30 x 330 px.
    image = frames["large_720p"]
    box = (600.0, 100.0, 630.0, 430.0)
    got = crop_batch(torch.from_numpy(image[None].copy()), [0], [crop_region(box, 1280, 720, 0.0, False)], 224)
    np.testing.assert_array_equal(got[0].numpy(), crop(image, box, 224, 0.0, False))


def test_no_regions_give_no_crops(frames):
    assert crop_batch(torch.zeros((1, 10, 10, 3), dtype=torch.uint8), [], [], 224).shape == (0, 224, 224, 3)


def test_histograms_are_peoples(frames):
    images = [frames["moving_2"], frames["rolled_+25"], frames["no_face"]]
    got = colour_histograms(torch.from_numpy(np.stack(images))).numpy()
    for image, hist in zip(images, got):
        np.testing.assert_array_equal(hist, people.colour_histogram(image))
    boxes = [
        (10.7, 20.2, 300.5, 300.9),
        (-5.0, -5.0, 30.0, 40.0),
        (630.2, 350.1, 700.0, 400.0),
        (50.0, 50.0, 50.2, 50.4),
    ]
    regions = [people.face_pixels(b, 640, 360) for b in boxes]
    got = region_histograms(torch.from_numpy(np.stack(images)), [0, 1, 2, 0], regions).numpy()
    for k, (i, _box) in enumerate(zip([0, 1, 2, 0], boxes)):
        x0, y0, x1, y1 = regions[k]
        np.testing.assert_array_equal(got[k], people.colour_histogram(images[i][y0:y1, x0:x1], step=1))


def test_appearances_are_peoples(frames):
    # Faces' texture descriptors made on the device: PIL's grey and bilinear resize, numpy's LBP.
    images = [frames["moving_2"], frames["rolled_+25"], frames["half_off_top"]]
    rng = np.random.default_rng(11)
    boxes = boxes_around(rng, 640, 360, 12) + [(0.0, 0.0, 640.0, 360.0), (20.0, 10.0, 21.0, 300.0)]
    index = [k % 3 for k in range(len(boxes))]
    regions = [people.face_pixels(b, 640, 360) for b in boxes]
    colours, looks = describe_regions(torch.from_numpy(np.stack(images)), index, regions)
    for k, (i, box) in enumerate(zip(index, boxes)):
        np.testing.assert_allclose(looks[k].numpy(), people.appearance(images[i], box), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(
        colours.numpy(), region_histograms(torch.from_numpy(np.stack(images)), index, regions)
    )
    assert describe_regions(torch.from_numpy(images[0][None].copy()), [], [])[1].shape == (0, 16 * 256)


def test_to_host_gives_each_tensor_back_in_one_transfer(monkeypatch):
    parts = [torch.arange(6.0).reshape(2, 3), torch.zeros((0, 4)), torch.full((2, 2, 2), 7.0)]
    transfers = []
    cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t: transfers.append(t.shape) or cpu(t))
    got = to_host(*parts)
    assert transfers == [(14,)]
    for a, b in zip(parts, got):
        np.testing.assert_array_equal(a.numpy(), b)


def test_shot_cuts_from_device_histograms_are_the_cpus():
    if real_faces.messi() is None:
        pytest.skip(f"{real_faces.MESSI} is missing (Debian: apt-get install opencv-doc)")
    clip = real_faces.cuts_frames(5)
    on_cpu, on_device = people.ShotCuts(), people.ShotCuts()
    want = [on_cpu(image) for image in clip]
    hists = colour_histograms(torch.from_numpy(np.stack(clip)))
    assert [on_device.after(h.numpy()) for h in hists] == want
    assert sum(want) >= len(real_faces.CUTS)  # every cut is seen (and a few false ones, which cost nothing)


@pytest.fixture(scope="module")
def both_paths_faces(frames):
    """Each frame's faces by LiteRT and by the torch detector."""
    from fercli.media.blazeface_torch import TorchFaceDetector

    detector = TorchFaceDetector("cpu")
    with FaceDetector() as cpu:
        return {
            name: (cpu.detect(frames[name]), detector.detect_batch(torch.from_numpy(frames[name][None].copy()))[0])
            for name in ("astronaut_photo", "half_off_left", "small_720p", "rolled_-25")
        }


@pytest.fixture(scope="module")
def hsemotion_form():
    from fercli.nets.model import HSEmotionNet

    torch.manual_seed(0)
    return HSEmotionNet(HSEMOTION_CONFIG).eval()


@pytest.mark.parametrize("preprocess", [Preprocess(), HSEMOTION_CONFIG.preprocess], ids=["square", "hsemotion box"])
def test_the_gpu_paths_crops_and_scores_are_the_cpu_paths(frames, both_paths_faces, hsemotion_form, preprocess):
    """Torch detector and device crops against LiteRT and PIL, down to an HSEmotion-form network's
    outputs (random weights, seeded: no trained weights are reachable offline)."""
    from fercli.nets.model import to_input

    cpu_crops, gpu_crops = [], []
    for name, (cpu_faces, gpu_faces) in both_paths_faces.items():
        image = frames[name]
        cpu_crops += [preprocess.cut(image, d.box) for d in cpu_faces]
        device = torch.from_numpy(image[None].copy())
        gpu_crops.append(preprocess.cut_batch(device, [0] * len(gpu_faces), [d.box for d in gpu_faces]))
    cpu_crops, gpu_crops = np.stack(cpu_crops), torch.cat(gpu_crops).numpy()
    assert cpu_crops.shape == gpu_crops.shape
    assert np.abs(cpu_crops.astype(int) - gpu_crops).mean() <= CROP_MEAN_LEVELS
    with torch.inference_mode():
        scores = [
            hsemotion_form.frame_scores(hsemotion_form.encode(to_input(c, preprocess))) for c in (cpu_crops, gpu_crops)
        ]
    assert (scores[0] - scores[1]).abs().max() <= SCORE_SHARE * scores[0].std(0).min()


@pytest.mark.requires_cuda
def test_on_the_gpu_crops_and_histograms_are_the_cpus(frames):
    images = np.stack([frames["moving_1"], frames["half_off_top"]])
    boxes = boxes_around(np.random.default_rng(9), 640, 360, 10)
    index = [k % 2 for k in range(len(boxes))]
    for pre in (Preprocess(), HSEMOTION_CONFIG.preprocess):
        got = pre.cut_batch(torch.from_numpy(images).cuda(), index, boxes).cpu().numpy()
        for k, (i, box) in enumerate(zip(index, boxes)):
            np.testing.assert_array_equal(got[k], pre.cut(images[i], box))
    hists = colour_histograms(torch.from_numpy(images).cuda()).cpu().numpy()
    np.testing.assert_array_equal(hists[1], people.colour_histogram(images[1]))

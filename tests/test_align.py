"""fercli.media.align: dlib's face chip, against dlib-bin's chips and embeddings of real faces."""

from __future__ import annotations

import numpy as np
import real_faces
from PIL import Image

from fercli.media import align
from fercli.media.faces import FaceDetector
from fercli.nets.faceid import embed

# Embedding distances (dlib's network; dlib: one person below 0.6) between fer's chip and dlib's
# own of the same face, and bounds a little above what was measured.
FROM_BLAZEFACE = 0.12  # measured 0.0 (astronaut) and 0.088 (the player's 30 px face)
LARGE_FACE = 0.06  # a face 3.2x the chip, halved before sampling; measured 0.031
ROLLED = 0.12  # the astronaut rolled -45 and 25 degrees; measured 0.035 and 0.066


def test_similarity_recovers_a_transform_and_fits_noise_by_least_squares():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (6, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(align.similarity(src, src @ rot.T + shift), np.hstack([rot, shift[:, None]]), atol=1e-9)
    # With noise: no other similarity (a, -b; b, a) fits better (numpy's least squares as the reference).
    dst = src @ rot.T + shift + rng.normal(0, 2, src.shape)
    rows = np.vstack(
        [
            np.column_stack([src[:, 0], -src[:, 1], np.ones(6), np.zeros(6)]),
            np.column_stack([src[:, 1], src[:, 0], np.zeros(6), np.ones(6)]),
        ]
    )
    a, b, tx, ty = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
    np.testing.assert_allclose(align.similarity(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_the_chip_of_dlibs_landmarks_is_dlibs_chip_to_the_pixel(dlib_reference):
    dlib, cut = dlib_reference["dlib"], 0
    for photo in filter(lambda p: p is not None, (real_faces.astronaut(), real_faces.messi())):
        for rect in dlib_reference["detector"](photo, 1):
            shape = dlib_reference["five"](photo, rect)
            points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
            np.testing.assert_array_equal(
                align.cut(photo, points), dlib.get_face_chip(photo, shape, size=150, padding=0.25)
            )
            cut += 1
    assert cut >= 2


def test_a_large_face_is_halved_before_sampling(dlib_reference, faceid_net):
    big = np.asarray(Image.fromarray(real_faces.astronaut()).resize((2048, 2048), Image.BICUBIC))
    rect = dlib_reference["dlib"].rectangle(700, 304, 1060, 664)  # the face's box, 4x its 512 px one
    shape = dlib_reference["five"](big, rect)
    points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
    ours, theirs = align.cut(big, points), dlib_reference["dlib"].get_face_chip(big, shape, size=150, padding=0.25)
    e = embed(faceid_net, np.stack([ours, theirs]))
    assert np.linalg.norm(e[0] - e[1]) < LARGE_FACE


def _dlib_embedding(photo, dlib_reference, faceid_net, near):
    rects = dlib_reference["detector"](photo, 1)
    rect = min(rects, key=lambda r: abs(r.center().x - near[0]) + abs(r.center().y - near[1]))
    chip = dlib_reference["dlib"].get_face_chip(photo, dlib_reference["five"](photo, rect), size=150, padding=0.25)
    return embed(faceid_net, chip[None])[0]


def test_blazefaces_face_gives_dlibs_chip(dlib_reference, faceid_net, landmark_predictor):
    with FaceDetector() as detector:
        for photo in filter(lambda p: p is not None, (real_faces.astronaut(), real_faces.messi())):
            for d in detector.detect(photo):
                centre = ((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2)
                ours = embed(faceid_net, align.chip(photo, d.box, d.keypoints, landmark_predictor)[None])[0]
                assert (
                    np.linalg.norm(ours - _dlib_embedding(photo, dlib_reference, faceid_net, centre)) < FROM_BLAZEFACE
                )


def test_a_rolled_face_is_stood_upright(dlib_reference, faceid_net, landmark_predictor):
    astro = real_faces.astronaut()
    upright = _dlib_embedding(astro, dlib_reference, faceid_net, (220, 120))
    with FaceDetector() as detector:
        for roll in (-45, 25):
            head = real_faces.head(astro, real_faces.ASTRONAUT_HEAD, 220, roll)
            frame = real_faces.paste(real_faces.background(640, 360), head, 200, 40)
            d = detector.detect(frame)[0]
            chip = align.chip(frame, d.box, d.keypoints, landmark_predictor)
            assert np.linalg.norm(embed(faceid_net, chip[None])[0] - upright) < ROLLED, roll

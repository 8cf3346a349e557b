"""fercli.media.landmarks: dlib's 5-point landmarks in numpy, equal to dlib-bin's on real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import real_faces

from fercli.core.errors import WeightsError
from fercli.media import landmarks

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")


def real_photos() -> list[np.ndarray]:
    """The astronaut and three frames of Megamind.avi (two people, cartoon faces)."""
    photos = [real_faces.astronaut()]
    if MEGAMIND.exists():
        import av

        with av.open(str(MEGAMIND)) as c:
            photos += [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in (10, 120, 230)]
    return photos


def grey(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)  # dlib's grey level of an RGB pixel


def test_landmarks_equal_dlibs_to_the_pixel(landmark_predictor, dlib_reference):
    compared = 0
    for photo in real_photos():
        for rect in dlib_reference["detector"](photo, 0):
            want = np.array([[p.x, p.y] for p in dlib_reference["five"](photo, rect).parts()])
            got = landmark_predictor(grey(photo), (rect.left(), rect.top(), rect.right(), rect.bottom()))
            np.testing.assert_array_equal(got, want)
            compared += 1
    assert compared >= 3


def test_the_predictor_survives_its_arrays(landmark_predictor):
    again = landmarks.from_arrays(landmarks.to_arrays(landmark_predictor))
    image = grey(real_faces.astronaut())
    np.testing.assert_array_equal(again(image, (175, 76, 265, 166)), landmark_predictor(image, (175, 76, 265, 166)))
    assert len(landmark_predictor.mean) == 5 and len(landmark_predictor.cascades) == 15


def test_a_box_off_the_image_reads_black_and_still_answers(landmark_predictor):
    image = grey(real_faces.astronaut())
    points = landmark_predictor(image, (-60, -60, 40, 40))
    assert points.shape == (5, 2) and np.isfinite(points).all()


def test_another_file_is_one_line_naming_it(dlib_files, tmp_path):
    other = tmp_path / "network.dat"  # the head of dlib's network file: strings, raw floats
    other.write_bytes(dlib_files["net"].read_bytes()[:200_000])
    with pytest.raises(WeightsError, match="network.dat: not a dlib shape predictor") as err:
        landmarks.read_shape_predictor(other)
    assert "\n" not in str(err.value)
    cut = tmp_path / "cut.dat"
    cut.write_bytes(dlib_files["five"].read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="cut.dat: not a dlib shape predictor"):
        landmarks.read_shape_predictor(cut)
